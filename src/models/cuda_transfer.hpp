#pragma once

// The CUDA transfer backend of weight streaming: a non-blocking side stream for copies, events
// between it and the compute stream, pinned staging memory. Built when apo has CUDA.

#include <cstdint>
#include <memory>

#include "apo/models/weight_streaming.hpp"

namespace apo::models::detail {

/// @throws apo::Error Unsupported when apo was built without CUDA; Io/OutOfMemory on CUDA errors
std::unique_ptr<TransferBackend> make_cuda_transfer_backend(int device,
                                                            std::uintptr_t compute_stream);

}  // namespace apo::models::detail
