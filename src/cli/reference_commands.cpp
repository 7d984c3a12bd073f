#include "reference_commands.hpp"

#include <cstdio>
#include <string>

#include <fmt/format.h>

#include "apo/ref/demo.hpp"
#include "apo/ref/training.hpp"
#include "progress.hpp"

namespace apo::cli {

namespace {

std::string mib(std::int64_t bytes) {
  return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20));
}

void print_demo_report(const ref::DemoReport& report, const std::string& output) {
  fmt::print("\nconfiguration: {}\n", report.configuration);
  for (const std::string& reason : report.reasons) fmt::print("  - {}\n", reason);
  fmt::print("\n{:<14} {:>4} {:>9} {:>9} {:>10} {:>6} {:>11} {:>10}\n", "workflow", "ok", "mean s",
             "compute s", "peak", "judge", "SSIM fp32", "per hour");
  for (const ref::DemoWorkflowReport& w : report.workflows) {
    const double per_hour = w.mean_compute_seconds > 0 ? 3600.0 / w.mean_compute_seconds : 0.0;
    fmt::print("{:<14} {:>4} {:>9.2f} {:>9.2f} {:>10} {:>6.2f} {:>11} {:>10.0f}\n", w.workflow,
               fmt::format("{}/{}", w.requests - w.failed, w.requests), w.mean_seconds,
               w.mean_compute_seconds, mib(w.peak_memory_bytes), w.judge_score,
               w.ssim ? fmt::format("{:.3f}", *w.ssim) : std::string("-"), per_hour);
  }
  int requests = 0;
  for (const ref::DemoWorkflowReport& w : report.workflows) requests += w.requests;
  fmt::print("\n{} requests in {:.1f} s ({:.0f} per hour through the engine), peak {}\n", requests,
             report.wall_seconds,
             report.wall_seconds > 0 ? requests * 3600.0 / report.wall_seconds : 0.0,
             mib(report.peak_memory_bytes));
  if (report.full_precision_seconds > 0) {
    fmt::print("full-precision pass for SSIM: {:.1f} s\n", report.full_precision_seconds);
  }
  if (!report.workflows.empty() && !report.workflows.front().decisions.empty()) {
    fmt::print("what the engine chose for {}:\n", report.workflows.front().workflow);
    for (const std::string& reason : report.workflows.front().decisions) {
      fmt::print("  - {}\n", reason);
    }
  }
  for (const std::string& failure : report.failures) fmt::print("FAILED {}\n", failure);
  fmt::print("pictures and report.json in {}\n", output);
}

}  // namespace

void ReferenceCommands::add(CLI::App& app) {
  demo_ = app.add_subcommand(
      "demo", "Run the eight reference workflows through the engine and write their pictures");
  demo_->add_option("-o,--out", demo_output_, "Where to write the pictures and report.json")
      ->capture_default_str();
  demo_->add_option("--per-workflow", demo_per_workflow_, "Requests of each workflow")
      ->capture_default_str();
  demo_->add_option("--seed", demo_seed_, "Seed of the trace")->capture_default_str();
  demo_->add_flag("--no-full-precision", demo_skip_full_precision_,
                  "Skip the float32 pass that SSIM is measured against");
  demo_trace_.add(demo_);

  train_ = app.add_subcommand(
      "train-reference",
      "Train the reference models (text encoder, VAE, image and video DiTs, lightning LoRAs)");
  train_->add_option("-o,--out", train_output_, "Where to write the model files")
      ->capture_default_str();
  train_->add_option("--seed", train_seed_, "The seed everything is drawn from")
      ->capture_default_str();
  train_
      ->add_option("--scale", train_scale_,
                   "Fraction of the full schedule (steps and data); 1 makes the committed models")
      ->capture_default_str();
  train_->add_option("--threads", train_threads_, "Intra-op threads (0: torch's default)");
}

std::optional<int> ReferenceCommands::run() {
  if (demo_ && *demo_) {
    ref::DemoOptions options;
    options.output_dir = demo_output_;
    options.per_workflow = demo_per_workflow_;
    options.seed = demo_seed_;
    options.compare_full_precision = !demo_skip_full_precision_;
    ProgressBar line("requests");
    options.on_progress = [&line](const ref::DemoProgress& progress) {
      line.show(progress.pass, progress.done, progress.total);
    };
    demo_trace_.start();
    const ref::DemoReport report = ref::run_demo(options);
    line.finish();
    print_demo_report(report, demo_output_);
    demo_trace_.finish();
    return report.failures.empty() ? 0 : 1;
  }
  if (train_ && *train_) {
    ref::TrainOptions options;
    options.output_dir = train_output_;
    options.seed = train_seed_;
    options.scale = train_scale_;
    options.threads = train_threads_;
    ProgressBar line("steps");
    options.on_progress = [&line](const ref::TrainProgress& progress) {
      line.show(progress.stage, progress.step, progress.steps,
                fmt::format("loss {:.4f}", progress.loss));
    };
    const ref::TrainReport report = ref::train_reference(options);
    line.finish();
    for (const ref::TrainStageReport& stage : report.stages) {
      fmt::print("{:<16} {:>6} steps  final loss {:.4f}  {:>6.1f} s\n", stage.stage, stage.steps,
                 stage.final_loss, stage.seconds);
    }
    fmt::print("trained in {:.1f} s; wrote {} files to {}\n", report.seconds, report.files.size(),
               train_output_);
    return 0;
  }
  return std::nullopt;
}

}  // namespace apo::cli
