// The CUDA helpers of cuda_context.hpp. Without CUDA in the build they report Unsupported (or
// stand in for the default stream), so callers need no #if of their own.

#include "cuda_context.hpp"

#include <c10/core/Device.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "apo/core/error.hpp"

#if APO_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace apo::detail {

namespace {

// torch's CUDA hooks: present when the torch in this process was built with CUDA.
bool torch_has_cuda() noexcept {
  return c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA);
}

c10::Device cuda_device(int device) {
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device));
}

}  // namespace

void* torch_current_cuda_stream(int device) noexcept {
  if (!torch_has_cuda()) return nullptr;
  try {
    const c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
    return reinterpret_cast<void*>(guard.getStream(cuda_device(device)).native_handle());
  } catch (...) {
    return nullptr;  // a device torch does not know: its work cannot be on a torch stream
  }
}

#if APO_WITH_CUDA

std::string cuda_error_text(int error) {
  const auto e = static_cast<cudaError_t>(error);
  return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
}

void synchronize_torch_cuda_stream(int device, std::string_view who) {
  const CudaDeviceScope scope(device, who);
  const cudaError_t status =
      cudaStreamSynchronize(static_cast<cudaStream_t>(torch_current_cuda_stream(device)));
  if (status != cudaSuccess) {
    cudaGetLastError();
    fail(ErrorCode::Internal, "{}: waiting for the stream of cuda:{} failed: {}", who, device,
         cuda_error_text(status));
  }
}

CudaDeviceScope::CudaDeviceScope(int device, std::string_view who) {
  if (cudaGetDevice(&previous_) != cudaSuccess) {
    cudaGetLastError();
    previous_ = -1;
  }
  if (previous_ == device) {
    ok_ = true;
    return;
  }
  const cudaError_t status = cudaSetDevice(device);
  if (status != cudaSuccess) {
    cudaGetLastError();
    const ErrorCode code = status == cudaErrorInvalidDevice ? ErrorCode::InvalidArgument
                           : status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver
                               ? ErrorCode::Unsupported
                               : ErrorCode::Internal;
    fail(code, "{}: cannot make cuda:{} current: {}", who, device, cuda_error_text(status));
  }
  ok_ = true;
  switched_ = true;
}

CudaDeviceScope::CudaDeviceScope(int device, std::nothrow_t) noexcept {
  if (cudaGetDevice(&previous_) != cudaSuccess) {
    cudaGetLastError();
    previous_ = -1;
  }
  if (previous_ == device) {
    ok_ = true;
    return;
  }
  ok_ = cudaSetDevice(device) == cudaSuccess;
  if (!ok_) cudaGetLastError();
  switched_ = ok_;
}

CudaDeviceScope::~CudaDeviceScope() {
  if (switched_ && previous_ >= 0) cudaSetDevice(previous_);
}

#else  // built without CUDA

std::string cuda_error_text(int error) {
  return "CUDA error " + std::to_string(error) + " (apo was built without CUDA)";
}

void synchronize_torch_cuda_stream(int, std::string_view who) {
  fail(ErrorCode::Unsupported, "{}: apo was built without CUDA", who);
}

CudaDeviceScope::CudaDeviceScope(int, std::string_view who) {
  fail(ErrorCode::Unsupported, "{}: apo was built without CUDA", who);
}

CudaDeviceScope::CudaDeviceScope(int, std::nothrow_t) noexcept {}

CudaDeviceScope::~CudaDeviceScope() = default;

#endif

}  // namespace apo::detail
