#pragma once

// What apo's CUDA runtime calls outside kernels share (memory resources, weight streaming, model
// copies, the quantization launchers): the stream torch computes on, and a scope that makes a
// device current and gives the caller's device back. torch's stream is found through c10's
// device-generic interface, so apo needs no torch CUDA headers and builds against a CPU-only
// torch too (then there is no torch stream: the legacy default stream stands in).

#include <new>
#include <string>
#include <string_view>

namespace apo::detail {

/// torch's current CUDA stream on `device` (a cudaStream_t): the stream its kernels on that
/// device are queued on now, per thread. nullptr (the legacy default stream) when torch has no
/// CUDA.
void* torch_current_cuda_stream(int device) noexcept;

/// Waits until the work queued so far on torch's current stream of `device` is done. Throws
/// apo::Error(Internal) naming `who` when the wait reports an error.
void synchronize_torch_cuda_stream(int device, std::string_view who);

/// Makes a CUDA device current for a scope and restores the caller's device at its end.
class CudaDeviceScope {
 public:
  /// Throws apo::Error naming `who` when the device cannot be made current: Unsupported without
  /// CUDA, InvalidArgument for a device that does not exist, Internal otherwise.
  CudaDeviceScope(int device, std::string_view who);
  /// For paths that cannot throw (deallocation): ok() says whether the device is current.
  CudaDeviceScope(int device, std::nothrow_t) noexcept;
  ~CudaDeviceScope();
  CudaDeviceScope(const CudaDeviceScope&) = delete;
  CudaDeviceScope& operator=(const CudaDeviceScope&) = delete;

  bool ok() const noexcept { return ok_; }

 private:
  int previous_ = -1;
  bool ok_ = false;
  bool switched_ = false;
};

/// "cudaErrorMemoryAllocation (out of memory)" for a cudaError_t given as int (this header does
/// not include CUDA's).
std::string cuda_error_text(int error);

}  // namespace apo::detail
