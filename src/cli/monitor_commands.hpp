#pragma once

// The monitoring commands of the apo command line: serve-metrics.

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace apo::cli {

class MonitorCommands {
 public:
  /// @brief Adds the subcommands to `app`.
  void add(CLI::App& app);
  /// @brief Runs the subcommand parsed, if it is one of these: its exit code.
  std::optional<int> run();

 private:
  int serve_metrics();

  CLI::App* serve_ = nullptr;
  int port_ = 9464;
  std::string bind_ = "127.0.0.1";
  std::optional<double> interval_s_;
  std::optional<std::string> config_file_;
  bool once_ = false;
  bool json_ = false;
};

}  // namespace apo::cli
