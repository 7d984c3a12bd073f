#pragma once

/// @file
/// @brief apo::Error, the one exception type apo throws, and its codes.

#include <array>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "apo/core/enum_names.hpp"

namespace apo {

/// @brief What kind of failure an Error reports. The C ABI's apo_status carries the same values.
enum class ErrorCode : int {
  InvalidArgument = 1,  ///< a caller passed a value the function cannot accept
  InvalidConfig = 2,    ///< a configuration failed to parse or validate
  NotFound = 3,         ///< a file, model, preset or id does not exist
  Io = 4,               ///< reading or writing failed
  Corrupt = 5,          ///< a file's contents contradict its own format
  Unsupported = 6,      ///< valid, but not on this build, device or dtype
  OutOfMemory = 7,      ///< a budget or a device ran out of memory
  Cancelled = 8,        ///< the work was cancelled before it finished
  TimedOut = 9,         ///< a deadline passed
  Rejected = 10,        ///< a queue or a policy refused the work
  Internal = 11,        ///< a bug in apo
  WorkflowFailed = 12,  ///< a workflow (or a model file it read) failed while running a request
};

template <>
struct EnumTraits<ErrorCode> {
  static constexpr std::string_view noun = "error code";
  static constexpr std::array<EnumEntry<ErrorCode>, 12> entries{{
      {ErrorCode::InvalidArgument, "InvalidArgument"},
      {ErrorCode::InvalidConfig, "InvalidConfig"},
      {ErrorCode::NotFound, "NotFound"},
      {ErrorCode::Io, "Io"},
      {ErrorCode::Corrupt, "Corrupt"},
      {ErrorCode::Unsupported, "Unsupported"},
      {ErrorCode::OutOfMemory, "OutOfMemory"},
      {ErrorCode::Cancelled, "Cancelled"},
      {ErrorCode::TimedOut, "TimedOut"},
      {ErrorCode::Rejected, "Rejected"},
      {ErrorCode::Internal, "Internal"},
      {ErrorCode::WorkflowFailed, "WorkflowFailed"},
  }};
};

/// @brief A failure with a code, a message saying what is wrong, and a context saying where
/// (a file and line, a tensor name, a request id). what() is "context: message".
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string message, std::string context = {})
      : std::runtime_error(context.empty() ? message : context + ": " + message),
        code_(code),
        message_(std::move(message)),
        context_(std::move(context)) {}

  ErrorCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  const std::string& context() const noexcept { return context_; }

 private:
  ErrorCode code_;
  std::string message_;
  std::string context_;
};

/// @brief Throws Error(code, formatted message).
template <class... Args>
[[noreturn]] void fail(ErrorCode code, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(code, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace apo
