#pragma once

// What the reference-workflow tests share: where the committed models are, and an engine
// configuration that runs them deterministically (float32 weights, one ATen thread, batches at
// once, no background cleanup).

#include <filesystem>

#include "apo/core/config.hpp"

namespace ref_test {

inline const std::filesystem::path kModels =
    std::filesystem::path(APO_TEST_DATA_DIR) / ".." / ".." / "assets" / "reference";

inline apo::Config engine_config() {
  apo::Config config;
  config.performance.max_memory_usage_gib = 4.0;
  config.performance.model_precision = apo::Precision::fp32;
  config.system.max_cpu_threads = 1;
  config.scheduling.max_queue_delay_ms = 0;
  config.memory.cleanup_interval_s = 3600;
  config.storage.model_cache_path = kModels.string();
  return config;
}

}  // namespace ref_test
