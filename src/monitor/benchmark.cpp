#include "apo/monitor/benchmark.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "apo/core/error.hpp"
#include "apo/core/machine.hpp"

namespace apo::bench {

std::optional<double> Result::ratio() const {
  if (!baseline || *baseline <= 0 || value <= 0) return std::nullopt;
  return better == Better::lower ? *baseline / value : value / *baseline;
}

std::string Report::to_json() const {
  nlohmann::ordered_json out;
  out["benchmark"] = benchmark_;
  out["machine"] = nlohmann::ordered_json::parse(apo::to_json(apo::probe_machine()));
  out["results"] = nlohmann::ordered_json::array();
  for (const Result& r : results_) {
    const auto ratio = r.ratio();
    out["results"].push_back(
        {{"case", r.case_name},
         {"metric", r.metric},
         {"value", r.value},
         {"unit", r.unit},
         {"baseline",
          r.baseline ? nlohmann::ordered_json(*r.baseline) : nlohmann::ordered_json(nullptr)},
         {"ratio", ratio ? nlohmann::ordered_json(*ratio) : nlohmann::ordered_json(nullptr)}});
  }
  return out.dump(2);
}

void Report::write_json(const std::string& path) const {
  std::ofstream out(path);
  if (!out) throw Error(ErrorCode::Io, "cannot open for writing", path);
  out << to_json() << '\n';
  if (!out) throw Error(ErrorCode::Io, "write failed", path);
}

void Report::print_table(std::FILE* out) const {
  fmt::print(out, "{}\n", benchmark_);
  fmt::print(out, "{:<58} {:<18} {:>14} {:>14} {:>8}\n", "case", "metric", "value", "baseline",
             "ratio");
  for (const Result& r : results_) {
    const auto ratio = r.ratio();
    fmt::print(out, "{:<58} {:<18} {:>14} {:>14} {:>8}\n", r.case_name, r.metric,
               fmt::format("{:.4g} {}", r.value, r.unit),
               r.baseline ? fmt::format("{:.4g} {}", *r.baseline, r.unit) : std::string("-"),
               ratio ? fmt::format("{:.2f}x", *ratio) : std::string("-"));
  }
}

Options parse_options(int argc, char** argv, const std::string& description) {
  Options options;
  CLI::App app{description};
  app.add_option("--json", options.json_path, "Write the results as JSON to this file");
  app.add_flag("--quick", options.quick, "Smaller sizes: a smoke test, not a measurement");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    std::exit(app.exit(error));
  }
  return options;
}

int finish(const Report& report, const Options& options) {
  report.print_table();
  if (options.json_path) report.write_json(*options.json_path);
  return 0;
}

std::vector<double> interleaved_medians(const std::vector<std::function<void()>>& runs,
                                        int min_runs, double min_total_s, int max_rounds) {
  using clock = std::chrono::steady_clock;
  for (const auto& run : runs) run();
  std::vector<std::vector<double>> times(runs.size());
  const auto start = clock::now();
  for (int round = 0; round < max_rounds; ++round) {
    if (round >= min_runs &&
        std::chrono::duration<double>(clock::now() - start).count() >= min_total_s) {
      break;
    }
    for (std::size_t i = 0; i < runs.size(); ++i) {
      const auto t0 = clock::now();
      runs[i]();
      times[i].push_back(std::chrono::duration<double>(clock::now() - t0).count());
    }
  }
  std::vector<double> medians;
  for (auto& t : times) {
    if (t.empty()) {
      medians.push_back(0);
      continue;
    }
    std::nth_element(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(t.size() / 2), t.end());
    medians.push_back(t[t.size() / 2]);
  }
  return medians;
}

void check_output(bool matches, const std::string& what) {
  if (matches) return;
  fmt::print(stderr, "output check failed: {}\nno time is reported for a wrong result\n", what);
  std::exit(1);
}

}  // namespace apo::bench
