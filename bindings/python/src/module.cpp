// apo._core: the pybind11 module behind the Python package apo.
//
// Arguments are converted to C++ first; the GIL is released only around pure C++ work.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include <ATen/DLConvertor.h>

#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/tune/presets.hpp"
#include "apo/version.hpp"

namespace py = pybind11;

namespace {

// Exception classes, created once at import. apo.ConfigError is both an apo.Error and a
// ValueError, so hosts that catch ValueError for bad input keep working.
struct ExceptionTypes {
  PyObject* error = nullptr;
  PyObject* config_error = nullptr;
  PyObject* invalid_argument = nullptr;
  PyObject* not_found = nullptr;
  PyObject* out_of_memory = nullptr;
};

ExceptionTypes& exception_types() {
  static ExceptionTypes types;
  return types;
}

PyObject* new_exception(py::module_& m, const char* name, PyObject* base, PyObject* builtin) {
  PyObject* bases = builtin ? PyTuple_Pack(2, base, builtin) : PyTuple_Pack(1, base);
  const std::string qualified = std::string("apo.") + name;
  PyObject* type = PyErr_NewException(qualified.c_str(), bases, nullptr);
  Py_DECREF(bases);
  if (type == nullptr) throw py::error_already_set();
  m.add_object(name, py::handle(type));
  return type;
}

PyObject* type_for(apo::ErrorCode code) {
  const ExceptionTypes& t = exception_types();
  switch (code) {
    case apo::ErrorCode::InvalidConfig:
      return t.config_error;
    case apo::ErrorCode::InvalidArgument:
      return t.invalid_argument;
    case apo::ErrorCode::NotFound:
      return t.not_found;
    case apo::ErrorCode::OutOfMemory:
      return t.out_of_memory;
    default:
      return t.error;
  }
}

void raise(const apo::Error& error, py::object problems) {
  PyObject* type = type_for(error.code());
  py::object instance = py::reinterpret_borrow<py::object>(type)(error.what());
  instance.attr("code") = std::string(apo::to_string(error.code()));
  instance.attr("context") = error.context();
  instance.attr("problems") = std::move(problems);
  PyErr_SetObject(type, instance.ptr());
}

void translate(std::exception_ptr pointer) {
  try {
    if (pointer) std::rethrow_exception(pointer);
  } catch (const apo::ConfigError& error) {
    py::list problems;
    for (const auto& p : error.problems()) {
      py::dict item;
      item["source"] = p.where.source;
      item["line"] = p.where.line;
      item["column"] = p.where.column;
      item["key"] = p.key_path;
      item["message"] = p.message;
      item["text"] = p.to_string();
      problems.append(std::move(item));
    }
    raise(error, std::move(problems));
  } catch (const apo::Error& error) {
    raise(error, py::list());
  }
}

// Tensors cross to Python as DLPack capsules ("dltensor"), which torch.from_dlpack takes without
// a copy; apo's module need not link libtorch_python.
py::capsule to_capsule(const at::Tensor& tensor) {
  DLManagedTensor* managed = at::toDLPack(tensor);
  return py::capsule(managed, "dltensor", [](PyObject* capsule) {
    // Only a capsule nobody consumed still owns its tensor (consumers rename it).
    if (PyCapsule_IsValid(capsule, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
      if (m != nullptr && m->deleter != nullptr) m->deleter(m);
    }
  });
}

at::Tensor from_capsule(const py::capsule& capsule) {
  if (std::string_view(capsule.name()) != "dltensor") {
    throw apo::Error(apo::ErrorCode::InvalidArgument,
                     "expected an unconsumed DLPack capsule (torch.utils.dlpack.to_dlpack)");
  }
  auto* managed = static_cast<DLManagedTensor*>(capsule.get_pointer());
  at::Tensor tensor = at::fromDLPack(managed);
  PyCapsule_SetName(capsule.ptr(), "used_dltensor");
  return tensor;
}

apo::Config load(apo::ConfigLoader& loader, const std::vector<std::string>& presets,
                 const std::vector<std::string>& overrides, bool check_machine) {
  for (const auto& preset : presets) loader.preset(preset);
  for (const auto& assignment : overrides) loader.set(assignment);
  py::gil_scoped_release release;
  apo::MachineInfo machine;
  if (check_machine) {
    machine = apo::probe_machine();
    loader.check_against(machine);
  }
  return loader.load().config;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "apo's compiled core; use the apo package";
  m.attr("__version__") = APO_VERSION_STRING;

  ExceptionTypes& t = exception_types();
  t.error = new_exception(m, "Error", PyExc_RuntimeError, nullptr);
  t.config_error = new_exception(m, "ConfigError", t.error, PyExc_ValueError);
  t.invalid_argument = new_exception(m, "InvalidArgumentError", t.error, PyExc_ValueError);
  t.not_found = new_exception(m, "NotFoundError", t.error, PyExc_LookupError);
  t.out_of_memory = new_exception(m, "OutOfMemoryError", t.error, PyExc_MemoryError);
  py::register_exception_translator(&translate);

  m.def(
      "probe_json",
      [](bool kernel_check) {
        py::gil_scoped_release release;
        return apo::to_json(apo::probe_machine({.run_kernel_check = kernel_check}));
      },
      py::arg("kernel_check") = false, "This machine as JSON (see apo.probe).");

  m.def(
      "safetensors_load",
      [](const std::string& path, bool copy) {
        std::vector<std::pair<std::string, at::Tensor>> tensors;
        std::map<std::string, std::string> metadata;
        {
          py::gil_scoped_release release;
          const auto file = apo::models::SafetensorsFile::open(path);
          for (const auto& entry : file.tensors()) {
            tensors.emplace_back(entry.name, copy ? file.copy(entry.name) : file.view(entry.name));
          }
          metadata = file.metadata();
        }
        py::list named;
        for (const auto& [name, tensor] : tensors) {
          named.append(py::make_tuple(name, to_capsule(tensor)));
        }
        return py::make_tuple(named, metadata);
      },
      py::arg("path"), py::arg("copy") = false,
      "([(name, DLPack capsule)], metadata) of a safetensors file (see apo.models.load_file).");

  m.def(
      "safetensors_save",
      [](const std::string& path, const std::vector<std::pair<std::string, py::capsule>>& named,
         const std::map<std::string, std::string>& metadata) {
        std::vector<apo::models::NamedTensor> tensors;
        for (const auto& [name, capsule] : named) tensors.push_back({name, from_capsule(capsule)});
        py::gil_scoped_release release;
        apo::models::save_safetensors(path, tensors, metadata);
      },
      py::arg("path"), py::arg("tensors"), py::arg("metadata"),
      "Write [(name, DLPack capsule)] and metadata as a safetensors file.");

  py::class_<apo::Config>(m, "Config", R"doc(
An apo configuration: the guide's blocks, typed and validated.

Load one with Config.load(path) or Config.from_json(text); both apply presets first and
overrides ("key.path=value") last, over the built-in defaults.)doc")
      .def(py::init<>(), "The built-in defaults.")
      .def_static(
          "load",
          [](const std::string& path, const std::vector<std::string>& presets,
             const std::vector<std::string>& overrides, bool check_machine) {
            apo::ConfigLoader loader = apo::tune::config_loader();
            loader.file(path);
            return load(loader, presets, overrides, check_machine);
          },
          py::arg("path"), py::kw_only(), py::arg("presets") = std::vector<std::string>{},
          py::arg("overrides") = std::vector<std::string>{}, py::arg("check_machine") = false,
          "Load a JSON file (comments allowed). Raises ConfigError listing every problem.")
      .def_static(
          "from_json",
          [](const std::string& text, const std::string& source,
             const std::vector<std::string>& presets, const std::vector<std::string>& overrides,
             bool check_machine) {
            apo::ConfigLoader loader = apo::tune::config_loader();
            loader.text(text, source);
            return load(loader, presets, overrides, check_machine);
          },
          py::arg("text"), py::arg("source") = "<string>", py::kw_only(),
          py::arg("presets") = std::vector<std::string>{},
          py::arg("overrides") = std::vector<std::string>{}, py::arg("check_machine") = false,
          "Load JSON text; `source` names it in messages.")
      .def(
          "to_json", [](const apo::Config& c, int indent) { return apo::to_json(c, indent); },
          py::arg("indent") = 4, "Canonical JSON; Config.from_json of it gives an equal Config.")
      .def(
          "to_dict",
          [](const apo::Config& c) {
            return py::module_::import("json").attr("loads")(apo::to_json(c));
          },
          "The configuration as a dict of blocks.")
      .def("__eq__", [](const apo::Config& a, const apo::Config& b) { return a == b; })
      .def("__repr__", [](const apo::Config& c) {
        return "<apo.Config profile=" + c.profile_name +
               " precision=" + std::string(apo::to_string(c.performance.model_precision)) +
               " batch_size=" + std::to_string(c.performance.batch_size) + ">";
      });
}
