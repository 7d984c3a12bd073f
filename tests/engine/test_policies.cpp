// The engine's policy axes: the QuantizationPolicy and ActivationPool contracts against every
// implementation, the engine over each pool, AnyEngine's choice from the configuration, and
// every Options default agreeing with the configuration schema's.

#include "apo_catch.hpp"

#include <ATen/ATen.h>

#include "apo/batch/fixed_batcher.hpp"
#include "apo/batch/memory_aware_batcher.hpp"
#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/engine/any_engine.hpp"
#include "apo/engine/workflow_engine.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/memory/ledger.hpp"
#include "apo/memory/memory_manager.hpp"
#include "apo/models/model_cache.hpp"
#include "apo/quant/policy.hpp"
#include "apo/sched/placement.hpp"
#include "apo/sched/scheduler.hpp"
#include "engine_test_support.hpp"

using apo::memory::LedgerUse;
using namespace engine_test;
namespace q = apo::quant;

namespace {

// A DiT-like state dict: two large matrices, a bias, a norm and an embedding.
q::NamedTensors state_dict() {
  at::manual_seed(3);
  return {{"blocks.0.attn.qkv.weight", at::randn({512, 256})},
          {"blocks.0.attn.qkv.bias", at::randn({512})},
          {"blocks.0.ff.weight", at::randn({256, 512}).to(at::kBFloat16)},
          {"blocks.0.norm.weight", at::ones({256})},
          {"patch_embedding.weight", at::randn({256, 256})}};
}

std::int64_t stored_bytes(const std::vector<q::QTensor>& tensors) {
  std::int64_t bytes = 0;
  for (const auto& t : tensors) bytes += t.bytes();
  return bytes;
}

template <class P>
P make_policy();
template <>
q::ConfiguredPrecision make_policy() {
  return q::ConfiguredPrecision();
}
template <>
q::FixedPrecision<q::Fp8E4M3> make_policy() {
  return q::FixedPrecision<q::Fp8E4M3>();
}
template <>
q::FixedPrecision<q::Int8> make_policy() {
  return q::FixedPrecision<q::Int8>();
}
template <>
q::DynamicPrecision make_policy() {
  return q::DynamicPrecision();
}

}  // namespace

TEMPLATE_TEST_CASE("quantization policy: the QuantizationPolicy contract", "[engine][quant]",
                   q::ConfiguredPrecision, q::FixedPrecision<q::Fp8E4M3>,
                   q::FixedPrecision<q::Int8>, q::DynamicPrecision) {
  static_assert(q::QuantizationPolicy<TestType>);
  const TestType policy = make_policy<TestType>();
  const q::NamedTensors weights = state_dict();
  const q::LoadRequest request{"model.safetensors", std::nullopt, 1_GiB};

  const q::StoragePlan plan = policy.plan(weights, request);
  CHECK_FALSE(plan.reason.empty());
  // The plan's bytes are what the weights take once stored by its rules.
  q::QuantizationRules rules = plan.rules;
  rules.measure_error = false;
  const auto stored = q::quantize_state_dict(weights, rules);
  CHECK(plan.weight_bytes == stored_bytes(stored.tensors));
  // Biases, norms and embeddings stay as they are.
  for (const auto& t : stored.tensors) {
    if (t.name().find("bias") != std::string::npos || t.name().find("norm") != std::string::npos ||
        t.name().find("embedding") != std::string::npos) {
      CHECK(t.format() == q::QFormat::none);
    }
  }
  // Deterministic.
  const q::StoragePlan again = policy.plan(weights, request);
  CHECK(again.rules.spec == plan.rules.spec);
  CHECK(again.weight_bytes == plan.weight_bytes);
  // A precision the model reference asks for wins.
  const q::StoragePlan fp32 =
      policy.plan(weights, {"model.safetensors", apo::Precision::fp32, 1_GiB});
  CHECK(fp32.rules.spec.format == q::QFormat::none);
  std::int64_t source = 0;
  for (const auto& [name, t] : weights) source += static_cast<std::int64_t>(t.nbytes());
  CHECK(fp32.weight_bytes == source);
  const q::StoragePlan int8 =
      policy.plan(weights, {"model.safetensors", apo::Precision::int8, 1_GiB});
  CHECK(int8.rules.spec.format == q::QFormat::int8);
}

TEST_CASE("each policy stores as it says", "[engine][quant]") {
  const q::NamedTensors weights = state_dict();
  const q::LoadRequest roomy{"m", std::nullopt, 1_GiB};
  CHECK(q::ConfiguredPrecision().plan(weights, roomy).rules.spec.format == q::QFormat::fp16);
  CHECK(q::FixedPrecision<q::Fp8E4M3>().plan(weights, roomy).rules.spec ==
        q::QuantSpec{q::QFormat::fp8_e4m3, q::Scaling::per_row});
  CHECK(q::FixedPrecision<q::Int8>(q::QuantizationRules{}, q::Int8(q::Scaling::per_tensor))
            .plan(weights, roomy)
            .rules.spec == q::QuantSpec{q::QFormat::int8, q::Scaling::per_tensor});
  // Dynamic: full precision when there is room, 8 bits when there is little.
  CHECK(q::DynamicPrecision().plan(weights, roomy).rules.spec.format == q::QFormat::none);
  const q::StoragePlan tight = q::DynamicPrecision().plan(weights, {"m", std::nullopt, 600_KiB});
  CHECK(q::traits(tight.rules.spec.format).scaled);
  CHECK(tight.weight_bytes <= 600_KiB);
  // Layers the configuration names stay at full precision.
  apo::Config config;
  config.performance.model_precision = apo::Precision::int8;
  config.performance.keep_full_precision = {"ff\\.weight$"};
  q::QuantizationRules rules =
      q::ConfiguredPrecision::from_config(config).plan(weights, roomy).rules;
  rules.measure_error = false;
  for (const auto& t : q::quantize_state_dict(weights, rules).tensors) {
    if (t.name() == "blocks.0.ff.weight") CHECK(t.format() == q::QFormat::none);
    if (t.name() == "blocks.0.attn.qkv.weight") CHECK(t.format() == q::QFormat::int8);
  }
}

TEMPLATE_TEST_CASE("activation pool: the ActivationPool contract", "[engine][memory]",
                   apo::memory::CachingPool, apo::memory::ArenaPool) {
  using Traits = apo::engine::ActivationPoolTraits<TestType>;
  auto ledger = std::make_shared<apo::memory::MemoryLedger>(apo::Device::cpu(), 64_MiB);
  auto pool =
      Traits::make(apo::memory::LedgerResource(apo::memory::HostResource(), ledger), 64_MiB);
  REQUIRE(pool);
  // What the pool holds from its upstream is charged to the device's ledger.
  void* block = pool->allocate(3_MiB, 256);
  REQUIRE(block != nullptr);
  CHECK(Traits::reserved_bytes(*pool) >= 3_MiB);
  CHECK(ledger->snapshot().pool_bytes == Traits::reserved_bytes(*pool));
  pool->deallocate(block, 3_MiB, 256);
  const std::int64_t released = Traits::release(*pool);
  CHECK(released >= 0);
  CHECK(ledger->snapshot().pool_bytes == Traits::reserved_bytes(*pool));
  // A request past the ledger's budget is refused with OutOfMemory, and nothing leaks.
  CHECK_THROWS_MATCHES(pool->allocate(80_MiB, 256), apo::Error,
                       Catch::Predicate<apo::Error>([](const apo::Error& e) {
                         return e.code() == apo::ErrorCode::OutOfMemory;
                       }));
  CHECK(ledger->snapshot().pool_bytes == Traits::reserved_bytes(*pool));
}

TEMPLATE_TEST_CASE("the engine runs over each pool", "[engine][memory]", apo::memory::CachingPool,
                   apo::memory::ArenaPool) {
  ScratchDir dir;
  TestWorkflow::Options workflow;
  workflow.encoder = write_model(dir.path, "encoder", 1, 1);
  workflow.dit = write_model(dir.path, "dit", 1, 2);
  apo::FakeClock clock;
  apo::engine::WorkflowEngine<q::ConfiguredPrecision, TestType> engine(
      engine_config(256_MiB, dir.path), clock, cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(workflow));
  for (int i = 0; i < 3; ++i) CHECK(result_of(engine.submit(request("x", 1 + i))).ok());
  const auto memory = engine.memory(0);
  CHECK(memory.pool_bytes > 0);
  CHECK(memory.peak_used_bytes <= memory.budget_bytes);
  CHECK(engine.policies().find(apo::engine::ActivationPoolTraits<TestType>::name) !=
        std::string::npos);
}

TEST_CASE("AnyEngine picks its batcher and scheduler from the configuration", "[engine]") {
  ScratchDir dir;
  apo::FakeClock clock;
  const std::pair<const char*, const char*> combinations[] = {{"priority", "memory_aware"},
                                                              {"priority", "fixed"},
                                                              {"fifo", "memory_aware"},
                                                              {"fifo", "fixed"}};
  for (const auto& [queue, batch] : combinations) {
    auto config = engine_config(64_MiB, dir.path);
    config.scheduling.queue_policy = *apo::parse_enum<apo::QueuePolicy>(queue);
    config.scheduling.batch_policy = *apo::parse_enum<apo::BatchPolicy>(batch);
    apo::engine::AnyEngine engine(config, clock, cpu_machine());
    const std::string& policies = engine.policies();
    CHECK(policies.find(std::string(queue) == "fifo" ? "FifoScheduler" : "PriorityScheduler") !=
          std::string::npos);
    CHECK(policies.find(std::string(batch) == "fixed" ? "FixedBatcher" : "MemoryAwareBatcher") !=
          std::string::npos);
    CHECK(engine.device_count() == 1);
    CHECK(engine.device(0) == apo::Device::cpu());
  }
}

TEST_CASE("every Options default is the configuration schema's", "[engine][config]") {
  const apo::Config config;
  const apo::sched::SchedulerOptions scheduler;
  const auto scheduler_from = apo::sched::SchedulerOptions::from_config(config);
  CHECK(scheduler.max_queue_size == scheduler_from.max_queue_size);
  CHECK(scheduler.default_timeout == scheduler_from.default_timeout);
  CHECK(scheduler.priority_levels == scheduler_from.priority_levels);
  CHECK(scheduler.aging_bound == scheduler_from.aging_bound);

  const apo::batch::MemoryAwareBatcherOptions batcher;
  const auto batcher_from = apo::batch::MemoryAwareBatcherOptions::from_config(config);
  CHECK(batcher.max_batch_size == batcher_from.max_batch_size);
  CHECK(batcher.max_queue_delay == batcher_from.max_queue_delay);
  CHECK(batcher.throughput_window == batcher_from.throughput_window);
  CHECK(batcher.throughput_tolerance == batcher_from.throughput_tolerance);
  CHECK(apo::batch::FixedBatcherOptions().batch_size ==
        apo::batch::FixedBatcherOptions::from_config(config).batch_size);

  const apo::sched::PlacementOptions placement;
  const auto placement_from = apo::sched::PlacementOptions::from_config(config);
  CHECK(placement.batches_per_device == placement_from.batches_per_device);
  CHECK(placement.utilization_weight == placement_from.utilization_weight);
  CHECK(placement.memory_pressure_weight == placement_from.memory_pressure_weight);

  const apo::memory::MemoryManagerOptions manager;
  const auto manager_from = apo::memory::MemoryManagerOptions::from_config(config);
  CHECK(manager.cleanup_interval == manager_from.cleanup_interval);
  CHECK(manager.aggressive == manager_from.aggressive);

  const apo::models::ModelCacheOptions cache;
  const auto cache_from = apo::models::ModelCacheOptions::from_config(config);
  CHECK(cache.eviction_threshold == cache_from.eviction_threshold);
  CHECK(cache.share_models == cache_from.share_models);
  CHECK(cache.demote_to_host == cache_from.demote_to_host);
  CHECK(cache.stream_when_too_large == cache_from.stream_when_too_large);
  CHECK(cache.keep_host_copy == cache_from.keep_host_copy);
  CHECK(cache.io_threads == cache_from.io_threads);
  CHECK(cache.async_io == cache_from.async_io);
  CHECK(cache.model_root == cache_from.model_root);
  CHECK(cache.io_buffer_bytes == cache_from.io_buffer_bytes);

  const q::PrecisionSettings precision;
  const auto precision_from = q::PrecisionSettings::from_config(config);
  CHECK(precision.precision == precision_from.precision);
  CHECK(precision.allow_8bit == precision_from.allow_8bit);
  CHECK(precision.memory_fraction == precision_from.memory_fraction);

  // And the configuration's values reach them.
  apo::Config changed;
  changed.scheduling.max_queue_size = 7;
  changed.performance.max_batch_size = 3;
  changed.scheduling.batches_per_device = 2;
  changed.memory.cleanup_interval_s = 5;
  changed.memory.eviction_threshold = 0.5;
  changed.performance.model_precision = apo::Precision::int8;
  CHECK(apo::sched::SchedulerOptions::from_config(changed).max_queue_size == 7);
  CHECK(apo::batch::MemoryAwareBatcherOptions::from_config(changed).max_batch_size == 3);
  CHECK(apo::sched::PlacementOptions::from_config(changed).batches_per_device == 2);
  CHECK(apo::memory::MemoryManagerOptions::from_config(changed).cleanup_interval ==
        std::chrono::seconds(5));
  CHECK(apo::models::ModelCacheOptions::from_config(changed).eviction_threshold == 0.5);
  CHECK(q::PrecisionSettings::from_config(changed).precision == apo::Precision::int8);
}
