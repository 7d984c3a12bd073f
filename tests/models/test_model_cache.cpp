#include "apo_catch.hpp"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/ledger.hpp"
#include "apo/models/model_cache.hpp"
#include "apo/models/safetensors.hpp"

using namespace apo::models;
using namespace apo::literals;
namespace fs = std::filesystem;

namespace {

struct ScratchDir {
  fs::path path = fs::temp_directory_path() / fmt::format("apo_cache_{}", std::random_device{}());
  ScratchDir() { fs::create_directories(path); }
  ~ScratchDir() { fs::remove_all(path); }
};

// A DiT-like model of `blocks` blocks of two 128x128 float32 linears (64 KiB each) plus biases
// and a norm; about blocks x 128 KiB.
fs::path write_model(const fs::path& dir, const std::string& name, int blocks, int seed) {
  at::manual_seed(seed);
  std::vector<NamedTensor> tensors;
  for (int b = 0; b < blocks; ++b) {
    tensors.push_back({fmt::format("blocks.{}.attn.qkv.weight", b), at::randn({128, 128})});
    tensors.push_back({fmt::format("blocks.{}.attn.qkv.bias", b), at::randn({128})});
    tensors.push_back({fmt::format("blocks.{}.ffn.weight", b), at::randn({128, 128})});
  }
  tensors.push_back({"final_norm.weight", at::ones({128})});
  const fs::path path = dir / (name + ".safetensors");
  save_safetensors(path, tensors);
  return path;
}

std::int64_t file_tensor_bytes(const fs::path& path) {
  std::int64_t total = 0;
  const auto file = SafetensorsFile::open(path);
  for (const auto& e : file.tensors()) total += e.bytes();
  return total;
}

std::shared_ptr<apo::memory::MemoryLedger> ledger(std::int64_t budget) {
  return std::make_shared<apo::memory::MemoryLedger>(apo::Device::cpu(), budget);
}

// Stores weights at `precision`, quantizing tensors of 1024 elements or more.
QuantizationPlanner stored_as(apo::Precision precision) {
  apo::quant::PrecisionSettings settings;
  settings.precision = precision;
  apo::quant::QuantizationRules rules;
  rules.min_elements = 1024;
  return planner_of(apo::quant::ConfiguredPrecision(settings, rules));
}

// A cache whose only tier is the host's: what a CPU engine has (its device ledger is the host's).
ModelCacheOptions host_only(std::int64_t host_budget) {
  ModelCacheOptions options;
  options.host_ledger = ledger(host_budget);
  options.quantization = stored_as(apo::Precision::fp32);
  options.io_threads = 2;
  return options;
}

ModelRef ref(const fs::path& path, ModelKind kind = ModelKind::diffusion,
             std::string workflow = "wan", std::optional<apo::Precision> precision = std::nullopt) {
  return {path, kind, precision, std::move(workflow)};
}

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         at::equal(a.contiguous().view(at::kByte), b.contiguous().view(at::kByte));
}

const apo::Device kCpu = apo::Device::cpu();

}  // namespace

TEST_CASE("acquire loads once, then hits; weights are the file's", "[cache]") {
  ScratchDir dir;
  const auto path = write_model(dir.path, "wan", 4, 1);
  ModelCache cache(host_only(64_MiB));
  {
    Lease a = cache.acquire(ref(path), kCpu);
    Lease b = cache.acquire(ref(path), kCpu);
    CHECK(&a.model() == &b.model());
    const auto file = SafetensorsFile::open(path);
    for (const auto& entry : file.tensors()) {
      CHECK(bitwise_equal(a->weight(entry.name).data(), file.view(entry.name)));
    }
    CHECK(a->bytes() == file_tensor_bytes(path));
  }
  const auto stats = cache.stats();
  CHECK(stats.loads == 1);
  CHECK(stats.misses == 1);
  CHECK(stats.hits == 1);
  CHECK(stats.bytes_read == file_tensor_bytes(path));
  CHECK(cache.used_bytes(kCpu) == file_tensor_bytes(path));
}

TEST_CASE("the configured precision quantizes on load; apo's quantized files load as stored",
          "[cache]") {
  ScratchDir dir;
  const auto path = write_model(dir.path, "wan", 4, 2);
  auto options = host_only(64_MiB);
  options.quantization = stored_as(apo::Precision::fp8_e4m3);
  ModelCache cache(options);
  Lease lease = cache.acquire(ref(path), kCpu);
  const auto& qkv = lease->weight("blocks.0.attn.qkv.weight");
  CHECK(qkv.format() == apo::quant::QFormat::fp8_e4m3);
  CHECK(lease->weight("blocks.0.attn.qkv.bias").format() == apo::quant::QFormat::none);
  CHECK(lease->bytes() < file_tensor_bytes(path) / 3);
  const at::Tensor original = SafetensorsFile::open(path).copy("blocks.0.attn.qkv.weight");
  CHECK(at::allclose(qkv.dequantize(), original, 0.07, 1e-3));

  // Written out and read back, the quantized model is bit for bit the same.
  const fs::path saved = dir.path / "wan_fp8.safetensors";
  write_model_weights(saved, lease->weights());
  Lease again = cache.acquire(ref(saved), kCpu);
  for (const auto& w : lease->weights()) {
    const auto& back = again->weight(w.name());
    CHECK(back.spec() == w.spec());
    CHECK(back.original_dtype() == w.original_dtype());
    CHECK(bitwise_equal(back.data(), w.data()));
    if (w.scales().defined()) CHECK(bitwise_equal(back.scales(), w.scales()));
  }
}

TEST_CASE("weights stored in the file's own dtype own their memory", "[cache]") {
  ScratchDir dir;
  at::manual_seed(5);
  const std::vector<NamedTensor> tensors{
      {"blocks.0.attn.qkv.weight", at::randn({128, 128}).to(at::kBFloat16)},
      {"blocks.0.attn.qkv.bias", at::randn({128}).to(at::kBFloat16)}};
  const fs::path path = dir.path / "bf16.safetensors";
  save_safetensors(path, tensors);
  auto options = host_only(64_MiB);
  options.quantization = stored_as(apo::Precision::bf16);  // bf16 to bf16: nothing converts
  ModelCache cache(options);
  Lease lease = cache.acquire(ref(path), kCpu);
  // Overwritten in place, the file must not change the loaded weights (a view of its mapping
  // would see the new bytes).
  {
    const std::int64_t data_offset = SafetensorsFile::open(path).header().data_offset();
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(data_offset);
    const std::vector<char> zeros(static_cast<std::size_t>(fs::file_size(path) - data_offset));
    file.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
  }
  for (const auto& t : tensors) CHECK(bitwise_equal(lease->weight(t.name).data(), t.tensor));
}

TEST_CASE("the least recently used unleased model goes first; leased ones never", "[cache]") {
  ScratchDir dir;
  const auto a = write_model(dir.path, "a", 4, 3);
  const auto b = write_model(dir.path, "b", 4, 4);
  const auto c = write_model(dir.path, "c", 4, 5);
  const std::int64_t size = file_tensor_bytes(a);
  apo::FakeClock clock;
  // Two models fit under the 80% threshold, three do not even fit the budget.
  ModelCache cache(host_only(size * 26 / 10), clock);
  cache.acquire(ref(a), kCpu).release();
  clock.advance(std::chrono::seconds(1));
  cache.acquire(ref(b), kCpu).release();
  clock.advance(std::chrono::seconds(1));
  cache.acquire(ref(a), kCpu).release();  // a is now the more recent
  clock.advance(std::chrono::seconds(1));
  cache.acquire(ref(c), kCpu).release();  // evicts b
  std::set<std::string> resident;
  for (const auto& r : cache.residents()) resident.insert(fs::path(r.path).filename().string());
  CHECK(resident == std::set<std::string>{"a.safetensors", "c.safetensors"});
  CHECK(cache.stats().evictions == 1);

  // With a and c leased, b has nowhere to go.
  Lease la = cache.acquire(ref(a), kCpu);
  Lease lc = cache.acquire(ref(c), kCpu);
  CHECK_THROWS_MATCHES(cache.acquire(ref(b), kCpu), apo::Error,
                       Catch::Predicate<apo::Error>([](const apo::Error& e) {
                         return e.code() == apo::ErrorCode::OutOfMemory &&
                                std::string(e.what()).find("leased or loading") !=
                                    std::string::npos;
                       }));
  la.release();
  CHECK_NOTHROW(cache.acquire(ref(b), kCpu));
}

TEST_CASE("a model larger than every tier fails with the sizes", "[cache]") {
  ScratchDir dir;
  const auto big = write_model(dir.path, "big", 16, 6);
  ModelCache cache(host_only(1_MiB));
  try {
    cache.acquire(ref(big), kCpu);
    FAIL("loaded a model larger than the budget");
  } catch (const apo::Error& e) {
    CHECK(e.code() == apo::ErrorCode::OutOfMemory);
    CHECK_THAT(e.what(), Catch::Contains("more than the host tier budget of 1.00 MiB"));
  }
}

TEST_CASE("sharing follows the guide's rules", "[cache][sharing]") {
  ScratchDir dir;
  const auto t5 = write_model(dir.path, "umt5", 2, 7);
  const auto wan = write_model(dir.path, "wan", 2, 8);
  SECTION("text encoders serve every workflow, even at a lower precision asked") {
    ModelCache cache(host_only(64_MiB));
    Lease x =
        cache.acquire(ref(t5, ModelKind::text_encoder, "wan_t2v", apo::Precision::fp16), kCpu);
    Lease y =
        cache.acquire(ref(t5, ModelKind::text_encoder, "hunyuan", apo::Precision::fp8_e4m3), kCpu);
    CHECK(&x.model() == &y.model());
    // A better precision than the resident one is a new instance.
    Lease z = cache.acquire(ref(t5, ModelKind::text_encoder, "qwen", apo::Precision::fp32), kCpu);
    CHECK(&z.model() != &x.model());
  }
  SECTION("diffusion models are shared only for the same file and precision") {
    ModelCache cache(host_only(64_MiB));
    Lease x = cache.acquire(ref(wan, ModelKind::diffusion, "a", apo::Precision::fp16), kCpu);
    Lease y = cache.acquire(ref(wan, ModelKind::diffusion, "b", apo::Precision::fp16), kCpu);
    Lease z = cache.acquire(ref(wan, ModelKind::diffusion, "c", apo::Precision::fp8_e4m3), kCpu);
    CHECK(&x.model() == &y.model());
    CHECK(&z.model() != &x.model());
  }
  SECTION("with sharing off, each workflow has its own instance") {
    auto options = host_only(64_MiB);
    options.share_models = false;
    ModelCache cache(options);
    Lease x = cache.acquire(ref(t5, ModelKind::text_encoder, "a"), kCpu);
    Lease y = cache.acquire(ref(t5, ModelKind::text_encoder, "b"), kCpu);
    Lease again = cache.acquire(ref(t5, ModelKind::text_encoder, "a"), kCpu);
    CHECK(&x.model() != &y.model());
    CHECK(&x.model() == &again.model());
    CHECK(cache.residents().size() == 2);
  }
}

TEST_CASE("concurrent acquires of one model load it once", "[cache][concurrency]") {
  ScratchDir dir;
  const auto path = write_model(dir.path, "wan", 8, 9);
  auto options = host_only(64_MiB);
  options.io_threads = 4;
  ModelCache cache(options);
  std::vector<std::future<Lease>> futures;
  for (int i = 0; i < 16; ++i) futures.push_back(cache.acquire_async(ref(path), kCpu));
  std::set<const Model*> models;
  for (auto& f : futures) models.insert(&f.get().model());
  CHECK(models.size() == 1);
  CHECK(cache.stats().loads == 1);
  CHECK(cache.stats().hits + cache.stats().misses == 16);
}

TEST_CASE("threads acquiring and releasing under a tight budget stay consistent",
          "[cache][concurrency]") {
  ScratchDir dir;
  std::vector<fs::path> paths;
  for (int m = 0; m < 5; ++m)
    paths.push_back(write_model(dir.path, fmt::format("m{}", m), 2, 20 + m));
  const std::int64_t size = file_tensor_bytes(paths[0]);
  ModelCache cache(host_only(size * 4));
  // Catch's assertions are not thread-safe: threads count, the test thread checks.
  std::atomic<int> served{0}, wrong{0}, out_of_memory{0}, other_errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 40; ++i) {
        try {
          Lease lease = cache.acquire(ref(paths[rng() % paths.size()]), kCpu);
          ++(lease->weights().size() == 7 ? served : wrong);
        } catch (const apo::Error& e) {
          // All room leased at once is allowed (OutOfMemory), never a crash.
          ++(e.code() == apo::ErrorCode::OutOfMemory ? out_of_memory : other_errors);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(served + out_of_memory == 160);
  CHECK(served > 0);
  CHECK(wrong == 0);
  CHECK(other_errors == 0);
  CHECK(cache.used_bytes(kCpu) <= size * 4);
  for (const auto& r : cache.residents()) CHECK(r.leases == 0);
  CHECK(cache.release_unused() > 0);
  CHECK(cache.used_bytes(kCpu) == 0);
}

TEST_CASE("eviction demotes to the host tier and a reload is a copy, not a read",
          "[cache][tiers]") {
  ScratchDir dir;
  const auto a = write_model(dir.path, "a", 4, 10);
  const auto b = write_model(dir.path, "b", 4, 11);
  const std::int64_t size = file_tensor_bytes(a);
  // A device tier of its own (standing in for a GPU; its ledger is not the host's).
  auto options = host_only(64_MiB);
  options.device_ledgers = {ledger(size + size / 2)};  // one model at a time
  options.demote_to_host = true;
  ModelCache cache(options);
  cache.acquire(ref(a), kCpu).release();
  cache.acquire(ref(b), kCpu).release();  // a moves to the host tier
  CHECK(cache.stats().demotions == 1);
  CHECK(cache.host_used_bytes() == size);
  CHECK(cache.used_bytes(kCpu) == size);
  CHECK(options.device_ledgers[0]->snapshot().weights_bytes == size);
  CHECK(options.host_ledger->snapshot().weights_bytes == size);
  Lease again = cache.acquire(ref(a), kCpu);  // b demoted, a promoted
  CHECK(cache.stats().loads == 2);
  CHECK(cache.stats().promotions == 1);
  const auto file = SafetensorsFile::open(a);
  CHECK(
      bitwise_equal(again->weight("blocks.3.ffn.weight").data(), file.view("blocks.3.ffn.weight")));

  SECTION("without CPU offload an evicted model is dropped") {
    auto dropping = host_only(64_MiB);
    dropping.device_ledgers = {ledger(size + size / 2)};
    dropping.demote_to_host = false;
    ModelCache other(dropping);
    other.acquire(ref(a), kCpu).release();
    other.acquire(ref(b), kCpu).release();
    CHECK(other.stats().demotions == 0);
    CHECK(other.host_used_bytes() == 0);
  }
}

TEST_CASE("a model too large for its device streams from the host tier", "[cache][tiers]") {
  ScratchDir dir;
  const auto big = write_model(dir.path, "big", 8, 12);
  const std::int64_t size = file_tensor_bytes(big);
  auto options = host_only(64_MiB);
  options.device_ledgers = {ledger(size / 3)};
  SECTION("refused without sequential offload") {
    ModelCache cache(options);
    CHECK_THROWS_AS(cache.acquire(ref(big), kCpu), apo::Error);
  }
  SECTION("streamed with it, its slots charged to the device's ledger as staging") {
    options.stream_when_too_large = true;
    ModelCache cache(options);
    Lease lease = cache.acquire(ref(big), kCpu);
    REQUIRE(lease.streamed());
    CHECK(cache.host_used_bytes() == size);
    auto streamer = lease.streamer();
    CHECK(streamer->plan().device_bytes() <= size / 3);
    const auto staging = options.device_ledgers[0]->snapshot().staging_bytes;
    CHECK(staging >= streamer->plan().device_bytes());
    CHECK(staging <= size / 3);
    const auto file = SafetensorsFile::open(big);
    for (std::size_t b = 0; b < streamer->blocks().size(); ++b) {
      for (const auto& [name, tensor] : streamer->enter(b))
        CHECK(at::equal(tensor, file.view(name)));
      streamer->leave(b);
    }
    streamer.reset();
    CHECK(options.device_ledgers[0]->snapshot().staging_bytes == 0);
  }
}

TEST_CASE("LoRAs merge while leased and the base comes back exactly", "[cache][lora]") {
  ScratchDir dir;
  const auto base = write_model(dir.path, "wan", 2, 13);
  at::manual_seed(14);
  const at::Tensor down = at::randn({4, 128}) * 0.1;
  const at::Tensor up = at::randn({128, 4}) * 0.1;
  const fs::path lora = dir.path / "lightning.safetensors";
  save_safetensors(lora, std::vector<NamedTensor>{
                             {"diffusion_model.blocks.0.attn.qkv.lora_A.weight", down},
                             {"diffusion_model.blocks.0.attn.qkv.lora_B.weight", up},
                         });
  const at::Tensor original = SafetensorsFile::open(base).copy("blocks.0.attn.qkv.weight");
  const at::Tensor expected = original + 0.5 * at::matmul(up, down);

  for (const auto precision : {apo::Precision::fp32, apo::Precision::fp8_e4m3}) {
    INFO(apo::to_string(precision));
    auto options = host_only(64_MiB);
    options.quantization = stored_as(precision);
    ModelCache cache(options);
    const at::Tensor stored =
        cache.acquire(ref(base), kCpu)->weight("blocks.0.attn.qkv.weight").data().clone();
    {
      Lease patched = cache.acquire(ref(base), kCpu, {{lora, 0.5}});
      Lease same = cache.acquire(ref(base), kCpu, {{lora, 0.5}});  // agrees: shares
      CHECK(&patched.model() == &same.model());
      const at::Tensor merged = patched->dense("blocks.0.attn.qkv.weight", at::kFloat);
      CHECK(at::allclose(merged, expected, precision == apo::Precision::fp32 ? 1e-5 : 0.1, 1e-2));
      // A lease without the LoRA waits for these to end.
      auto plain = cache.acquire_async(ref(base), kCpu);
      CHECK(plain.wait_for(std::chrono::milliseconds(100)) == std::future_status::timeout);
      patched.release();
      same.release();
      const Lease restored = plain.get();
      CHECK(bitwise_equal(restored->weight("blocks.0.attn.qkv.weight").data(), stored));
    }
    CHECK(cache.stats().lora_applications == 2);  // on, then off
    CHECK(cache.stats().loads == 1);              // one resident base served both variants
  }
}

TEST_CASE("preloading warms the host tier with what the history predicts", "[cache][preload]") {
  ScratchDir dir;
  const auto t5 = write_model(dir.path, "umt5", 2, 15);
  const auto wan = write_model(dir.path, "wan", 2, 16);
  const auto rare = write_model(dir.path, "rare", 2, 17);
  apo::FakeClock clock;
  UsagePredictor predictor(clock);
  for (int i = 0; i < 5; ++i)
    predictor.record("wan_t2v", std::vector<std::string>{t5.string(), wan.string()}, 9);
  predictor.record("other", std::vector<std::string>{rare.string()}, 9);
  ModelCache cache(host_only(64_MiB), clock);
  auto preload = cache.preload(predictor, 9, 0.3);
  preload.done.wait();
  CHECK(preload.models.size() == 2);
  CHECK(cache.stats().loads == 2);
  cache.acquire(ref(wan), kCpu).release();
  CHECK(cache.stats().hits == 1);
  CHECK(cache.preload(predictor, 3, 0.3).models.empty());  // nothing predicted at 3 am
}

TEST_CASE("bad files and misuse are errors, and a failed load does not poison the cache",
          "[cache][errors]") {
  ScratchDir dir;
  ModelCache cache(host_only(64_MiB));
  CHECK_THROWS_MATCHES(cache.acquire(ref(dir.path / "none.safetensors"), kCpu), apo::Error,
                       Catch::Predicate<apo::Error>([](const apo::Error& e) {
                         return e.code() == apo::ErrorCode::NotFound;
                       }));
  const fs::path broken = dir.path / "broken.safetensors";
  std::ofstream(broken, std::ios::binary) << "\x10\0\0\0\0\0\0\0{\"x\": 1}";
  CHECK_THROWS_MATCHES(cache.acquire(ref(broken), kCpu), apo::Error,
                       Catch::Predicate<apo::Error>([](const apo::Error& e) {
                         return e.code() == apo::ErrorCode::Corrupt;
                       }));
  write_model(dir.path, "broken", 1, 18);  // fixed in place
  CHECK_NOTHROW(cache.acquire(ref(broken), kCpu));
  CHECK_THROWS_AS(cache.acquire(ref(broken), apo::Device::cuda(3)), apo::Error);

  Lease orphan;
  {
    ModelCache short_lived(host_only(64_MiB));
    orphan = short_lived.acquire(ref(broken), kCpu);
  }
  CHECK_THROWS_WITH(orphan.model(), Catch::Contains("used after its ModelCache was destroyed"));
  CHECK_THROWS_AS(Lease().model(), apo::Error);
}

TEST_CASE("options come from the configuration", "[cache]") {
  apo::Config config;
  config.memory.enable_cpu_offload = true;
  config.memory.eviction_threshold = 0.7;
  config.storage.preload_models = true;
  config.system.io_threads = 3;
  const auto options = ModelCacheOptions::from_config(config);
  CHECK(options.demote_to_host);
  CHECK(options.keep_host_copy);
  CHECK(options.eviction_threshold == 0.7);
  CHECK(options.io_threads == 3);
  CHECK_FALSE(options.host_ledger);  // ledgers come from whoever owns the devices
  // A cache needs a host ledger.
  CHECK_THROWS_AS(ModelCache(options), apo::Error);
}

TEST_CASE("the cache charges its weights to the ledgers and gives them back", "[cache]") {
  ScratchDir dir;
  const auto a = write_model(dir.path, "a", 4, 21);
  const std::int64_t size = file_tensor_bytes(a);
  auto options = host_only(64_MiB);
  {
    ModelCache cache(options);
    cache.acquire(ref(a), kCpu).release();
    CHECK(options.host_ledger->snapshot().weights_bytes == size);
    // Activations using most of the budget push the idle model out of the ledger.
    const std::int64_t pool = 64_MiB - size - size / 2;
    options.host_ledger->charge(apo::memory::LedgerUse::pool, pool, "activations");
    CHECK(cache.make_room(kCpu, size) == size);
    CHECK(options.host_ledger->snapshot().weights_bytes == 0);
    options.host_ledger->release(apo::memory::LedgerUse::pool, pool);
    cache.acquire(ref(a), kCpu).release();
    CHECK(cache.footprint(ref(a), kCpu).resident);
    CHECK(cache.footprint(ref(a), kCpu).bytes == size);
  }
  CHECK(options.host_ledger->snapshot().weights_bytes == 0);  // the cache is gone
}

TEST_CASE("quantized conversions are kept and reused by the next cold load", "[cache]") {
  ScratchDir dir;
  const auto path = write_model(dir.path, "wan", 4, 19);
  auto options = host_only(64_MiB);
  options.quantization = stored_as(apo::Precision::fp8_e4m3);
  options.converted_models = dir.path / "converted";
  at::Tensor first;
  {
    ModelCache cache(options);
    first = cache.acquire(ref(path), kCpu)->weight("blocks.1.ffn.weight").data().clone();
    CHECK(cache.stats().conversions_written == 1);
    CHECK(cache.stats().conversions_read == 0);
  }
  {
    ModelCache cache(options);
    const Lease lease = cache.acquire(ref(path), kCpu);
    CHECK(cache.stats().conversions_read == 1);
    CHECK(bitwise_equal(lease->weight("blocks.1.ffn.weight").data(), first));
  }
  SECTION("a changed source is converted again") {
    write_model(dir.path, "wan", 4, 20);
    fs::last_write_time(path, fs::last_write_time(path) + std::chrono::seconds(5));
    ModelCache cache(options);
    const Lease lease = cache.acquire(ref(path), kCpu);
    CHECK(cache.stats().conversions_read == 0);
    CHECK(cache.stats().conversions_written == 1);
    CHECK_FALSE(bitwise_equal(lease->weight("blocks.1.ffn.weight").data(), first));
  }
  SECTION("a damaged conversion is replaced") {
    for (const auto& entry : fs::directory_iterator(options.converted_models)) {
      std::ofstream(entry.path(), std::ios::binary | std::ios::trunc) << "garbage";
    }
    ModelCache cache(options);
    const Lease lease = cache.acquire(ref(path), kCpu);
    CHECK(cache.stats().conversions_written == 1);
    CHECK(bitwise_equal(lease->weight("blocks.1.ffn.weight").data(), first));
  }
}
