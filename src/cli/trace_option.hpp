#pragma once

// `--trace FILE` of the long commands (demo, bench): the process's Chrome trace is recorded while
// the command runs and written to FILE at its end, for Perfetto (ui.perfetto.dev).

#include <optional>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "apo/monitor/trace.hpp"

namespace apo::cli {

class TraceOption {
 public:
  void add(CLI::App* command) {
    command->add_option("--trace", path_,
                        "Record a Chrome trace (scheduling, model loads, stages, steps) to FILE");
  }
  void start() const {
    if (path_) monitor::Tracer::global().start();
  }
  void finish() const {
    if (!path_) return;
    monitor::Tracer& tracer = monitor::Tracer::global();
    tracer.stop();
    tracer.write(*path_);
    fmt::print("trace of {} events in {} (open it in ui.perfetto.dev)\n", tracer.events().size(),
               *path_);
  }

 private:
  std::optional<std::string> path_;
};

}  // namespace apo::cli
