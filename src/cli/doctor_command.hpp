#pragma once

// `apo doctor`: the system settings apo runs best with, read and compared (see
// apo/monitor/doctor.hpp).

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace apo::cli {

class DoctorCommand {
 public:
  /// @brief Adds the subcommand to `app`.
  void add(CLI::App& app);
  /// @brief Runs it if it was parsed: 0 with warnings too (it is advice), 1 when a check found
  /// a failure (a disk nearly full).
  std::optional<int> run();

 private:
  CLI::App* doctor_ = nullptr;
  bool json_ = false;
  std::string root_ = "/";
  std::string models_path_;
  std::string temp_path_;
};

}  // namespace apo::cli
