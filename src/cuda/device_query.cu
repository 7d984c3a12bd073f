// CUDA device query and a kernel check: lists devices through the runtime API (properties need no
// context) and, when asked, runs a tiny kernel on each, which fails with "no kernel image" when
// apo was not built for the device. Free memory comes from NVML (machine.cpp); here only the
// current device is asked, where the process has or will have its context anyway: making every
// GPU current to ask would create a context (hundreds of MiB) on each.

#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <vector>

#include "../core/cuda_devices.hpp"

namespace apo::detail {

namespace {

__global__ void write_pattern(int* out, int count) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) out[i] = 3 * i + 1;
}

std::string error_text(cudaError_t error) {
  return std::string(cudaGetErrorName(error)) + ": " + cudaGetErrorString(error);
}

// Makes `device` current and gives the caller's device back at the end of the scope.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    status_ = previous_ == device ? cudaSuccess : cudaSetDevice(device);
  }
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
};

std::string check_kernel(int device) {
  constexpr int kCount = 4096;
  const DeviceScope scope(device);
  if (cudaError_t e = scope.status(); e != cudaSuccess) return error_text(e);
  int* buffer = nullptr;
  if (cudaError_t e = cudaMalloc(&buffer, kCount * sizeof(int)); e != cudaSuccess) {
    return error_text(e);
  }
  write_pattern<<<(kCount + 255) / 256, 256>>>(buffer, kCount);
  cudaError_t e = cudaGetLastError();
  std::vector<int> host(kCount, 0);
  if (e == cudaSuccess) {
    e = cudaMemcpy(host.data(), buffer, kCount * sizeof(int), cudaMemcpyDeviceToHost);
  }
  cudaFree(buffer);
  if (e != cudaSuccess) return error_text(e);
  for (int i = 0; i < kCount; ++i) {
    if (host[i] != 3 * i + 1) return "kernel ran but wrote wrong values";
  }
  return "ok";
}

}  // namespace

CudaQuery query_cuda_devices(bool run_kernel_check) {
  CudaQuery query;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaErrorNoDevice) {
    query.status = "no CUDA device";
    return query;
  }
  if (status == cudaErrorInsufficientDriver) {
    query.status = "no CUDA driver, or one older than this CUDA runtime";
    return query;
  }
  if (status != cudaSuccess) {
    query.status = error_text(status);
    return query;
  }
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess) {
    cudaGetLastError();
    current = -1;
  }
  for (int index = 0; index < count; ++index) {
    CudaDeviceInfo info;
    info.index = index;
    cudaDeviceProp props{};
    if (cudaGetDeviceProperties(&props, index) == cudaSuccess) {
      info.name = props.name;
      info.total_bytes = static_cast<std::int64_t>(props.totalGlobalMem);
    }
    cudaDeviceGetAttribute(&info.compute_capability_major, cudaDevAttrComputeCapabilityMajor,
                           index);
    cudaDeviceGetAttribute(&info.compute_capability_minor, cudaDevAttrComputeCapabilityMinor,
                           index);
    cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, index);
    char bus_id[32] = {};
    if (cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), index) == cudaSuccess) {
      info.pci_bus_id = bus_id;
    }
    info.free_bytes = -1;  // unknown unless asked below or read from NVML
    std::size_t free_bytes = 0;
    std::size_t total_bytes = 0;
    if (index == current) {
      if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
        info.free_bytes = static_cast<std::int64_t>(free_bytes);
      } else {
        cudaGetLastError();
      }
    }
    if (run_kernel_check) info.kernel_check = check_kernel(index);
    query.devices.push_back(std::move(info));
  }
  query.status = std::to_string(count) + (count == 1 ? " device" : " devices");
  return query;
}

}  // namespace apo::detail
