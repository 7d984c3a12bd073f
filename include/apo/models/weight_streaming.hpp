#pragma once

/// @file
/// @brief Weight streaming for models larger than the device budget (ComfyUI's "lowvram",
/// diffusers' group offloading). The planner decides which blocks of weights stay on the device
/// and which stream in on every pass, in what order; the streamer carries it out: host copies
/// made once (pinned on CUDA, from the host pool), the next blocks prefetched on a side stream into
/// a ring of device slots, and the compute stream waiting on an event rather than the host
/// synchronizing.

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "apo/core/device.hpp"
#include "apo/memory/resource.hpp"

namespace apo::models {

/// @brief Weights used together, in execution order: a transformer block, say.
struct WeightBlock {
  std::string name;                  ///< "blocks.7"
  std::vector<std::string> weights;  ///< the weights' names
  std::int64_t bytes = 0;
};

/// @brief Groups weights (given in execution order, with their bytes) into blocks: a weight
/// belongs to the block named by its path up to the first numeric component ("blocks.7.attn.q.
/// weight" is in "blocks.7"); weights without one (embeddings, norms, the head) share the block
/// "". Blocks keep the order in which they first appear.
std::vector<WeightBlock> group_into_blocks(
    std::span<const std::pair<std::string, std::int64_t>> weights_in_order);

/// @brief Which blocks stay on the device and which stream in, per pass.
struct StreamingPlan {
  std::vector<std::size_t> resident;  ///< blocks copied once and kept
  std::vector<std::size_t> streamed;  ///< blocks copied every pass, in execution order
  int slots = 0;                      ///< device buffers the streamed blocks rotate through
  std::int64_t slot_bytes = 0;        ///< each slot holds the largest streamed block
  std::int64_t resident_bytes = 0;

  /// @brief Device memory the plan uses: resident blocks plus the slots.
  std::int64_t device_bytes() const noexcept { return resident_bytes + slots * slot_bytes; }
  /// @brief Bytes copied host to device on each pass.
  std::int64_t streamed_bytes_per_pass(std::span<const WeightBlock> blocks) const;
};

/// @brief Plans streaming within `device_budget_bytes`: everything resident when it fits;
/// otherwise the largest blocks stay resident as long as they, plus `prefetch_depth` + 1 slots
/// for the largest block still streamed, fit (keeping the big blocks saves the most traffic per
/// byte kept).
/// @throws apo::Error OutOfMemory when even streaming cannot fit: the slots for the largest block
/// exceed the budget (the message names both sizes)
StreamingPlan plan_weight_streaming(std::span<const WeightBlock> blocks,
                                    std::int64_t device_budget_bytes, int prefetch_depth = 1);

/// @brief Counters of a streamer.
struct StreamingStats {
  std::int64_t bytes_copied = 0;  ///< host to device, resident blocks included
  std::int64_t block_copies = 0;
  std::int64_t prefetched_hits = 0;  ///< enters whose block was already on its way
  std::int64_t demand_copies = 0;    ///< enters that had to start their own copy
};

/// @brief Where a streamer's buffers come from: device memory for the slots and the resident
/// blocks, host memory for the staging copies that every pass reads (pinned on CUDA, so copies
/// run asynchronously). The model cache passes the device's ledger (as staging) and its host
/// pool.
struct StreamingMemory {
  memory::AnyResource device;
  memory::AnyResource host;

  /// @brief Plain resources for `device`: host memory twice on the CPU; device memory and a
  /// caching pool of pinned memory on CUDA (Unsupported without CUDA).
  static StreamingMemory plain(Device device);
};

/// @brief Moves copies and events for a streamer; one per device kind. Internal interface,
/// public so tests can watch the order of operations.
class TransferBackend {
 public:
  virtual ~TransferBackend() = default;
  /// Starts copying host bytes to device memory on the side stream, after `wait_for_slot`'s
  /// last use (if any) has finished.
  virtual void copy(void* device, const void* host, std::int64_t bytes, int wait_for_slot) = 0;
  /// Marks the end of the copies into `slot` (an event on the side stream).
  virtual void copies_done(int slot) = 0;
  /// Makes the compute stream wait for `slot`'s copies (no host synchronization).
  virtual void compute_waits(int slot) = 0;
  /// Marks the compute stream's last use of `slot` so far (an event).
  virtual void slot_released(int slot) = 0;
  /// Waits for every copy and every use recorded so far (before memory is freed).
  virtual void synchronize() = 0;
  /// The device tensors live on.
  virtual Device device() const = 0;
};

/// @brief Carries out a plan for one model on one device.
///
/// Passes call enter(b) for the blocks in execution order, use the tensors it returns, then call
/// leave(b) once the work using them has been enqueued (on CUDA: on torch's current stream, or on
/// the stream given at construction). A streamed block's tensors show its weights from enter
/// until leave; after leave their slot is refilled with other blocks, and the streamer refills it
/// only once no tensor of the block is left: a prefetch into it waits, and an enter that must
/// copy into it throws InvalidArgument naming the block whose tensors are still held. Tensors
/// hold the memory they show, so resident blocks' tensors stay valid after the streamer is gone.
/// Not thread-safe: one thread drives a model's passes.
class WeightStreamer {
 public:
  /// @param host_weights every weight of `blocks`, as CPU tensors
  /// @param memory where the slots, resident blocks and staging copies come from
  /// @param compute_stream the CUDA stream that runs the model (a cudaStream_t); 0: torch's
  ///   current stream of the device, read at each enter and leave; ignored on the CPU
  /// @throws apo::Error InvalidArgument (a weight missing or not on the CPU), OutOfMemory (from
  ///   the resources)
  WeightStreamer(const std::map<std::string, at::Tensor>& host_weights,
                 std::vector<WeightBlock> blocks, StreamingPlan plan, Device device,
                 StreamingMemory memory, std::uintptr_t compute_stream = 0, int prefetch_depth = 1);
  /// @brief The same over a given backend (tests use a recording one).
  WeightStreamer(const std::map<std::string, at::Tensor>& host_weights,
                 std::vector<WeightBlock> blocks, StreamingPlan plan,
                 std::unique_ptr<TransferBackend> backend, StreamingMemory memory,
                 int prefetch_depth = 1);
  ~WeightStreamer();
  WeightStreamer(const WeightStreamer&) = delete;
  WeightStreamer& operator=(const WeightStreamer&) = delete;

  /// @brief The block's weights on the device, by name. The compute stream waits for their copy;
  /// the next streamed blocks start copying.
  /// @throws apo::Error InvalidArgument for a block out of range or one already entered, or when
  ///   the block must be copied into a slot whose last block's tensors are still referenced;
  ///   Internal when its copy failed on the device
  const std::map<std::string, at::Tensor>& enter(std::size_t block);
  /// @brief The work using `block` has been enqueued; its slot may be refilled after it.
  void leave(std::size_t block);

  const StreamingPlan& plan() const noexcept { return plan_; }
  const std::vector<WeightBlock>& blocks() const noexcept { return blocks_; }
  const StreamingStats& stats() const noexcept { return stats_; }

 private:
  struct Staged;
  // Copies streamed block `position` into the next slot; false (nothing done) when the slot's
  // last block still has tensors in use and `demand` is false, an error when it is true.
  bool start_copy(std::size_t position, bool demand);
  std::shared_ptr<void> allocate(memory::AnyResource& resource, std::int64_t bytes);
  // The block's tensors on `memory`; `user` (slots only) lives as long as any of them.
  void make_tensors(Staged& staged, const std::shared_ptr<void>& memory,
                    const std::shared_ptr<const void>& user);

  std::vector<WeightBlock> blocks_;
  StreamingPlan plan_;
  StreamingMemory memory_;
  // Each frees its block into its resource. Declared before backend_, so that they are freed
  // after it synchronized, also when the constructor throws.
  std::vector<std::shared_ptr<void>> allocations_;
  std::unique_ptr<TransferBackend> backend_;
  int prefetch_depth_;
  std::vector<std::unique_ptr<Staged>> staged_;        // per block
  std::vector<int> position_of_;                       // block -> index in plan.streamed, or -1
  std::vector<std::shared_ptr<void>> slot_memory_;     // slot -> device memory
  std::vector<std::weak_ptr<const void>> slot_users_;  // slot -> its block's tensors in use
  std::vector<std::ptrdiff_t> slot_holds_;             // slot -> position in plan.streamed, or -1
  std::uint64_t issued_ = 0;  // copies started into slots: picks the next slot
  StreamingStats stats_;
};

/// @brief The backend for a device: host memcpy for the CPU, a side stream and events for CUDA.
/// @throws apo::Error Unsupported for CUDA when apo was built without it
std::unique_ptr<TransferBackend> make_transfer_backend(Device device,
                                                       std::uintptr_t compute_stream);

}  // namespace apo::models
