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

/// Lists the CUDA devices with their properties and free memory; with `run_kernel_check`, also
/// runs a small kernel on each. Never throws.
CudaQuery query_cuda_devices(bool run_kernel_check);

}  // namespace apo::detail
