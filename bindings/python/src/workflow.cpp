// Workflows written in Python: an object with name, models(request), memory_estimate(request)
// and run(requests, context) (check(request) optional) becomes an engine::Workflow. The engine
// calls it from its threads; each call takes the GIL.

#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apo/engine/workflow.hpp"
#include "bindings.hpp"

namespace apo::python {

namespace {

// The context of one run, usable from Python only while the run lasts.
struct PyContext {
  engine::Context* context = nullptr;

  engine::Context& get() const {
    if (context == nullptr) {
      throw Error(ErrorCode::InvalidArgument, "the run this context belonged to has ended",
                  "apo.Context");
    }
    return *context;
  }
};

// Calls a Python method, turning a Python exception into the apo::Error it stands for.
template <class... Args>
py::object call(const py::object& object, const char* method, Args&&... args) {
  try {
    return object.attr(method)(std::forward<Args>(args)...);
  } catch (py::error_already_set& error) {
    throw error_from_python(error);
  }
}

engine::ModelNeed need_from(const py::handle& item, const std::string& workflow) {
  engine::ModelNeed need;
  need.ref.workflow = workflow;
  const py::dict d = py::reinterpret_borrow<py::dict>(item);
  need.role = d["role"].cast<std::string>();
  need.ref.path = py::str(d["path"]).cast<std::string>();
  if (d.contains("kind")) {
    const std::string kind = d["kind"].cast<std::string>();
    const auto parsed = parse_enum<models::ModelKind>(kind);
    if (!parsed) {
      throw Error(ErrorCode::InvalidArgument, "unknown model kind '" + kind + "'",
                  workflow + ".models");
    }
    need.ref.kind = *parsed;
  }
  if (d.contains("precision") && !d["precision"].is_none()) {
    const std::string precision = d["precision"].cast<std::string>();
    const auto parsed = parse_enum<Precision>(precision);
    if (!parsed) {
      throw Error(ErrorCode::InvalidArgument, "unknown precision '" + precision + "'",
                  workflow + ".models");
    }
    need.ref.precision = *parsed;
  }
  if (d.contains("takes_loras")) need.takes_loras = d["takes_loras"].cast<bool>();
  return need;
}

class PythonWorkflow final : public engine::Workflow {
 public:
  explicit PythonWorkflow(py::object impl)
      : name_(py::str(impl.attr("name")).cast<std::string>()),
        has_check_(py::hasattr(impl, "check")),
        impl_(std::move(impl)) {
    if (name_.empty()) {
      throw Error(ErrorCode::InvalidArgument, "a workflow needs a non-empty name", "workflow");
    }
  }

  std::string name() const override { return name_; }

  std::vector<engine::ModelNeed> models(const Request& request) const override {
    py::gil_scoped_acquire gil;
    std::vector<engine::ModelNeed> needs;
    const py::object listed = call(impl_.get(), "models", request);
    try {
      for (const py::handle item : listed) needs.push_back(need_from(item, name_));
    } catch (py::error_already_set& error) {
      throw error_from_python(error);
    } catch (const py::cast_error& error) {
      throw Error(ErrorCode::InvalidArgument,
                  std::string("models() must give dicts {role, path[, kind, precision, "
                              "takes_loras]}: ") +
                      error.what(),
                  name_);
    }
    return needs;
  }

  std::int64_t memory_estimate(const Request& request) const override {
    py::gil_scoped_acquire gil;
    return call(impl_.get(), "memory_estimate", request).cast<std::int64_t>();
  }

  void check(const Request& request) const override {
    if (!has_check_) return;
    py::gil_scoped_acquire gil;
    call(impl_.get(), "check", request);
  }

  std::vector<engine::Outputs> run(std::span<const Request> batch,
                                   engine::Context& context) override {
    py::gil_scoped_acquire gil;
    py::list requests;
    for (const Request& r : batch) requests.append(py::cast(r));
    auto holder = std::make_shared<PyContext>(PyContext{&context});
    py::object returned;
    try {
      returned = call(impl_.get(), "run", requests, py::cast(holder));
    } catch (...) {
      holder->context = nullptr;
      throw;
    }
    holder->context = nullptr;
    std::vector<engine::Outputs> outputs;
    try {
      for (const py::handle item : returned) {
        engine::Outputs out;
        for (const auto& [name, tensor] : py::reinterpret_borrow<py::dict>(item)) {
          const std::string key = py::str(name);
          out[key] = from_python(tensor, name_ + " output " + key).cpu();
        }
        outputs.push_back(std::move(out));
      }
    } catch (py::error_already_set& error) {
      throw error_from_python(error);
    }
    if (outputs.size() != batch.size()) {
      throw Error(ErrorCode::Internal,
                  "run() gave " + std::to_string(outputs.size()) + " outputs for " +
                      std::to_string(batch.size()) + " requests",
                  name_);
    }
    return outputs;
  }

 private:
  std::string name_;
  bool has_check_;
  SharedObject impl_;
};

}  // namespace

std::shared_ptr<engine::Workflow> python_workflow(py::object impl) {
  return std::make_shared<PythonWorkflow>(std::move(impl));
}

void bind_workflows(py::module_& m) {
  py::class_<Request>(m, "Request", "A request as a Python workflow sees it (read-only).")
      .def_readonly("id", &Request::id)
      .def_readonly("workflow", &Request::workflow)
      .def_readonly("prompt", &Request::prompt)
      .def_readonly("negative_prompt", &Request::negative_prompt)
      .def_property_readonly("image", [](const Request& r) { return to_python(r.image); })
      .def_property_readonly("mask", [](const Request& r) { return to_python(r.mask); })
      .def_property_readonly("first_frame",
                             [](const Request& r) { return to_python(r.first_frame); })
      .def_readonly("strength", &Request::strength)
      .def_readonly("model", &Request::model)
      .def_readonly("width", &Request::width)
      .def_readonly("height", &Request::height)
      .def_readonly("frames", &Request::frames)
      .def_readonly("steps", &Request::steps)
      .def_readonly("guidance", &Request::guidance)
      .def_property_readonly("sampler",
                             [](const Request& r) -> std::optional<std::string> {
                               if (!r.sampler) return std::nullopt;
                               return std::string(to_string(*r.sampler));
                             })
      .def_property_readonly("quality",
                             [](const Request& r) { return std::string(to_string(r.quality)); })
      .def_readonly("priority", &Request::priority)
      .def_readonly("seed", &Request::seed)
      .def_property_readonly("loras", [](const Request& r) {
        py::list out;
        for (const auto& l : r.loras) out.append(py::make_tuple(l.path.string(), l.strength));
        return out;
      });

  py::class_<PyContext, std::shared_ptr<PyContext>>(m, "Context", R"doc(
What a Python workflow's run() may use of the engine, valid while run() lasts: the device, the
models it listed (weights by role), progress and cancellation (step), quality scores.)doc")
      .def_property_readonly("device", [](const PyContext& c) { return c.get().device().str(); })
      .def(
          "step",
          [](const PyContext& c, int step, int steps) {
            engine::Context& context = c.get();
            // Progress callbacks take the GIL on this thread.
            py::gil_scoped_release release;
            context.step(step, steps);
          },
          py::arg("step"), py::arg("steps"),
          "Reports progress; raises apo.CancelledError when every request of the batch was "
          "cancelled (call it at least once per sampling step).")
      .def(
          "cancelled",
          [](const PyContext& c, std::size_t index) { return c.get().cancelled(index); },
          py::arg("index"), "Whether request `index` of the batch was cancelled while running.")
      .def(
          "weights",
          [](const PyContext& c, const std::string& role) {
            py::dict weights;
            for (const auto& w : c.get().model(role).weights()) {
              weights[py::str(w.name())] = py::cast(w);
            }
            return weights;
          },
          py::arg("role"), "{name: apo.QTensor} of the model listed under `role`.")
      .def(
          "dense",
          [](const PyContext& c, const std::string& role, const std::string& name) {
            return to_python(c.get().model(role).dense(name));
          },
          py::arg("role"), py::arg("name"),
          "One weight of the model under `role`, dequantized to its original dtype.")
      .def(
          "set_quality",
          [](const PyContext& c, std::size_t index, double score) {
            c.get().set_quality(index, score);
          },
          py::arg("index"), py::arg("score"), "Scores request `index`'s output in [0, 1].");
}

}  // namespace apo::python
