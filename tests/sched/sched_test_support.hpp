#pragma once

// Helpers shared by the scheduler tests: request builders and planners.

#include <chrono>
#include <cstdint>
#include <string>

#include "apo/batch/batch.hpp"
#include "apo/core/units.hpp"
#include "apo/request/request.hpp"

namespace sched_test {

using apo::QualityLevel;
using apo::Request;
using namespace std::chrono_literals;

/// @brief A valid image request of `workflow` with the given id, priority and estimate.
inline Request request(apo::RequestId id, std::string workflow = "qwen_edit", int priority = 0,
                       std::int64_t memory_bytes = apo::GiB) {
  Request r;
  r.id = id;
  r.workflow = std::move(workflow);
  r.width = 1024;
  r.height = 1024;
  r.priority = priority;
  r.memory_estimate_bytes = memory_bytes;
  return r;
}

/// @brief A planner that takes up to `count` requests within `memory_bytes`, at once.
struct Take {
  std::size_t count = apo::batch::kMaxBatchSize;
  std::int64_t memory_bytes = std::int64_t{1} << 60;
  apo::batch::BatchPlan operator()(const apo::batch::BatchCandidate&) const {
    return apo::batch::BatchPlan::take(count, memory_bytes);
  }
};

}  // namespace sched_test
