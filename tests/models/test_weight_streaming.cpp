#include "apo_catch.hpp"

#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/models/weight_streaming.hpp"

using namespace apo::models;
using namespace apo::literals;

namespace {

// A DiT-like model: an embedding, N blocks of four weights, a head.
std::map<std::string, at::Tensor> make_weights(
    int blocks, std::vector<std::pair<std::string, std::int64_t>>& order) {
  at::manual_seed(5);
  std::map<std::string, at::Tensor> weights;
  auto add = [&](std::string name, at::Tensor t) {
    order.emplace_back(name, static_cast<std::int64_t>(t.nbytes()));
    weights.emplace(std::move(name), std::move(t));
  };
  add("patch_embedding.weight", at::randn({64, 16}));
  for (int b = 0; b < blocks; ++b) {
    add(fmt::format("blocks.{}.attn.qkv.weight", b), at::randn({96, 32}));
    add(fmt::format("blocks.{}.attn.out.weight", b), at::randn({32, 32}).to(at::kHalf));
    add(fmt::format("blocks.{}.ffn.0.weight", b), at::randn({128, 32}));
    add(fmt::format("blocks.{}.norm.bias", b), at::randn({32}));
  }
  add("head.weight", at::randn({16, 32}));
  return weights;
}

// Logs what the streamer asks of the backend; does the copies on the host.
class RecordingBackend final : public TransferBackend {
 public:
  explicit RecordingBackend(std::vector<std::string>& log)
      : log_(log), cpu_(make_transfer_backend(apo::Device::cpu(), 0)) {}
  void copy(void* device, const void* host, std::int64_t bytes, int wait_for_slot) override {
    log_.push_back(fmt::format("copy after release {}", wait_for_slot));
    cpu_->copy(device, host, bytes, wait_for_slot);
  }
  void copies_done(int slot) override { log_.push_back(fmt::format("copied {}", slot)); }
  void compute_waits(int slot) override { log_.push_back(fmt::format("compute waits {}", slot)); }
  void slot_released(int slot) override { log_.push_back(fmt::format("released {}", slot)); }
  void synchronize() override { log_.push_back("synchronize"); }
  apo::Device device() const override { return cpu_->device(); }

 private:
  std::vector<std::string>& log_;
  std::unique_ptr<TransferBackend> cpu_;
};

}  // namespace

TEST_CASE("weights group into blocks by their first numeric component", "[streaming]") {
  std::vector<std::pair<std::string, std::int64_t>> order;
  make_weights(3, order);
  const auto blocks = group_into_blocks(order);
  REQUIRE(blocks.size() == 4);  // "" (embedding + head), blocks.0-2
  CHECK(blocks[0].name.empty());
  CHECK((blocks[0].weights == std::vector<std::string>{"patch_embedding.weight", "head.weight"}));
  CHECK(blocks[1].name == "blocks.0");
  CHECK(blocks[3].name == "blocks.2");
  CHECK(blocks[1].weights.size() == 4);
  CHECK(blocks[1].bytes == 96 * 32 * 4 + 32 * 32 * 2 + 128 * 32 * 4 + 32 * 4);
}

TEST_CASE("the planner keeps what fits and streams the rest", "[streaming]") {
  const std::vector<WeightBlock> blocks{
      {"a", {}, 100}, {"b", {}, 400}, {"c", {}, 300}, {"d", {}, 200}};
  SECTION("everything fits") {
    const auto plan = plan_weight_streaming(blocks, 1000);
    CHECK(plan.streamed.empty());
    CHECK(plan.resident.size() == 4);
    CHECK(plan.device_bytes() == 1000);
  }
  SECTION("a tight budget keeps what fits beside two slots for the largest streamed block") {
    // Keeping b (400) would need slots for c: 400 + 2 x 300 = 1000 > 999. Keeping only a leaves
    // b the largest streamed: 100 + 2 x 400 = 900.
    const auto plan = plan_weight_streaming(blocks, 999, 1);
    CHECK((plan.resident == std::vector<std::size_t>{0}));
    CHECK((plan.streamed == std::vector<std::size_t>{1, 2, 3}));
    CHECK(plan.slots == 2);
    CHECK(plan.slot_bytes == 400);
    CHECK(plan.device_bytes() == 900);
    CHECK(plan.streamed_bytes_per_pass(blocks) == 900);
  }
  SECTION("the largest block stays when it and the slots fit") {
    const std::vector<WeightBlock> many{{"a", {}, 100}, {"b", {}, 400}, {"c", {}, 300},
                                        {"d", {}, 200}, {"e", {}, 100}, {"f", {}, 100}};
    // b + 2 x 300 (c's slots) = 1000 fits; adding c would need 300 more plus d's slots.
    const auto plan = plan_weight_streaming(many, 1000, 1);
    CHECK((plan.resident == std::vector<std::size_t>{1}));
    CHECK(plan.slot_bytes == 300);
    CHECK(plan.device_bytes() == 1000);
    CHECK(plan.streamed_bytes_per_pass(many) == 800);
  }
  SECTION("deeper prefetch needs more slots, which may not fit") {
    CHECK_THROWS_AS(plan_weight_streaming(blocks, 999, 2), apo::Error);
    CHECK_THROWS_AS(plan_weight_streaming(blocks, 999, 0), apo::Error);
  }
  SECTION("too small for even one block and its prefetch") {
    CHECK_THROWS_MATCHES(plan_weight_streaming(blocks, 500, 1), apo::Error,
                         Catch::Predicate<apo::Error>([](const apo::Error& e) {
                           return e.code() == apo::ErrorCode::OutOfMemory;
                         }));
  }
}

TEST_CASE("the streamer serves every block's weights, pass after pass", "[streaming]") {
  std::vector<std::pair<std::string, std::int64_t>> order;
  const auto weights = make_weights(6, order);
  auto blocks = group_into_blocks(order);
  std::int64_t total = 0;
  for (const auto& b : blocks) total += b.bytes;
  const auto plan = plan_weight_streaming(blocks, total / 2, 1);
  REQUIRE_FALSE(plan.streamed.empty());
  REQUIRE_FALSE(plan.resident.empty());

  WeightStreamer streamer(weights, blocks, plan, apo::Device::cpu(),
                          StreamingMemory::plain(apo::Device::cpu()));
  constexpr int kPasses = 3;
  for (int pass = 0; pass < kPasses; ++pass) {
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      const auto& device_weights = streamer.enter(b);
      REQUIRE(device_weights.size() == blocks[b].weights.size());
      for (const auto& [name, tensor] : device_weights) {
        INFO(name);
        CHECK(at::equal(tensor, weights.at(name)));
      }
      streamer.leave(b);
    }
  }
  const auto& stats = streamer.stats();
  CHECK(stats.demand_copies == 0);
  CHECK(stats.prefetched_hits == kPasses * static_cast<std::int64_t>(plan.streamed.size()));
  // Resident blocks once; each streamed block once per pass, plus the next pass's prefetch.
  const std::int64_t expected_copies = static_cast<std::int64_t>(plan.resident.size()) +
                                       kPasses * static_cast<std::int64_t>(plan.streamed.size()) +
                                       1;
  CHECK(stats.block_copies == expected_copies);
}

TEST_CASE("a slot is refilled only after the compute released it", "[streaming]") {
  std::vector<std::pair<std::string, std::int64_t>> order;
  const auto weights = make_weights(3, order);
  const auto blocks = group_into_blocks(order);
  StreamingPlan plan;
  plan.resident = {0};
  plan.streamed = {1, 2, 3};
  plan.slots = 2;
  plan.resident_bytes = blocks[0].bytes;
  std::vector<std::string> log;
  WeightStreamer streamer(weights, blocks, plan, std::make_unique<RecordingBackend>(log),
                          StreamingMemory::plain(apo::Device::cpu()));
  const std::vector<std::string> construction{
      "copy after release -1", "copied 2",  // the resident block, event id after the slots
      "copy after release -1", "copied 0",  // block 1 prefetched into slot 0
  };
  CHECK(log == construction);
  log.clear();
  streamer.enter(1);  // waits on slot 0, prefetches block 2 into slot 1
  streamer.leave(1);
  streamer.enter(2);  // prefetches block 3 into slot 0: after slot 0's release
  const std::vector<std::string> steady{
      "compute waits 0", "copy after release -1", "copied 1", "released 0",
      "compute waits 1", "copy after release 0",  "copied 0",
  };
  CHECK(log == steady);
}

TEST_CASE("entering out of order copies on demand; misuse is an error", "[streaming]") {
  std::vector<std::pair<std::string, std::int64_t>> order;
  const auto weights = make_weights(4, order);
  const auto blocks = group_into_blocks(order);
  StreamingPlan plan;
  plan.streamed = {0, 1, 2, 3, 4};
  plan.slots = 2;
  WeightStreamer streamer(weights, blocks, plan, apo::Device::cpu(),
                          StreamingMemory::plain(apo::Device::cpu()));
  const auto& w = streamer.enter(3);
  CHECK(at::equal(w.at("blocks.2.attn.qkv.weight"), weights.at("blocks.2.attn.qkv.weight")));
  CHECK(streamer.stats().demand_copies == 1);
  CHECK_THROWS_AS(streamer.enter(3), apo::Error);  // already entered
  CHECK_THROWS_AS(streamer.leave(2), apo::Error);  // never entered
  streamer.leave(3);
  CHECK_THROWS_AS(streamer.enter(99), apo::Error);
  CHECK_THROWS_AS(WeightStreamer({}, blocks, plan, apo::Device::cpu(),
                                 StreamingMemory::plain(apo::Device::cpu())),
                  apo::Error);
}

TEST_CASE("the streamer's tensors hold their memory, also after the streamer is gone",
          "[streaming]") {
  std::vector<std::pair<std::string, std::int64_t>> order;
  const auto weights = make_weights(3, order);
  const auto blocks = group_into_blocks(order);
  StreamingPlan plan;
  plan.resident = {0};
  plan.streamed = {1, 2, 3};
  plan.slots = 2;
  at::Tensor resident;
  {
    WeightStreamer streamer(weights, blocks, plan, apo::Device::cpu(),
                            StreamingMemory::plain(apo::Device::cpu()));
    resident = streamer.enter(0).at("patch_embedding.weight");
    streamer.leave(0);
  }
  // The streamer and its memory resources are gone; the tensor keeps its buffer.
  CHECK(at::equal(resident, weights.at("patch_embedding.weight")));
}

TEST_CASE("a slot is not refilled while tensors of its last block are still held", "[streaming]") {
  std::vector<std::pair<std::string, std::int64_t>> order;
  const auto weights = make_weights(4, order);
  const auto blocks = group_into_blocks(order);
  StreamingPlan plan;
  plan.resident = {0};
  plan.streamed = {1, 2, 3, 4};
  plan.slots = 2;
  std::vector<std::string> log;
  WeightStreamer streamer(weights, blocks, plan, std::make_unique<RecordingBackend>(log),
                          StreamingMemory::plain(apo::Device::cpu()));
  const std::string name = "blocks.0.attn.qkv.weight";  // block 1, in slot 0
  at::Tensor kept = streamer.enter(1).at(name);
  streamer.leave(1);
  // Entering block 2 (slot 1, prefetched) would prefetch block 3 into slot 0, which `kept`
  // still shows: the prefetch waits.
  streamer.enter(2);
  CHECK(streamer.stats().block_copies == 3);  // the resident block, blocks 1 and 2
  CHECK(at::equal(kept, weights.at(name)));
  streamer.leave(2);
  // Block 3 must now be copied into slot 0: an error naming the block whose tensors are held.
  try {
    streamer.enter(3);
    FAIL("no error");
  } catch (const apo::Error& e) {
    CHECK(e.code() == apo::ErrorCode::InvalidArgument);
    CHECK_THAT(e.what(), Catch::Contains("block 'blocks.0'") && Catch::Contains("blocks.2"));
  }
  CHECK(at::equal(kept, weights.at(name)));
  kept = at::Tensor();  // dropped: the slot is free again
  const auto& w = streamer.enter(3);
  CHECK(at::equal(w.at("blocks.2.ffn.0.weight"), weights.at("blocks.2.ffn.0.weight")));
  CHECK(streamer.stats().demand_copies == 1);
  streamer.leave(3);
}

TEST_CASE("streaming to a CUDA device computes what the host computes", "[streaming][gpu]") {
  std::vector<std::pair<std::string, std::int64_t>> order;
  const auto weights = make_weights(8, order);
  const auto blocks = group_into_blocks(order);
  std::int64_t total = 0;
  for (const auto& b : blocks) total += b.bytes;
  const auto plan = plan_weight_streaming(blocks, total / 3, 1);
  REQUIRE_FALSE(plan.streamed.empty());
  WeightStreamer streamer(weights, blocks, plan, apo::Device::cuda(0),
                          StreamingMemory::plain(apo::Device::cuda(0)));
  const at::Tensor x = at::randn({4, 32});
  for (int pass = 0; pass < 2; ++pass) {
    for (std::size_t b = 1; b < blocks.size(); ++b) {
      const std::string name = blocks[b].name + ".attn.qkv.weight";
      const auto& w = streamer.enter(b);
      const at::Tensor device_result = at::matmul(x.to(w.at(name).device()), w.at(name).t());
      CHECK(at::allclose(device_result.cpu(), at::matmul(x, weights.at(name).t()), 1e-4, 1e-5));
      streamer.leave(b);
    }
  }
  CHECK(streamer.stats().demand_copies == 0);
}

TEST_CASE("streaming to CUDA follows torch's current stream", "[streaming][gpu]") {
  // The model runs on a stream from torch's pool, made current after the streamer exists: the
  // streamer's waits and releases must follow it, not a stream fixed at construction.
  std::vector<std::pair<std::string, std::int64_t>> order;
  const auto weights = make_weights(8, order);
  const auto blocks = group_into_blocks(order);
  std::int64_t total = 0;
  for (const auto& b : blocks) total += b.bytes;
  const auto plan = plan_weight_streaming(blocks, total / 3, 1);
  REQUIRE_FALSE(plan.streamed.empty());
  WeightStreamer streamer(weights, blocks, plan, apo::Device::cuda(0),
                          StreamingMemory::plain(apo::Device::cuda(0)));
  const c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
  const c10::Device gpu(c10::DeviceType::CUDA, 0);
  const c10::Stream side = guard.getStreamFromGlobalPool(gpu);
  const c10::Stream previous = guard.exchangeStream(side);
  const at::Tensor x = at::randn({4, 32});
  const at::Tensor x_gpu = x.to(gpu);
  std::vector<at::Tensor> results;
  for (int pass = 0; pass < 3; ++pass) {
    for (std::size_t b = 1; b < blocks.size(); ++b) {
      const std::string name = blocks[b].name + ".attn.qkv.weight";
      results.push_back(at::matmul(x_gpu, streamer.enter(b).at(name).t()));
      streamer.leave(b);
    }
  }
  guard.exchangeStream(previous);
  std::size_t i = 0;
  for (int pass = 0; pass < 3; ++pass) {
    for (std::size_t b = 1; b < blocks.size(); ++b, ++i) {
      const std::string name = blocks[b].name + ".attn.qkv.weight";
      INFO("pass " << pass << ", " << name);
      CHECK(at::allclose(results[i].cpu(), at::matmul(x, weights.at(name).t()), 1e-4, 1e-5));
    }
  }
}
