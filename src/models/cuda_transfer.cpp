#include "cuda_transfer.hpp"

#include "apo/core/error.hpp"

#if APO_WITH_CUDA
#include <cuda_runtime.h>

#include <vector>
#endif

namespace apo::models::detail {

#if APO_WITH_CUDA

namespace {

void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  throw Error(status == cudaErrorMemoryAllocation ? ErrorCode::OutOfMemory : ErrorCode::Internal,
              fmt::format("{} failed: {}", what, cudaGetErrorString(status)), "weight streaming");
}

// Copies on a side stream; the compute stream waits on per-buffer events, never the host.
class CudaTransferBackend final : public TransferBackend {
 public:
  CudaTransferBackend(int device, std::uintptr_t compute_stream)
      : device_(device), compute_(reinterpret_cast<cudaStream_t>(compute_stream)) {
    check(cudaSetDevice(device_), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking), "cudaStreamCreate");
  }

  ~CudaTransferBackend() override {
    cudaSetDevice(device_);
    // Nothing may be freed while a copy or a kernel still uses it.
    cudaStreamSynchronize(side_);
    cudaStreamSynchronize(compute_);
    for (auto& e : events_) {
      if (e.copied) cudaEventDestroy(e.copied);
      if (e.released) cudaEventDestroy(e.released);
    }
    cudaStreamDestroy(side_);
  }

  void synchronize() override {
    check(cudaSetDevice(device_), "cudaSetDevice");
    check(cudaStreamSynchronize(side_), "cudaStreamSynchronize");
    check(cudaStreamSynchronize(compute_), "cudaStreamSynchronize");
  }

  void copy(void* device, const void* host, std::int64_t bytes, int wait_for_slot) override {
    if (wait_for_slot >= 0 && event(wait_for_slot).released != nullptr) {
      check(cudaStreamWaitEvent(side_, event(wait_for_slot).released, 0), "cudaStreamWaitEvent");
    }
    check(cudaMemcpyAsync(device, host, static_cast<std::size_t>(bytes), cudaMemcpyHostToDevice,
                          side_),
          "cudaMemcpyAsync");
  }

  void copies_done(int slot) override {
    Events& e = event(slot);
    if (e.copied == nullptr)
      check(cudaEventCreateWithFlags(&e.copied, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventRecord(e.copied, side_), "cudaEventRecord");
  }

  void compute_waits(int slot) override {
    check(cudaStreamWaitEvent(compute_, event(slot).copied, 0), "cudaStreamWaitEvent");
  }

  void slot_released(int slot) override {
    Events& e = event(slot);
    if (e.released == nullptr)
      check(cudaEventCreateWithFlags(&e.released, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventRecord(e.released, compute_), "cudaEventRecord");
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

  int device_;
  cudaStream_t compute_;
  cudaStream_t side_ = nullptr;
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
