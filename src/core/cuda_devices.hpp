#pragma once

// The CUDA device query, compiled from src/cuda/ when apo is built with CUDA.

#include <string>
#include <vector>

#include "apo/core/machine.hpp"

namespace apo::detail {

struct CudaQuery {
  std::vector<CudaDeviceInfo> devices;
  std::string status;  // "2 devices", "no CUDA device", "no CUDA driver ..."
};

/// Lists the CUDA devices with their properties; free memory of the current device only (-1 for
/// the others: asking would create a context on each); with `run_kernel_check`, also runs a small
/// kernel on each (which does create contexts). The current device is left as it was. Never
/// throws.
CudaQuery query_cuda_devices(bool run_kernel_check);

}  // namespace apo::detail
