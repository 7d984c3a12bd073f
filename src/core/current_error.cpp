#include "apo/core/current_error.hpp"

#include <exception>
#include <new>
#include <string_view>

#include <c10/util/Exception.h>

namespace apo {

namespace {

constexpr std::string_view kCpuAllocationFailure = "DefaultCPUAllocator: can't allocate memory";

ErrorReport classify_current() {
  try {
    throw;
  } catch (const Error& error) {
    return {error.code(), error.what()};
  } catch (const c10::OutOfMemoryError& error) {
    return {ErrorCode::OutOfMemory, error.what_without_backtrace()};
  } catch (const std::bad_alloc&) {
    return {ErrorCode::OutOfMemory, "host memory ran out (std::bad_alloc)"};
  } catch (const c10::Error& error) {
    // torch reports a failed CPU allocation as a plain c10::Error with this message.
    const std::string message = error.what_without_backtrace();
    if (message.find(kCpuAllocationFailure) != std::string::npos) {
      return {ErrorCode::OutOfMemory, message};
    }
    return {ErrorCode::Internal, message};
  } catch (const std::exception& error) {
    return {ErrorCode::Internal, error.what()};
  } catch (...) {
    return {ErrorCode::Internal, "an exception that is not a std::exception"};
  }
}

}  // namespace

ErrorReport current_error_report() noexcept {
  try {
    return classify_current();
  } catch (...) {
    // Copying the message ran out of memory.
    return {ErrorCode::OutOfMemory, {}};
  }
}

}  // namespace apo
