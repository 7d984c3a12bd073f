// apo._core: the pybind11 module behind the Python package apo. This file holds the module,
// the configuration and the machine probe; errors.cpp, tensors.cpp, engine.cpp and workflow.cpp
// the rest.
//
// Arguments are converted to C++ first; the GIL is released only around pure C++ work.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/tune/presets.hpp"
#include "apo/version.hpp"
#include "bindings.hpp"

namespace py = pybind11;

namespace {

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

  apo::python::bind_errors(m);
  apo::python::bind_tensors(m);

  m.def(
      "probe_json",
      [](bool kernel_check) {
        py::gil_scoped_release release;
        return apo::to_json(apo::probe_machine({.run_kernel_check = kernel_check}));
      },
      py::arg("kernel_check") = false, "This machine as JSON (see apo.probe).");

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

  apo::python::bind_workflows(m);
  apo::python::bind_engine(m);
}
