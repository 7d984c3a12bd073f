#pragma once

/// @file
/// @brief The benchmark harness every bench_<area> program uses: options (--json FILE,
/// --quick), timing, and the report whose JSON form is the contract in benchmarks/README.md.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace apo::bench {

/// @brief Which way a metric improves.
enum class Better { lower, higher };

/// @brief One measurement, optionally against a baseline measured in the same run.
struct Result {
  std::string case_name;  ///< "fp8_e4m3 per-row quantize, 4096x4096 fp32"
  std::string metric;     ///< "time", "bandwidth", "peak_extra_memory"
  double value = 0;
  std::string unit;  ///< "ms", "GB/s", "bytes"
  std::optional<double> baseline;
  Better better = Better::lower;

  /// @brief How many times better the value is than the baseline (> 1 is better, whichever way
  /// the metric improves); unset without a baseline.
  std::optional<double> ratio() const;
};

/// @brief The results of one benchmark program.
class Report {
 public:
  explicit Report(std::string benchmark) : benchmark_(std::move(benchmark)) {}

  void add(Result result) { results_.push_back(std::move(result)); }
  const std::vector<Result>& results() const noexcept { return results_; }

  /// @brief {"benchmark", "machine" (apo::probe_machine), "results": [{case, metric, value,
  /// unit, baseline, ratio}]}.
  std::string to_json() const;
  void write_json(const std::string& path) const;
  /// @brief A fixed-width table: case, metric, value, baseline, ratio.
  void print_table(std::FILE* out = stdout) const;

 private:
  std::string benchmark_;
  std::vector<Result> results_;
};

/// @brief What every benchmark program accepts.
struct Options {
  std::optional<std::string> json_path;  ///< --json FILE
  bool quick = false;                    ///< --quick: smaller sizes, for smoke tests
};

/// @brief Parses --json FILE and --quick; prints help and exits on --help or a bad argument.
Options parse_options(int argc, char** argv, const std::string& description);

/// @brief Writes the JSON if asked and prints the table; returns the process exit code.
int finish(const Report& report, const Options& options);

/// @brief Keeps the compiler from discarding a computed value.
template <class T>
inline void do_not_optimize(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}

/// @brief Median wall time of `run()` in seconds, over at least `min_runs` runs and at least
/// `min_total_s` seconds, after one warm-up run.
template <class F>
double median_seconds(F&& run, int min_runs = 5, double min_total_s = 0.2) {
  using clock = std::chrono::steady_clock;
  run();
  std::vector<double> times;
  const auto start = clock::now();
  while (static_cast<int>(times.size()) < min_runs ||
         std::chrono::duration<double>(clock::now() - start).count() < min_total_s) {
    const auto t0 = clock::now();
    run();
    times.push_back(std::chrono::duration<double>(clock::now() - t0).count());
    if (times.size() >= 1000) break;
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

/// @brief Median wall time in seconds of each of `runs`, measured round-robin after one warm-up
/// run each, until every one has run `min_runs` times and `min_total_s` have passed (at most
/// `max_rounds` rounds). Candidate and baselines then see the same machine load: on a shared
/// machine the load moves by more than the differences measured.
std::vector<double> interleaved_medians(const std::vector<std::function<void()>>& runs,
                                        int min_runs = 7, double min_total_s = 0.5,
                                        int max_rounds = 200);

/// @brief Ends the program (exit status 1, naming `what`) unless `matches`: a benchmark checks
/// its candidate's output against the baseline's before it reports a time, and never reports
/// one for a wrong result.
void check_output(bool matches, const std::string& what);

}  // namespace apo::bench
