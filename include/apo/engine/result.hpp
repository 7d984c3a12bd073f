#pragma once

/// @file
/// @brief What a request ends with: its status, its outputs, where its time and memory went, and
/// what the engine chose for it and why; the ticket a caller holds until then.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "apo/core/clock.hpp"
#include "apo/core/device.hpp"
#include "apo/core/enum_names.hpp"
#include "apo/core/error.hpp"
#include "apo/quant/format.hpp"
#include "apo/request/request.hpp"

namespace apo::engine {

/// @brief How a request ended. Every accepted request ends exactly once.
enum class Status {
  ok,             ///< it ran; the outputs are set
  cancelled,      ///< cancel() or shutdown(cancel) ended it, queued or at its next step
  timed_out,      ///< its deadline passed while it was queued
  rejected,       ///< refused: the queue was full, or the engine was shutting down
  out_of_memory,  ///< it could not fit, even alone after the engine released what it could
  failed,         ///< the workflow (or a model file) failed; the message says how
};

}  // namespace apo::engine

template <>
struct apo::EnumTraits<apo::engine::Status> {
  static constexpr std::string_view noun = "status";
  static constexpr std::array<EnumEntry<engine::Status>, 6> entries{{
      {engine::Status::ok, "ok"},
      {engine::Status::cancelled, "cancelled"},
      {engine::Status::timed_out, "timed_out"},
      {engine::Status::rejected, "rejected"},
      {engine::Status::out_of_memory, "out_of_memory"},
      {engine::Status::failed, "failed"},
  }};
};

namespace apo::engine {

/// @brief The error a request that ended with `status` reports to a host (the C ABI's status, the
/// Python exception); nullopt for ok.
constexpr std::optional<ErrorCode> error_code(Status status) noexcept {
  switch (status) {
    case Status::ok:
      return std::nullopt;
    case Status::cancelled:
      return ErrorCode::Cancelled;
    case Status::timed_out:
      return ErrorCode::TimedOut;
    case Status::rejected:
      return ErrorCode::Rejected;
    case Status::out_of_memory:
      return ErrorCode::OutOfMemory;
    case Status::failed:
      return ErrorCode::WorkflowFailed;
  }
  return ErrorCode::Internal;
}

/// @brief The stages a request's time is spent in, as a workflow reports them (Context::stage).
enum class Stage { model_load, encode, denoise, decode };

/// @brief A request's outputs by name ("image", "alpha", "video", ...), on the CPU.
using Outputs = std::map<std::string, at::Tensor>;

/// @brief Where a request's time went, on the engine's clock.
struct StageTimings {
  Clock::duration queue_wait{};  ///< submit to the start of its batch
  Clock::duration model_load{};  ///< acquiring the models (loads, promotions, LoRA switches)
  Clock::duration encode{};      ///< text and image encoding
  Clock::duration denoise{};     ///< the sampling loop
  Clock::duration decode{};      ///< latents to pixels
  Clock::duration total{};       ///< submit to result
};

/// @brief What the engine chose for a request, with a sentence for each choice.
struct Decisions {
  Device device;
  std::size_t batch_size = 0;
  /// Each model the batch used and the format its weights were stored in.
  std::vector<std::pair<std::string, quant::QuantSpec>> precisions;
  bool attention_slicing = false;
  int slice_size = 0;
  std::vector<std::string> reasons;
};

/// @brief How a request ended, and with what.
struct Result {
  RequestId id = 0;
  Status status = Status::failed;
  /// Set unless ok: why, naming what was needed and what was free for out_of_memory.
  std::string message;
  Outputs outputs;
  StageTimings timings;
  /// The most its device's ledger held while its batch ran (0 if it never ran).
  std::int64_t peak_memory_bytes = 0;
  /// A quality score in [0, 1] when the workflow judged its output.
  std::optional<double> quality;
  Decisions decisions;

  bool ok() const noexcept { return status == Status::ok; }
};

/// @brief Called with (request, step, steps) as a request's workflow advances.
using ProgressCallback = std::function<void(RequestId, int step, int steps)>;
/// @brief Called once with the result, on the thread that ends the request, before the ticket's
/// future is ready. It must not block on the engine.
using ResultCallback = std::function<void(const Result&)>;

/// @brief What a caller may be told as its request runs.
struct Callbacks {
  ProgressCallback on_progress;
  ResultCallback on_result;
};

/// @brief A submitted request: its id and the future of its result.
class Ticket {
 public:
  Ticket() = default;
  Ticket(RequestId id, std::shared_future<Result> result) : id_(id), result_(std::move(result)) {}

  RequestId id() const noexcept { return id_; }
  bool valid() const noexcept { return result_.valid(); }
  /// @brief Whether the result is in.
  bool ready() const {
    return result_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  }
  /// @brief Blocks until the result is in.
  const Result& wait() const { return result_.get(); }
  /// @brief The result if it comes within `timeout` (real time).
  std::optional<Result> wait_for(std::chrono::nanoseconds timeout) const {
    if (result_.wait_for(timeout) != std::future_status::ready) return std::nullopt;
    return result_.get();
  }
  const std::shared_future<Result>& future() const noexcept { return result_; }

 private:
  RequestId id_ = 0;
  std::shared_future<Result> result_;
};

/// @brief How shutdown() ends the requests it finds: run every queued and running one to its end,
/// or cancel them (queued at once, running at their next step).
enum class ShutdownMode { drain, cancel };

/// @brief Counters over an engine's life.
struct EngineStats {
  std::uint64_t submitted = 0;  ///< accepted submits
  std::uint64_t completed = 0;  ///< ended ok
  std::uint64_t cancelled = 0;
  std::uint64_t timed_out = 0;
  std::uint64_t rejected = 0;
  std::uint64_t out_of_memory = 0;
  std::uint64_t failed = 0;
  std::uint64_t batches = 0;     ///< batches run (split halves count once each)
  std::uint64_t oom_splits = 0;  ///< batches split in halves after running out of memory
  std::uint64_t queued = 0;      ///< waiting now
  std::uint64_t running = 0;     ///< in a batch now
};

}  // namespace apo::engine
