#pragma once

// The reference models' commands of the apo command line: demo and train-reference.

#include <cstdint>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "trace_option.hpp"

namespace apo::cli {

class ReferenceCommands {
 public:
  /// @brief Adds the subcommands to `app`.
  void add(CLI::App& app);
  /// @brief Runs the subcommand parsed, if it is one of these: its exit code.
  std::optional<int> run();

 private:
  CLI::App* demo_ = nullptr;
  std::string demo_output_ = "apo-demo";
  int demo_per_workflow_ = 2;
  std::uint64_t demo_seed_ = 1;
  bool demo_skip_full_precision_ = false;
  TraceOption demo_trace_;

  CLI::App* train_ = nullptr;
  std::string train_output_ = "assets/reference";
  std::uint64_t train_seed_ = 0;
  double train_scale_ = 1.0;
  int train_threads_ = 0;
};

}  // namespace apo::cli
