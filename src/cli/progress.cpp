#include "progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace apo::cli {

namespace {

constexpr int kBarWidth = 24;
constexpr int kLabelWidth = 16;
// Redrawing a terminal line more often than this only costs time.
constexpr auto kRedrawInterval = std::chrono::milliseconds(100);

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  if (seconds < 60) return fmt::format("{:.1f} s", seconds);
  const auto whole = static_cast<std::int64_t>(std::llround(seconds));
  if (whole < 3600) return fmt::format("{} min {:02} s", whole / 60, whole % 60);
  return fmt::format("{} h {:02} min", whole / 3600, whole % 3600 / 60);
}

ProgressBar::ProgressBar(std::string unit, std::FILE* out)
    : ProgressBar(std::move(unit), out, isatty(fileno(out)) != 0) {}

ProgressBar::ProgressBar(std::string unit, std::FILE* out, bool terminal)
    : unit_(std::move(unit)), out_(out), terminal_(terminal) {}

ProgressBar::~ProgressBar() {
  finish();
}

std::string ProgressBar::figures(std::int64_t done, std::int64_t total, double elapsed_s) const {
  const bool bytes = unit_ == "bytes";
  const double scale = bytes ? 1e6 : 1.0;
  const std::string unit = bytes ? "MB" : unit_;
  std::string text = fmt::format("{:.{}f}/{:.{}f} {}", done / scale, bytes ? 1 : 0, total / scale,
                                 bytes ? 1 : 0, unit);
  // A rate from the first moments is noise: wait for a little progress and a little time.
  if (done > 0 && elapsed_s > 0.2) {
    const double rate = done / elapsed_s;
    text += rate / scale >= 10 || bytes ? fmt::format("  {:.1f} {}/s", rate / scale, unit)
                                        : fmt::format("  {:.2f} {}/s", rate / scale, unit);
    if (done < total) {
      text += fmt::format("  {} left", format_duration((total - done) / rate));
    } else {
      text += fmt::format("  in {}", format_duration(elapsed_s));
    }
  }
  return text;
}

void ProgressBar::show(const std::string& label, std::int64_t done, std::int64_t total,
                       const std::string& detail) {
  const auto now = std::chrono::steady_clock::now();
  if (label != label_) {
    if (terminal_ && !label_.empty()) std::fputs("\n", out_);
    label_ = label;
    drawn_width_ = 0;
    shown_decile_ = -1;
    started_ = now;
    last_draw_ = {};
  }
  done = std::clamp<std::int64_t>(done, 0, std::max<std::int64_t>(total, 0));
  const int percent = total > 0 ? static_cast<int>(done * 100 / total) : 100;
  const bool last = done == total;
  if (terminal_) {
    if (!last && shown_decile_ >= 0 && now - last_draw_ < kRedrawInterval) return;
  } else if (percent / 10 == shown_decile_ && !last) {
    return;
  }
  if (!terminal_ && last && shown_decile_ == 10) return;  // the end is printed once
  shown_decile_ = percent / 10;
  last_draw_ = now;
  const int filled = total > 0 ? static_cast<int>(done * kBarWidth / total) : kBarWidth;
  const double elapsed_s = std::chrono::duration<double>(now - started_).count();
  std::string line = fmt::format("{:<{}} [{}{}] {:>3}%  {}", label, kLabelWidth,
                                 std::string(static_cast<std::size_t>(filled), '#'),
                                 std::string(static_cast<std::size_t>(kBarWidth - filled), '.'),
                                 percent, figures(done, total, elapsed_s));
  if (!detail.empty()) line += "  " + detail;
  if (terminal_) {
    // Pad to clear what a longer previous line left behind.
    fmt::print(out_, "\r{:<{}}", line, std::max(line.size(), drawn_width_));
    drawn_width_ = line.size();
  } else {
    fmt::print(out_, "{}\n", line);
  }
  std::fflush(out_);
}

void ProgressBar::finish() {
  if (terminal_ && !label_.empty()) {
    std::fputs("\n", out_);
    std::fflush(out_);
  }
  label_.clear();
}

}  // namespace apo::cli
