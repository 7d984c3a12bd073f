#pragma once

// The benchmark command of the apo command line: `apo bench [WORKFLOW...]` runs the guide's
// WorkflowBenchmark over the reference workflows; `apo bench compare BEFORE AFTER` (or
// `--compare BEFORE`) flags regressions, exiting 1 when there is one (for CI).

#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "trace_option.hpp"

namespace apo::cli {

class BenchCommands {
 public:
  /// @brief Adds the subcommands to `app`.
  void add(CLI::App& app);
  /// @brief Runs the subcommand parsed, if it is one of these: its exit code.
  std::optional<int> run();

 private:
  int run_benchmark();
  int run_compare(const std::string& before_path, const std::string& after_path);

  CLI::App* bench_ = nullptr;
  std::vector<std::string> workflows_;
  int iterations_ = 5;
  int warmup_runs_ = 1;
  std::optional<std::string> json_path_;
  std::optional<std::string> compare_path_;
  double threshold_ = 0.1;
  std::uint64_t seed_ = 1;
  std::vector<std::string> config_files_;
  std::vector<std::string> overrides_;
  TraceOption trace_;

  CLI::App* compare_ = nullptr;
  std::string compare_before_;
  std::string compare_after_;
};

}  // namespace apo::cli
