#pragma once

/// @file
/// @brief What the exception being handled means in apo's terms: the one mapping from C++ and
/// torch exceptions to ErrorCode that every host boundary (the C ABI, the Python module) uses.

#include <string>

#include "apo/core/error.hpp"

namespace apo {

/// @brief An exception's code and message, as a host boundary reports it.
struct ErrorReport {
  ErrorCode code = ErrorCode::Internal;
  std::string message;
};

/// @brief Classifies the exception being handled; call it only inside a catch block.
///
/// apo::Error keeps its code and what(); torch's OutOfMemoryError, its failed CPU allocations
/// (a c10::Error saying "DefaultCPUAllocator: can't allocate memory") and std::bad_alloc are
/// OutOfMemory; other torch errors (c10::Error) and std::exceptions are Internal, with torch's
/// message without its C++ backtrace. Never throws: a failure to copy the message leaves it empty.
ErrorReport current_error_report() noexcept;

}  // namespace apo
