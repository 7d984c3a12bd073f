#pragma once

/// @file
/// @brief The main job: a mixed trace of the eight reference workflows through the engine, with
/// the configuration recommended for this machine, its outputs written as pictures and a report
/// of what each workflow cost and how good its outputs are.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "apo/core/config.hpp"
#include "apo/request/request.hpp"

namespace apo::ref {

/// @brief A request of the trace with what it was made from (for the files' names).
struct DemoRequest {
  Request request;
  std::string label;  ///< "qwen_edit-1"
};

/// @brief The demo's mixed trace: `per_workflow` requests of each workflow, interleaved, their
/// captions and input pictures drawn from the world with `seed` (edits change a colour, relights
/// change the light, inpainting repaints one shape, image-to-video starts from a rendered frame),
/// sized for the models in `models_dir`.
std::vector<DemoRequest> demo_trace(const std::filesystem::path& models_dir, std::uint64_t seed,
                                    int per_workflow);

/// @brief Where the demo stands.
struct DemoProgress {
  int done = 0;      ///< requests ended
  int total = 0;     ///< requests in the pass
  std::string pass;  ///< "trace" or "full precision"
};

struct DemoOptions {
  std::filesystem::path output_dir = "apo-demo";
  std::filesystem::path models_dir;  ///< empty: default_models_dir()
  int per_workflow = 2;
  std::uint64_t seed = 1;
  /// The configuration; unset: the one apo recommends for this machine.
  std::optional<Config> config;
  /// Also run every request with float32 weights, for SSIM and PSNR against full precision.
  bool compare_full_precision = true;
  std::function<void(const DemoProgress&)> on_progress;
};

/// @brief One workflow's part of the demo.
struct DemoWorkflowReport {
  std::string workflow;
  int requests = 0;
  int failed = 0;
  double mean_seconds = 0.0;          ///< submit to result, on average
  double mean_compute_seconds = 0.0;  ///< encode + denoise + decode, on average
  std::int64_t peak_memory_bytes = 0;
  double judge_score = 0.0;    ///< mean over the requests
  std::optional<double> ssim;  ///< against the same requests with float32 weights
  std::optional<double> psnr_db;
  std::vector<std::string> files;
  std::vector<std::string> decisions;  ///< what the engine chose and why (first request)
};

struct DemoReport {
  std::vector<DemoWorkflowReport> workflows;
  double wall_seconds = 0.0;  ///< the trace, start to last result
  double full_precision_seconds = 0.0;
  std::string configuration;         ///< precision, slicing, batch policy in a sentence
  std::vector<std::string> reasons;  ///< why the configuration (the recommendation's reasons)
  std::int64_t peak_memory_bytes = 0;
  std::vector<std::string> failures;  ///< "label: message" of requests that did not end ok
  std::filesystem::path report_file;  ///< report.json
};

/// @brief Runs the demo and writes its pictures and report.json to options.output_dir.
/// @throws apo::Error NotFound (model files), Io (the output folder)
DemoReport run_demo(const DemoOptions& options);

}  // namespace apo::ref
