// apo._core.Engine over apo::engine::AnyEngine, its Result, and its model cache.
//
// Threads: the engine's own threads run callbacks (progress, result); they take the GIL for
// the Python part only. Every call that may wait on those threads (submit, cancel, shutdown, the
// destructor) releases the GIL first, or a callback waiting for it would deadlock the wait.

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/engine/any_engine.hpp"
#include "apo/monitor/performance_monitor.hpp"
#include "apo/ref/demo.hpp"
#include "apo/ref/workflows.hpp"
#include "bindings.hpp"

namespace apo::python {

namespace {

using engine::AnyEngine;
using engine::Result;
using engine::Status;

double seconds(Clock::duration duration) {
  return std::chrono::duration<double>(duration).count();
}

// The error a status other than ok stands for.
ErrorCode code_of(Status status) {
  return engine::error_code(status).value_or(ErrorCode::Internal);
}

Device device_from(const std::string& text) {
  const auto device = Device::parse(text);
  if (!device) {
    throw Error(ErrorCode::InvalidArgument,
                "unknown device '" + text + "'; expected \"cpu\" or \"cuda:N\"", "device");
  }
  return *device;
}

template <class E>
E enum_from(const std::string& text, const char* what) {
  const auto value = parse_enum<E>(text);
  if (!value) {
    throw Error(ErrorCode::InvalidArgument,
                "unknown " + std::string(EnumTraits<E>::noun) + " '" + text + "'", what);
  }
  return *value;
}

std::vector<models::LoraRequest> loras_from(const py::handle& loras) {
  std::vector<models::LoraRequest> out;
  if (loras.is_none()) return out;
  for (const py::handle item : loras) {
    if (py::isinstance<py::str>(item) || py::hasattr(item, "__fspath__")) {
      out.push_back({py::str(item).cast<std::string>(), 1.0});
    } else {
      const auto pair = item.cast<std::pair<std::string, double>>();
      out.push_back({pair.first, pair.second});
    }
  }
  return out;
}

// A Request from submit()'s keyword arguments (the GIL held: tensors are converted here).
Request request_from(const std::string& workflow, const py::kwargs& fields) {
  Request r;
  r.workflow = workflow;
  for (const auto& [key_handle, value] : fields) {
    const std::string key = py::str(key_handle);
    if (value.is_none() && key != "image" && key != "mask" && key != "first_frame") continue;
    if (key == "prompt")
      r.prompt = value.cast<std::string>();
    else if (key == "negative_prompt")
      r.negative_prompt = value.cast<std::string>();
    else if (key == "image")
      r.image = from_python(value, "image");
    else if (key == "mask")
      r.mask = from_python(value, "mask");
    else if (key == "first_frame")
      r.first_frame = from_python(value, "first_frame");
    else if (key == "strength")
      r.strength = value.cast<double>();
    else if (key == "loras")
      r.loras = loras_from(value);
    else if (key == "model")
      r.model = py::str(value).cast<std::string>();
    else if (key == "width")
      r.width = value.cast<int>();
    else if (key == "height")
      r.height = value.cast<int>();
    else if (key == "frames")
      r.frames = value.cast<int>();
    else if (key == "steps")
      r.steps = value.cast<int>();
    else if (key == "guidance")
      r.guidance = value.cast<double>();
    else if (key == "sampler")
      r.sampler = enum_from<Sampler>(value.cast<std::string>(), "sampler");
    else if (key == "quality")
      r.quality = enum_from<QualityLevel>(value.cast<std::string>(), "quality");
    else if (key == "priority")
      r.priority = value.cast<int>();
    else if (key == "seed")
      r.seed = value.cast<std::uint64_t>();
    else if (key == "timeout_s") {
      r.deadline =
          SteadyClock::instance().now() + std::chrono::duration_cast<Clock::duration>(
                                              std::chrono::duration<double>(value.cast<double>()));
    } else {
      throw Error(ErrorCode::InvalidArgument, "unknown request field '" + key + "'", "request");
    }
  }
  return r;
}

py::dict stats_dict(const engine::EngineStats& s) {
  py::dict d;
  d["submitted"] = s.submitted;
  d["completed"] = s.completed;
  d["cancelled"] = s.cancelled;
  d["timed_out"] = s.timed_out;
  d["rejected"] = s.rejected;
  d["out_of_memory"] = s.out_of_memory;
  d["failed"] = s.failed;
  d["batches"] = s.batches;
  d["oom_splits"] = s.oom_splits;
  d["queued"] = s.queued;
  d["running"] = s.running;
  return d;
}

py::dict cache_stats_dict(const models::CacheStats& s) {
  py::dict d;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["loads"] = s.loads;
  d["promotions"] = s.promotions;
  d["demotions"] = s.demotions;
  d["evictions"] = s.evictions;
  d["bytes_read"] = s.bytes_read;
  d["bytes_moved"] = s.bytes_moved;
  d["load_seconds"] = s.load_seconds;
  d["lora_applications"] = s.lora_applications;
  d["conversions_written"] = s.conversions_written;
  d["conversions_read"] = s.conversions_read;
  return d;
}

py::dict ledger_dict(const memory::LedgerSnapshot& s) {
  py::dict d;
  d["device"] = s.device.str();
  d["budget_bytes"] = s.budget_bytes;
  d["weights_bytes"] = s.weights_bytes;
  d["staging_bytes"] = s.staging_bytes;
  d["pool_bytes"] = s.pool_bytes;
  d["batches_bytes"] = s.batches_bytes;
  d["untracked_bytes"] = s.untracked_bytes;
  d["used_bytes"] = s.used_bytes;
  d["peak_used_bytes"] = s.peak_used_bytes;
  d["free_bytes"] = s.free_bytes();
  return d;
}

py::list loras_list(const std::vector<models::LoraRequest>& loras) {
  py::list out;
  for (const auto& l : loras) out.append(py::make_tuple(l.path.string(), l.strength));
  return out;
}

// The engine, with the monitor it reports to (when asked for).
struct PyEngine {
  std::unique_ptr<AnyEngine> engine;
  std::shared_ptr<monitor::PerformanceMonitor> monitor;

  AnyEngine& get() const {
    if (!engine) throw Error(ErrorCode::InvalidArgument, "the engine is closed", "apo.Engine");
    return *engine;
  }

  // Ends every request and joins the engine's threads (the GIL released: callbacks need it).
  void close(engine::ShutdownMode mode) {
    py::gil_scoped_release release;
    if (engine) engine->shutdown(mode);
    engine.reset();
    if (monitor) monitor->stop();
    monitor.reset();
  }

  ~PyEngine() {
    if (!engine) return;
    if (PyGILState_Check() != 0) {
      close(engine::ShutdownMode::cancel);
    } else {
      engine->shutdown(engine::ShutdownMode::cancel);
    }
  }
};

// A lease on a model of the engine's cache; it keeps the engine alive (py::keep_alive).
struct PyLease {
  models::Lease lease;
};

}  // namespace

void bind_engine(py::module_& m) {
  py::class_<Result, std::shared_ptr<Result>>(m, "Result", R"doc(
How a request ended: status, outputs (torch tensors on the CPU, by name), timings (seconds),
peak memory, quality and the engine's decisions.)doc")
      .def_readonly("id", &Result::id)
      .def_property_readonly("status",
                             [](const Result& r) { return std::string(to_string(r.status)); })
      .def_property_readonly("ok", &Result::ok)
      .def_readonly("message", &Result::message)
      .def_property_readonly(
          "outputs",
          [](const Result& r) {
            py::dict outputs;
            for (const auto& [name, tensor] : r.outputs) outputs[py::str(name)] = to_python(tensor);
            return outputs;
          },
          "{name: torch.Tensor}, sharing the engine's memory.")
      .def_property_readonly(
          "timings",
          [](const Result& r) {
            py::dict t;
            t["queue_wait_s"] = seconds(r.timings.queue_wait);
            t["model_load_s"] = seconds(r.timings.model_load);
            t["encode_s"] = seconds(r.timings.encode);
            t["denoise_s"] = seconds(r.timings.denoise);
            t["decode_s"] = seconds(r.timings.decode);
            t["total_s"] = seconds(r.timings.total);
            return t;
          },
          "Seconds per stage: queue_wait_s, model_load_s, encode_s, denoise_s, decode_s, total_s.")
      .def_readonly("peak_memory_bytes", &Result::peak_memory_bytes)
      .def_readonly("quality", &Result::quality)
      .def_property_readonly(
          "decisions",
          [](const Result& r) {
            py::dict d;
            d["device"] = r.decisions.device.str();
            d["batch_size"] = r.decisions.batch_size;
            py::list precisions;
            for (const auto& [model, spec] : r.decisions.precisions) {
              precisions.append(py::make_tuple(model, to_string(spec)));
            }
            d["precisions"] = precisions;
            d["attention_slicing"] = r.decisions.attention_slicing;
            d["slice_size"] = r.decisions.slice_size;
            d["reasons"] = r.decisions.reasons;
            return d;
          },
          "device, batch_size, precisions [(model, format)], attention_slicing, slice_size, "
          "reasons.")
      .def(
          "error",
          [](const Result& r) -> py::object {
            if (r.ok()) return py::none();
            return make_error(code_of(r.status), r.message, "request " + std::to_string(r.id));
          },
          "None when ok; otherwise the apo.Error its status stands for (cancelled: "
          "CancelledError, timed_out: TimedOutError, rejected: RejectedError, out_of_memory: "
          "OutOfMemoryError, failed: WorkflowFailedError), with the message.")
      .def("__repr__", [](const Result& r) {
        return "<apo.Result " + std::to_string(r.id) + " " + std::string(to_string(r.status)) +
               (r.message.empty() ? "" : ": " + r.message) + ">";
      });

  py::class_<PyLease>(m, "Lease", R"doc(
Keeps a model resident while held; release() or the end of a `with` block lets it go.)doc")
      .def_property_readonly("path", [](const PyLease& l) { return l.lease.model().path(); })
      .def_property_readonly(
          "kind", [](const PyLease& l) { return std::string(to_string(l.lease.model().kind())); })
      .def_property_readonly("format",
                             [](const PyLease& l) { return to_string(l.lease.model().spec()); })
      .def_property_readonly("device",
                             [](const PyLease& l) { return l.lease.model().device().str(); })
      .def_property_readonly("nbytes", [](const PyLease& l) { return l.lease.model().bytes(); })
      .def_property_readonly("streamed", [](const PyLease& l) { return l.lease.streamed(); })
      .def_property_readonly(
          "weights",
          [](const PyLease& l) {
            py::dict weights;
            for (const auto& w : l.lease.model().weights())
              weights[py::str(w.name())] = py::cast(w);
            return weights;
          },
          "{name: apo.QTensor}, as stored.")
      .def_property_readonly("held", [](const PyLease& l) { return static_cast<bool>(l.lease); })
      .def(
          "release",
          [](PyLease& l) {
            py::gil_scoped_release release;
            l.lease.release();
          },
          "Lets the model go (it stays cached until evicted).")
      .def("__enter__", [](PyLease& l) -> PyLease& { return l; })
      .def("__exit__", [](PyLease& l, const py::args&) {
        py::gil_scoped_release release;
        l.lease.release();
      });

  py::class_<PyEngine>(m, "Engine", "The C++ engine; use apo.Engine.")
      .def(py::init([](const Config& config, bool monitor) {
             auto e = std::make_unique<PyEngine>();
             py::gil_scoped_release release;
             e->engine = std::make_unique<AnyEngine>(config);
             if (monitor) {
               e->monitor = std::make_shared<monitor::PerformanceMonitor>(
                   config.monitoring, config.target_generation_time_s, SteadyClock::instance());
               e->engine->set_monitor(e->monitor);
               e->monitor->start();
             }
             return e;
           }),
           py::arg("config"), py::arg("monitor") = false)
      .def(
          "add_reference_workflows",
          [](PyEngine& self, const std::string& models_dir, const std::vector<std::string>& names,
             bool judge) {
            AnyEngine& e = self.get();
            ref::ReferenceWorkflowOptions options;
            options.models_dir = models_dir;
            options.config = e.config();
            options.judge_outputs = judge;
            py::gil_scoped_release release;
            std::vector<std::string> wanted = names;
            for (auto& workflow : ref::make_reference_workflows(options)) {
              const auto it = std::find(wanted.begin(), wanted.end(), workflow->name());
              if (!names.empty() && it == wanted.end()) continue;
              if (it != wanted.end()) wanted.erase(it);
              e.add_workflow(std::move(workflow));
            }
            if (!wanted.empty()) {
              throw Error(ErrorCode::NotFound, "no reference workflow '" + wanted.front() + "'",
                          "workflows");
            }
          },
          py::arg("models_dir"), py::arg("names"), py::arg("judge") = true)
      .def(
          "add_workflow",
          [](PyEngine& self, py::object workflow) {
            AnyEngine& e = self.get();
            std::shared_ptr<engine::Workflow> adapted = python_workflow(std::move(workflow));
            py::gil_scoped_release release;
            e.add_workflow(std::move(adapted));
          },
          py::arg("workflow"))
      .def(
          "submit",
          [](PyEngine& self, const std::string& workflow, py::object on_progress,
             py::object on_result, const py::kwargs& fields) {
            AnyEngine& e = self.get();
            Request request = request_from(workflow, fields);
            engine::Callbacks callbacks;
            if (!on_progress.is_none()) {
              callbacks.on_progress = [progress = SharedObject(std::move(on_progress))](
                                          RequestId id, int step, int steps) {
                py::gil_scoped_acquire gil;
                try {
                  progress.get()(id, step, steps);
                } catch (py::error_already_set& error) {
                  error.discard_as_unraisable("apo: a progress callback");
                }
              };
            }
            callbacks.on_result = [done = SharedObject(std::move(on_result))](const Result& r) {
              py::gil_scoped_acquire gil;
              try {
                done.get()(std::make_shared<Result>(r));
              } catch (py::error_already_set& error) {
                error.discard_as_unraisable("apo: a result callback");
              }
            };
            py::gil_scoped_release release;
            return e.submit(std::move(request), std::move(callbacks)).id();
          },
          py::arg("workflow"), py::arg("on_progress"), py::arg("on_result"))
      .def(
          "cancel",
          [](PyEngine& self, RequestId id) {
            AnyEngine& e = self.get();
            py::gil_scoped_release release;
            return e.cancel(id);
          },
          py::arg("request_id"))
      .def(
          "close",
          [](PyEngine& self, bool cancel) {
            self.close(cancel ? engine::ShutdownMode::cancel : engine::ShutdownMode::drain);
          },
          py::arg("cancel") = false)
      .def_property_readonly("closed", [](const PyEngine& self) { return !self.engine; })
      .def("stats", [](const PyEngine& self) { return stats_dict(self.get().stats()); })
      .def_property_readonly("config", [](const PyEngine& self) { return self.get().config(); })
      .def_property_readonly("policies", [](const PyEngine& self) { return self.get().policies(); })
      .def_property_readonly("devices",
                             [](const PyEngine& self) {
                               std::vector<std::string> devices;
                               const AnyEngine& e = self.get();
                               for (std::size_t d = 0; d < e.device_count(); ++d) {
                                 devices.push_back(e.device(d).str());
                               }
                               return devices;
                             })
      .def(
          "memory",
          [](const PyEngine& self, std::size_t device) {
            const AnyEngine& e = self.get();
            if (device >= e.device_count()) {
              throw Error(ErrorCode::InvalidArgument,
                          "device index " + std::to_string(device) + " out of range (" +
                              std::to_string(e.device_count()) + " devices)",
                          "memory");
            }
            return ledger_dict(e.memory(device));
          },
          py::arg("device") = 0)
      .def(
          "monitor_report",
          [](const PyEngine& self) -> py::object {
            if (!self.monitor) return py::none();
            return py::module_::import("json").attr("loads")(
                monitor::to_json(self.monitor->report()));
          },
          "The performance monitor's report as a dict, or None without a monitor.")
      // The model cache.
      .def(
          "acquire_model",
          [](PyEngine& self, const std::string& path, const std::string& kind,
             const std::optional<std::string>& precision, const std::string& device,
             const py::object& loras) {
            AnyEngine& e = self.get();
            models::ModelRef ref;
            ref.path = path;
            ref.kind = enum_from<models::ModelKind>(kind, "kind");
            if (precision) ref.precision = enum_from<Precision>(*precision, "precision");
            std::vector<models::LoraRequest> lora_requests = loras_from(loras);
            const Device where = device_from(device);
            auto lease = std::make_unique<PyLease>();
            py::gil_scoped_release release;
            lease->lease = e.models().acquire(ref, where, std::move(lora_requests));
            return lease;
          },
          py::arg("path"), py::arg("kind") = "other", py::arg("precision") = py::none(),
          py::arg("device") = "cpu", py::arg("loras") = py::none(), py::keep_alive<0, 1>())
      .def("cache_stats",
           [](const PyEngine& self) { return cache_stats_dict(self.get().models().stats()); })
      .def("cache_residents",
           [](const PyEngine& self) {
             py::list out;
             for (const auto& r : self.get().models().residents()) {
               py::dict d;
               d["path"] = r.path;
               d["kind"] = std::string(to_string(r.kind));
               d["precision"] = std::string(to_string(r.precision));
               d["format"] = to_string(r.spec);
               d["device"] = r.device.str();
               d["host_tier"] = r.host_tier;
               d["scope"] = r.scope;
               d["bytes"] = r.bytes;
               d["leases"] = r.leases;
               d["loras"] = loras_list(r.loras);
               out.append(std::move(d));
             }
             return out;
           })
      .def("cache_release_unused", [](PyEngine& self) {
        AnyEngine& e = self.get();
        py::gil_scoped_release release;
        return e.models().release_unused();
      });

  m.def(
      "default_models_dir", [] { return ref::default_models_dir().string(); },
      "Where the reference models are: $APO_REFERENCE_MODELS, else the source tree's "
      "assets/reference.");
  m.def(
      "demo_requests",
      [](const std::string& models_dir, std::uint64_t seed, int per_workflow) {
        std::vector<ref::DemoRequest> trace;
        {
          py::gil_scoped_release release;
          trace = ref::demo_trace(models_dir, seed, per_workflow);
        }
        py::list out;
        for (const ref::DemoRequest& item : trace) {
          const Request& r = item.request;
          py::dict fields;
          fields["workflow"] = r.workflow;
          fields["prompt"] = r.prompt;
          if (!r.negative_prompt.empty()) fields["negative_prompt"] = r.negative_prompt;
          if (r.image.defined()) fields["image"] = to_python(r.image);
          if (r.mask.defined()) fields["mask"] = to_python(r.mask);
          if (r.first_frame.defined()) fields["first_frame"] = to_python(r.first_frame);
          fields["strength"] = r.strength;
          fields["width"] = r.width;
          fields["height"] = r.height;
          fields["frames"] = r.frames;
          fields["seed"] = r.seed;
          fields["quality"] = std::string(to_string(r.quality));
          out.append(py::make_tuple(item.label, fields));
        }
        return out;
      },
      py::arg("models_dir"), py::arg("seed") = 1, py::arg("per_workflow") = 1,
      "The demo's mixed trace of the reference workflows: [(label, submit fields)], captions and "
      "input pictures drawn from the reference world with `seed`.");
  m.attr("reference_workflow_names") = [] {
    std::vector<std::string> names;
    for (const auto name : ref::kWorkflowNames) names.emplace_back(name);
    return names;
  }();
}

}  // namespace apo::python
