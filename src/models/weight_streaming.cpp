// Weight streaming: the planner, the streamer, and the CPU transfer backend.

#include "apo/models/weight_streaming.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
#include "apo/memory/host_resource.hpp"
#include "cuda_transfer.hpp"

namespace apo::models {

namespace {

constexpr std::int64_t kWeightAlignment = 256;

std::int64_t align_up(std::int64_t value) {
  return (value + kWeightAlignment - 1) / kWeightAlignment * kWeightAlignment;
}

bool is_number(std::string_view part) {
  return !part.empty() && std::all_of(part.begin(), part.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c));
  });
}

std::string block_of(std::string_view weight) {
  std::size_t start = 0;
  while (start <= weight.size()) {
    const std::size_t dot = weight.find('.', start);
    const std::size_t end = dot == std::string_view::npos ? weight.size() : dot;
    if (is_number(weight.substr(start, end - start))) return std::string(weight.substr(0, end));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return {};
}

// memcpy for copies and nothing to wait on.
class CpuTransferBackend final : public TransferBackend {
 public:
  void copy(void* device, const void* host, std::int64_t bytes, int) override {
    std::memcpy(device, host, static_cast<std::size_t>(bytes));
  }
  void copies_done(int) override {}
  void compute_waits(int) override {}
  void slot_released(int) override {}
  void synchronize() override {}
  Device device() const override { return Device::cpu(); }
};

}  // namespace

std::vector<WeightBlock> group_into_blocks(
    std::span<const std::pair<std::string, std::int64_t>> weights_in_order) {
  std::vector<WeightBlock> blocks;
  std::map<std::string, std::size_t> index;
  for (const auto& [weight, bytes] : weights_in_order) {
    const std::string name = block_of(weight);
    auto [it, added] = index.emplace(name, blocks.size());
    if (added) blocks.push_back({name, {}, 0});
    WeightBlock& block = blocks[it->second];
    block.weights.push_back(weight);
    block.bytes += bytes;
  }
  return blocks;
}

std::int64_t StreamingPlan::streamed_bytes_per_pass(std::span<const WeightBlock> blocks) const {
  std::int64_t total = 0;
  for (const std::size_t b : streamed) total += blocks[b].bytes;
  return total;
}

StreamingPlan plan_weight_streaming(std::span<const WeightBlock> blocks,
                                    std::int64_t device_budget_bytes, int prefetch_depth) {
  if (prefetch_depth < 1)
    fail(ErrorCode::InvalidArgument, "prefetch depth {} is below 1", prefetch_depth);
  StreamingPlan plan;
  const std::int64_t total =
      std::accumulate(blocks.begin(), blocks.end(), std::int64_t{0},
                      [](std::int64_t sum, const WeightBlock& b) { return sum + b.bytes; });
  if (total <= device_budget_bytes) {
    for (std::size_t b = 0; b < blocks.size(); ++b) plan.resident.push_back(b);
    plan.resident_bytes = total;
    return plan;
  }
  plan.slots = prefetch_depth + 1;
  // Keep the largest blocks while they and the slots for the largest one left still fit.
  std::vector<std::size_t> by_size(blocks.size());
  std::iota(by_size.begin(), by_size.end(), 0);
  std::stable_sort(by_size.begin(), by_size.end(),
                   [&](std::size_t a, std::size_t b) { return blocks[a].bytes > blocks[b].bytes; });
  std::vector<bool> resident(blocks.size(), false);
  std::int64_t resident_bytes = 0;
  std::int64_t largest_skipped = 0;
  for (std::size_t i = 0; i < by_size.size(); ++i) {
    const std::size_t candidate = by_size[i];
    // If it stays, the largest block streamed is the largest skipped so far, else the next in
    // size order.
    const std::int64_t next = i + 1 < by_size.size() ? blocks[by_size[i + 1]].bytes : 0;
    const std::int64_t largest_streamed = std::max(largest_skipped, next);
    if (resident_bytes + blocks[candidate].bytes + plan.slots * largest_streamed <=
        device_budget_bytes) {
      resident[candidate] = true;
      resident_bytes += blocks[candidate].bytes;
    } else {
      largest_skipped = std::max(largest_skipped, blocks[candidate].bytes);
    }
  }
  std::int64_t slot_bytes = 0;
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    if (resident[b]) {
      plan.resident.push_back(b);
    } else {
      plan.streamed.push_back(b);
      slot_bytes = std::max(slot_bytes, blocks[b].bytes);
    }
  }
  plan.resident_bytes = resident_bytes;
  plan.slot_bytes = slot_bytes;
  if (plan.device_bytes() > device_budget_bytes) {
    fail(ErrorCode::OutOfMemory,
         "cannot stream within {}: {} slots for the largest block ({}) need {}",
         format_bytes(device_budget_bytes), plan.slots, format_bytes(slot_bytes),
         format_bytes(plan.slots * slot_bytes));
  }
  return plan;
}

// A block's weights laid out in one buffer: where each weight sits, its shape and dtype.
struct WeightStreamer::Staged {
  struct Piece {
    std::string name;
    std::int64_t offset;
    std::vector<std::int64_t> shape;
    at::ScalarType dtype;
  };
  std::vector<Piece> pieces;
  std::int64_t bytes = 0;
  void* host = nullptr;        // staging copy (pinned on CUDA)
  std::shared_ptr<void> home;  // resident blocks: their device memory
  int buffer = -1;             // the event id of the resident home
  bool entered = false;
  std::map<std::string, at::Tensor> tensors;
};

StreamingMemory StreamingMemory::plain(Device device) {
  if (device.is_cpu()) return {memory::HostResource(), memory::HostResource()};
  memory::CudaDeviceOptions options;
  options.device = device.index;
  return {memory::CudaDeviceResource(options),
          std::make_shared<memory::CachingPool>(memory::PinnedHostResource())};
}

WeightStreamer::WeightStreamer(const std::map<std::string, at::Tensor>& host_weights,
                               std::vector<WeightBlock> blocks, StreamingPlan plan, Device device,
                               StreamingMemory memory, std::uintptr_t compute_stream,
                               int prefetch_depth)
    : WeightStreamer(host_weights, std::move(blocks), std::move(plan),
                     make_transfer_backend(device, compute_stream), std::move(memory),
                     prefetch_depth) {}

WeightStreamer::WeightStreamer(const std::map<std::string, at::Tensor>& host_weights,
                               std::vector<WeightBlock> blocks, StreamingPlan plan,
                               std::unique_ptr<TransferBackend> backend, StreamingMemory memory,
                               int prefetch_depth)
    : blocks_(std::move(blocks)),
      plan_(std::move(plan)),
      memory_(std::move(memory)),
      backend_(std::move(backend)),
      prefetch_depth_(prefetch_depth) {
  if (prefetch_depth_ < 1 || (!plan_.streamed.empty() && plan_.slots < prefetch_depth_ + 1)) {
    fail(ErrorCode::InvalidArgument, "{} slots cannot prefetch {} block(s) ahead", plan_.slots,
         prefetch_depth_);
  }
  position_of_.assign(blocks_.size(), -1);
  for (std::size_t p = 0; p < plan_.streamed.size(); ++p) {
    if (plan_.streamed[p] >= blocks_.size())
      fail(ErrorCode::InvalidArgument, "plan names block {} of {}", plan_.streamed[p],
           blocks_.size());
    position_of_[plan_.streamed[p]] = static_cast<int>(p);
  }
  // Lay out each block and make its host copy once.
  std::int64_t largest_streamed = 0;
  for (std::size_t b = 0; b < blocks_.size(); ++b) {
    auto staged = std::make_unique<Staged>();
    for (const std::string& name : blocks_[b].weights) {
      const auto it = host_weights.find(name);
      if (it == host_weights.end())
        fail(ErrorCode::InvalidArgument, "weight '{}' of block '{}' is missing", name,
             blocks_[b].name);
      if (!it->second.device().is_cpu())
        fail(ErrorCode::InvalidArgument, "weight '{}' is not on the CPU", name);
      staged->pieces.push_back(
          {name, staged->bytes, it->second.sizes().vec(), it->second.scalar_type()});
      staged->bytes = align_up(staged->bytes + static_cast<std::int64_t>(it->second.nbytes()));
    }
    staged->host = allocate(memory_.host, staged->bytes).get();
    for (const auto& piece : staged->pieces) {
      const at::Tensor source = host_weights.at(piece.name).contiguous();
      if (source.nbytes() == 0) continue;
      std::memcpy(static_cast<std::byte*>(staged->host) + piece.offset, source.data_ptr(),
                  source.nbytes());
    }
    if (position_of_[b] >= 0) largest_streamed = std::max(largest_streamed, staged->bytes);
    staged_.push_back(std::move(staged));
  }
  // Slots: sized from the real layout (alignment padding included).
  plan_.slot_bytes = largest_streamed;
  slot_holds_.assign(static_cast<std::size_t>(plan_.slots), -1);
  slot_memory_.resize(static_cast<std::size_t>(plan_.slots));
  for (int s = 0; s < plan_.slots && !plan_.streamed.empty(); ++s) {
    slot_memory_[static_cast<std::size_t>(s)] = allocate(memory_.device, largest_streamed);
  }
  slot_users_.resize(static_cast<std::size_t>(plan_.slots));
  // Resident blocks: copied once into their own memory; their event ids follow the slots'.
  int buffer = plan_.slots;
  for (const std::size_t b : plan_.resident) {
    Staged& staged = *staged_[b];
    staged.home = allocate(memory_.device, staged.bytes);
    staged.buffer = buffer++;
    backend_->copy(staged.home.get(), staged.host, staged.bytes, -1);
    backend_->copies_done(staged.buffer);
    stats_.bytes_copied += staged.bytes;
    ++stats_.block_copies;
    make_tensors(staged, staged.home, nullptr);
  }
  // The first pass starts warm.
  for (std::size_t p = 0;
       p < plan_.streamed.size() && p < static_cast<std::size_t>(prefetch_depth_); ++p) {
    start_copy(p, false);
  }
}

WeightStreamer::~WeightStreamer() {
  try {
    backend_->synchronize();
  } catch (...) {
    // The backend's own destructor waits once more; nothing else can be done here.
  }
}

std::shared_ptr<void> WeightStreamer::allocate(memory::AnyResource& resource, std::int64_t bytes) {
  const std::int64_t size = align_up(std::max<std::int64_t>(bytes, 1));
  void* ptr = resource.allocate(size, kWeightAlignment);
  try {
    allocations_.emplace_back(ptr, [owner = resource, size](void* p) mutable {
      owner.deallocate(p, size, kWeightAlignment);
    });
  } catch (...) {
    resource.deallocate(ptr, size, kWeightAlignment);
    throw;
  }
  return allocations_.back();
}

void WeightStreamer::make_tensors(Staged& staged, const std::shared_ptr<void>& memory,
                                  const std::shared_ptr<const void>& user) {
  staged.tensors.clear();
  const at::TensorOptions options = at::TensorOptions().device(backend_->device().to_torch());
  for (const auto& piece : staged.pieces) {
    // The storage holds the memory (so the tensor stays valid after the streamer is gone) and,
    // for a slot, the token by which the streamer sees that the block's tensors are still in use.
    staged.tensors.emplace(piece.name,
                           at::from_blob(
                               static_cast<std::byte*>(memory.get()) + piece.offset, piece.shape,
                               [memory, user](void*) {}, options.dtype(piece.dtype)));
  }
}

bool WeightStreamer::start_copy(std::size_t position, bool demand) {
  const int slot = static_cast<int>(issued_ % static_cast<std::uint64_t>(plan_.slots));
  const std::ptrdiff_t previous = slot_holds_[static_cast<std::size_t>(slot)];
  if (previous >= 0 && staged_[plan_.streamed[static_cast<std::size_t>(previous)]]->entered) {
    fail(ErrorCode::InvalidArgument,
         "block '{}' still holds the slot that block '{}' needs: leave blocks before entering "
         "more than one streamed block at a time",
         blocks_[plan_.streamed[static_cast<std::size_t>(previous)]].name,
         blocks_[plan_.streamed[position]].name);
  }
  if (!slot_users_[static_cast<std::size_t>(slot)].expired()) {
    // Tensors of the slot's last block are still referenced after leave(): the copy would
    // overwrite what they show. A prefetch waits for a later chance; a block that must be
    // copied now cannot be.
    if (!demand) return false;
    fail(ErrorCode::InvalidArgument,
         "tensors of block '{}' are still referenced after leave(): they would be overwritten by "
         "block '{}'; drop them (or copy what must stay) before entering the next block",
         blocks_[plan_.streamed[static_cast<std::size_t>(previous)]].name,
         blocks_[plan_.streamed[position]].name);
  }
  Staged& staged = *staged_[plan_.streamed[position]];
  void* target = slot_memory_[static_cast<std::size_t>(slot)].get();
  backend_->copy(target, staged.host, staged.bytes, previous >= 0 ? slot : -1);
  backend_->copies_done(slot);
  slot_holds_[static_cast<std::size_t>(slot)] = static_cast<std::ptrdiff_t>(position);
  ++issued_;
  stats_.bytes_copied += staged.bytes;
  ++stats_.block_copies;
  return true;
}

const std::map<std::string, at::Tensor>& WeightStreamer::enter(std::size_t block) {
  if (block >= blocks_.size())
    fail(ErrorCode::InvalidArgument, "block {} of {}", block, blocks_.size());
  Staged& staged = *staged_[block];
  if (staged.entered)
    fail(ErrorCode::InvalidArgument, "block '{}' is already entered", blocks_[block].name);
  const int position = position_of_[block];
  if (position < 0) {
    backend_->compute_waits(staged.buffer);
    staged.entered = true;
    return staged.tensors;
  }
  const auto held = std::find(slot_holds_.begin(), slot_holds_.end(), position);
  if (held == slot_holds_.end()) {
    start_copy(static_cast<std::size_t>(position), true);
    ++stats_.demand_copies;
  } else {
    ++stats_.prefetched_hits;
  }
  const auto slot = static_cast<std::size_t>(
      std::find(slot_holds_.begin(), slot_holds_.end(), position) - slot_holds_.begin());
  backend_->compute_waits(static_cast<int>(slot));
  auto user = std::make_shared<const int>(position);
  make_tensors(staged, slot_memory_[slot], user);
  slot_users_[slot] = user;
  staged.entered = true;
  // Prefetch what follows, as far as the slots allow.
  for (int k = 0; k < prefetch_depth_; ++k) {
    const std::size_t ahead = (static_cast<std::size_t>(position) + 1 + k) % plan_.streamed.size();
    if (static_cast<int>(ahead) == position) break;
    if (std::find(slot_holds_.begin(), slot_holds_.end(), static_cast<std::ptrdiff_t>(ahead)) !=
        slot_holds_.end())
      continue;
    if (!start_copy(ahead, false)) break;  // its slot is still in use: copy it when entered
  }
  return staged.tensors;
}

void WeightStreamer::leave(std::size_t block) {
  if (block >= blocks_.size() || !staged_[block]->entered) {
    fail(ErrorCode::InvalidArgument, "block {} was not entered", block);
  }
  Staged& staged = *staged_[block];
  staged.entered = false;
  const int position = position_of_[block];
  if (position < 0) return;
  const int slot = static_cast<int>(std::find(slot_holds_.begin(), slot_holds_.end(), position) -
                                    slot_holds_.begin());
  backend_->slot_released(slot);
  staged.tensors.clear();  // the slot's memory will hold other weights
}

std::unique_ptr<TransferBackend> make_transfer_backend(Device device,
                                                       std::uintptr_t compute_stream) {
  if (device.is_cpu()) return std::make_unique<CpuTransferBackend>();
  return detail::make_cuda_transfer_backend(device.index, compute_stream);
}

}  // namespace apo::models
