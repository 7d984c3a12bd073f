#include "doctor_command.hpp"

#include <fmt/format.h>

#include "apo/monitor/doctor.hpp"
#include "apo/ref/workflows.hpp"

namespace apo::cli {

void DoctorCommand::add(CLI::App& app) {
  doctor_ = app.add_subcommand(
      "doctor",
      "Check the system settings apo runs best with (CPU governor, limits, swappiness, huge "
      "pages, GPU persistence and power, free disk) and print the commands that would fix them; "
      "changes nothing");
  doctor_->add_flag("--json", json_, "Print JSON");
  doctor_->add_option("--root", root_, "Read /proc and /sys under this directory")
      ->capture_default_str();
  doctor_->add_option("--models", models_path_,
                      "Where models live (default: $APO_REFERENCE_MODELS or the reference "
                      "models' directory)");
  doctor_->add_option("--temp", temp_path_, "Where temporaries go (default: the system's)");
}

std::optional<int> DoctorCommand::run() {
  if (doctor_ == nullptr || !*doctor_) return std::nullopt;
  monitor::DoctorOptions options;
  options.root = root_;
  options.models_path =
      models_path_.empty() ? ref::default_models_dir() : std::filesystem::path(models_path_);
  options.temp_path = temp_path_;
  const std::vector<monitor::Finding> findings = monitor::run_doctor(options);
  if (json_) {
    fmt::print("{}\n", monitor::findings_to_json(findings));
  } else {
    fmt::print("{}", monitor::format_findings(findings));
  }
  return monitor::worst_status(findings) == monitor::CheckStatus::fail ? 1 : 0;
}

}  // namespace apo::cli
