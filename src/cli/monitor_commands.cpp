#include "monitor_commands.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>

#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/core/machine.hpp"
#include "apo/monitor/metrics_export.hpp"
#include "apo/monitor/performance_monitor.hpp"
#include "apo/monitor/system_metrics.hpp"
#include "apo/tune/presets.hpp"

namespace apo::cli {

namespace {

// SIGINT and SIGTERM write a byte here; the main thread waits on the other end. A pipe works
// whichever thread the signal lands on, and write() is safe in a handler.
int stop_pipe[2] = {-1, -1};

extern "C" void monitor_commands_on_signal(int /*signal*/) {
  const char byte = 1;
  [[maybe_unused]] const auto written = write(stop_pipe[1], &byte, 1);
}

/// Installs the handlers for its lifetime and restores the previous ones after.
class StopSignals {
 public:
  StopSignals() {
    if (pipe2(stop_pipe, O_CLOEXEC) != 0) {
      fail(ErrorCode::Io, "cannot create a pipe for signals: errno {}", errno);
    }
    struct sigaction action {};
    action.sa_handler = monitor_commands_on_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(SIGINT, &action, &previous_int_);
    sigaction(SIGTERM, &action, &previous_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
    close(stop_pipe[0]);
    close(stop_pipe[1]);
    stop_pipe[0] = stop_pipe[1] = -1;
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  /// Blocks until a signal arrives or wake() is called.
  void wait() {
    char byte = 0;
    while (read(stop_pipe[0], &byte, 1) < 0 && errno == EINTR) {
    }
  }
  /// Ends wait() from another thread (the server's, when it stops on its own).
  void wake() { monitor_commands_on_signal(0); }

 private:
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
};

Config monitoring_config(const std::optional<std::string>& file) {
  if (file) return tune::config_loader().file(*file).load().config;
  return tune::recommend(probe_machine()).loaded.config;
}

/// How long --once measures CPU use over.
constexpr int kOnceMeasureMs = 500;

bool is_loopback(const std::string& address) {
  return address == "127.0.0.1" || address == "::1" || address == "localhost" ||
         address.rfind("127.", 0) == 0;
}

}  // namespace

void MonitorCommands::add(CLI::App& app) {
  serve_ = app.add_subcommand(
      "serve-metrics",
      "Monitor this machine and serve its metrics over HTTP: GET /metrics (Prometheus text "
      "format) and /metrics.json");
  serve_->add_option("--port", port_, "TCP port (0: any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  serve_->add_option("--bind", bind_, "Address to listen on (loopback unless told otherwise)")
      ->capture_default_str();
  serve_
      ->add_option("--interval", interval_s_,
                   "Seconds between samples (default: the config's monitoring.sample_interval_s)")
      ->check(CLI::PositiveNumber);
  serve_->add_option("--config", config_file_,
                     "Configuration file (default: what 'apo recommend' gives this machine)");
  serve_->add_flag("--once", once_,
                   "Print the metrics of one sample (CPU use over half a second) and exit");
  serve_->add_flag("--json", json_, "With --once: print JSON instead of the text format");
}

std::optional<int> MonitorCommands::run() {
  if (serve_ && *serve_) return serve_metrics();
  return std::nullopt;
}

int MonitorCommands::serve_metrics() {
  Config config = monitoring_config(config_file_);
  if (interval_s_) config.monitoring.sample_interval_s = *interval_s_;
  monitor::PerformanceMonitor monitor(config.monitoring, config.target_generation_time_s,
                                      SteadyClock::instance());
  if (once_) {
    // CPU shares need two readings: the sampler took the first when it was made.
    std::this_thread::sleep_for(std::chrono::milliseconds(kOnceMeasureMs));
    monitor.sample_now();
    const monitor::MetricsSnapshot snapshot = monitor.metrics_snapshot();
    fmt::print(
        "{}", json_ ? monitor::to_metrics_json(snapshot) + "\n" : monitor::to_prometheus(snapshot));
    return 0;
  }
  monitor.sample_now();  // so that the first scrape has figures

  httplib::Server server;
  // httplib's default sets SO_REUSEPORT, which lets a second server bind a port in use and share
  // its connections; SO_REUSEADDR alone allows a restart but refuses a port someone listens on.
  server.set_socket_options([](socket_t socket) {
    const int yes = 1;
    setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  const auto handler = [&monitor](const httplib::Request& request, httplib::Response& response) {
    const monitor::MetricsResponse answer =
        monitor::metrics_response(request.path, monitor.metrics_snapshot());
    response.status = answer.status;
    response.set_content(answer.body, answer.content_type.c_str());
  };
  server.Get("/metrics", handler);
  server.Get("/metrics.json", handler);

  // Before the first line is printed: a script may signal as soon as it has read it.
  StopSignals signals;
  int port = port_;
  if (port == 0) {
    port = server.bind_to_any_port(bind_);
    if (port < 0) fail(ErrorCode::Io, "cannot listen on {} (any port)", bind_);
  } else if (!server.bind_to_port(bind_, port)) {
    fail(ErrorCode::Io, "cannot listen on {} port {}", bind_, port);
  }
  if (!is_loopback(bind_)) {
    fmt::print(stderr,
               "apo: warning: metrics are served on {} without authentication to anyone who "
               "can reach it\n",
               bind_);
  }
  // The first line says where, so that scripts started with --port 0 can find the port.
  fmt::print("serving metrics on http://{}:{}/metrics every {} s\n", bind_, port,
             config.monitoring.sample_interval_s);
  std::fflush(stdout);

  monitor.start();
  std::atomic<bool> listening_done{false};
  std::thread listener([&server, &signals, &listening_done] {
    server.listen_after_bind();
    listening_done = true;
    signals.wake();  // stopped, or failed: either way the command ends
  });
  signals.wait();
  // stop() does nothing before the listener has begun to run: repeat it until the thread ends.
  while (!listening_done) {
    server.stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  listener.join();
  monitor.stop();
  fmt::print("stopped after {} samples\n", monitor.samples_taken());
  return 0;
}

}  // namespace apo::cli
