#pragma once

// The command line's progress bar: on a terminal one line redrawn in place (fixed width, with
// the rate and the time left); elsewhere (logs, CI, pipes) plain lines, at most one per 10%.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace apo::cli {

class ProgressBar {
 public:
  /// @brief `unit` names what is counted ("requests", "steps", "runs"), or "bytes", which is
  /// shown as MB and MB/s.
  explicit ProgressBar(std::string unit, std::FILE* out = stdout);
  /// @brief Whether the output is a terminal (redrawn in place); otherwise plain lines.
  ProgressBar(std::string unit, std::FILE* out, bool terminal);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  /// @brief Shows `done` of `total` under `label`; a new label starts a new bar (and a new rate
  /// and time-left estimate). `detail` follows the figures ("loss 0.0123").
  void show(const std::string& label, std::int64_t done, std::int64_t total,
            const std::string& detail = {});
  /// @brief Ends the current line on a terminal.
  void finish();

 private:
  std::string figures(std::int64_t done, std::int64_t total, double elapsed_s) const;

  std::string unit_;
  std::FILE* out_;
  bool terminal_;
  std::string label_;
  int shown_decile_ = -1;
  std::size_t drawn_width_ = 0;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_draw_;
};

/// @brief "12.3 s", "4 min 05 s", "1 h 02 min".
std::string format_duration(double seconds);

}  // namespace apo::cli
