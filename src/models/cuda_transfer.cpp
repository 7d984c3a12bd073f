#include "cuda_transfer.hpp"

#include "../core/cuda_context.hpp"
#include "apo/core/error.hpp"

#if APO_WITH_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>
#endif

namespace apo::models::detail {

#if APO_WITH_CUDA

namespace {

using apo::detail::cuda_error_text;
using apo::detail::CudaDeviceScope;

void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();
  throw Error(status == cudaErrorMemoryAllocation ? ErrorCode::OutOfMemory : ErrorCode::Internal,
              fmt::format("{} failed: {}", what, cuda_error_text(status)), "weight streaming");
}

// Copies on a side stream; the compute stream waits on per-buffer events, never the host. The
// compute stream is torch's current stream at each call unless one was given: the stream the
// model's kernels are queued on when it enters and leaves a block. Every call makes the device
// current for its own duration and gives the caller's device back.
class CudaTransferBackend final : public TransferBackend {
 public:
  CudaTransferBackend(int device, std::uintptr_t compute_stream)
      : device_(device), fixed_compute_(reinterpret_cast<cudaStream_t>(compute_stream)) {
    const CudaDeviceScope scope(device_, "weight streaming");
    check(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking), "cudaStreamCreate");
  }

  ~CudaTransferBackend() override {
    const CudaDeviceScope scope(device_, std::nothrow);
    // Nothing may be freed while a copy or a kernel still uses it.
    cudaStreamSynchronize(side_);
    for (cudaStream_t s : compute_streams_) cudaStreamSynchronize(s);
    for (auto& e : events_) {
      if (e.copied) cudaEventDestroy(e.copied);
      if (e.released) cudaEventDestroy(e.released);
    }
    cudaStreamDestroy(side_);
    cudaGetLastError();  // a destructor cannot report; leave later calls clean
  }

  void synchronize() override {
    const CudaDeviceScope scope(device_, "weight streaming");
    check(cudaStreamSynchronize(side_), "waiting for the weight copies");
    for (cudaStream_t s : compute_streams_) {
      check(cudaStreamSynchronize(s), "waiting for the work on streamed weights");
    }
  }

  void copy(void* device, const void* host, std::int64_t bytes, int wait_for_slot) override {
    const CudaDeviceScope scope(device_, "weight streaming");
    if (wait_for_slot >= 0 && event(wait_for_slot).released != nullptr) {
      check(cudaStreamWaitEvent(side_, event(wait_for_slot).released, 0), "cudaStreamWaitEvent");
    }
    check(cudaMemcpyAsync(device, host, static_cast<std::size_t>(bytes), cudaMemcpyHostToDevice,
                          side_),
          "cudaMemcpyAsync");
  }

  void copies_done(int slot) override {
    const CudaDeviceScope scope(device_, "weight streaming");
    Events& e = event(slot);
    if (e.copied == nullptr)
      check(cudaEventCreateWithFlags(&e.copied, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventRecord(e.copied, side_), "cudaEventRecord");
  }

  void compute_waits(int slot) override {
    const CudaDeviceScope scope(device_, "weight streaming");
    const cudaEvent_t copied = event(slot).copied;
    // A copy that failed reports here, at the first use of its weights, rather than as a
    // sticky error from some later call.
    const cudaError_t state = cudaEventQuery(copied);
    if (state != cudaErrorNotReady) check(state, "copying weights to the device");
    check(cudaStreamWaitEvent(compute(), copied, 0), "cudaStreamWaitEvent");
  }

  void slot_released(int slot) override {
    const CudaDeviceScope scope(device_, "weight streaming");
    Events& e = event(slot);
    if (e.released == nullptr)
      check(cudaEventCreateWithFlags(&e.released, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventRecord(e.released, compute()), "cudaEventRecord");
  }

  Device device() const override { return Device::cuda(device_); }

 private:
  struct Events {
    cudaEvent_t copied = nullptr;
    cudaEvent_t released = nullptr;
  };
  Events& event(int id) {
    if (id >= static_cast<int>(events_.size())) events_.resize(static_cast<std::size_t>(id) + 1);
    return events_[static_cast<std::size_t>(id)];
  }

  // The stream the model computes on now; remembered, so that synchronize() waits for it.
  cudaStream_t compute() {
    const cudaStream_t s =
        fixed_compute_ != nullptr
            ? fixed_compute_
            : static_cast<cudaStream_t>(apo::detail::torch_current_cuda_stream(device_));
    if (std::find(compute_streams_.begin(), compute_streams_.end(), s) == compute_streams_.end()) {
      compute_streams_.push_back(s);
    }
    return s;
  }

  int device_;
  cudaStream_t fixed_compute_;  // null: torch's current stream at each call
  cudaStream_t side_ = nullptr;
  std::vector<cudaStream_t> compute_streams_;
  std::vector<Events> events_;
};

}  // namespace

std::unique_ptr<TransferBackend> make_cuda_transfer_backend(int device,
                                                            std::uintptr_t compute_stream) {
  return std::make_unique<CudaTransferBackend>(device, compute_stream);
}

#else

std::unique_ptr<TransferBackend> make_cuda_transfer_backend(int, std::uintptr_t) {
  fail(ErrorCode::Unsupported, "weight streaming to CUDA needs apo built with CUDA");
}

#endif

}  // namespace apo::models::detail
