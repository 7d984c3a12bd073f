// CUDA device query and a kernel check: lists devices through the runtime API and runs a tiny
// kernel on each, which fails with "no kernel image" when apo was not built for the device.

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

std::string check_kernel(int device) {
  constexpr int kCount = 4096;
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return error_text(e);
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
    std::size_t free_bytes = 0;
    std::size_t total_bytes = 0;
    if (cudaSetDevice(index) == cudaSuccess &&
        cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      info.free_bytes = static_cast<std::int64_t>(free_bytes);
    }
    if (run_kernel_check) info.kernel_check = check_kernel(index);
    query.devices.push_back(std::move(info));
  }
  query.status = std::to_string(count) + (count == 1 ? " device" : " devices");
  return query;
}

}  // namespace apo::detail
