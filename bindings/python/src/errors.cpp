// apo's errors in Python: apo.Error and one subclass per ErrorCode, made from the code table, and
// the one exception mapping (apo::current_error_report) that the C ABI uses too.

#include <array>
#include <string>
#include <vector>

#include "apo/core/config.hpp"
#include "apo/core/current_error.hpp"
#include "bindings.hpp"

namespace apo::python {

namespace {

constexpr std::size_t kCodes = EnumTraits<ErrorCode>::entries.size();

// The classes, by code; index 0 is apo.Error itself.
std::array<PyObject*, kCodes + 1>& error_types() {
  static std::array<PyObject*, kCodes + 1> types{};
  return types;
}

std::size_t index_of(ErrorCode code) {
  for (std::size_t i = 0; i < kCodes; ++i) {
    if (EnumTraits<ErrorCode>::entries[i].value == code) return i + 1;
  }
  return 0;
}

// The Python class name of a code: "NotFound" → NotFoundError; configuration errors keep their
// established name, ConfigError.
std::string class_name(ErrorCode code) {
  if (code == ErrorCode::InvalidConfig) return "ConfigError";
  return std::string(to_string(code)) + "Error";
}

// The built-in exceptions a code's class also derives from, so that hosts catching the usual
// Python classes keep working (a switch without default: a new code must choose).
std::vector<py::object> builtin_bases(ErrorCode code) {
  const auto builtin = [](PyObject* type) { return py::reinterpret_borrow<py::object>(type); };
  switch (code) {
    case ErrorCode::InvalidArgument:
    case ErrorCode::InvalidConfig:
      return {builtin(PyExc_ValueError)};
    case ErrorCode::NotFound:
      // Unknown workflows and ids are lookups; missing model files are files not found.
      return {builtin(PyExc_LookupError), builtin(PyExc_FileNotFoundError)};
    case ErrorCode::Io:
      return {builtin(PyExc_OSError)};
    case ErrorCode::OutOfMemory:
      // torch.OutOfMemoryError too, so that hosts' existing out-of-memory handling (ComfyUI's
      // model management) sees apo's.
      return {builtin(PyExc_MemoryError), py::module_::import("torch").attr("OutOfMemoryError")};
    case ErrorCode::TimedOut:
      return {builtin(PyExc_TimeoutError)};
    case ErrorCode::Corrupt:
    case ErrorCode::Unsupported:
    case ErrorCode::Cancelled:
    case ErrorCode::Rejected:
    case ErrorCode::Internal:
    case ErrorCode::WorkflowFailed:
      return {};
  }
  return {};
}

PyObject* new_exception(py::module_& m, const std::string& name, const py::tuple& bases,
                        const char* doc) {
  const std::string qualified = "apo." + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases.ptr(), nullptr);
  if (type == nullptr) throw py::error_already_set();
  m.add_object(name.c_str(), py::handle(type));
  return type;
}

py::list problems_of(const ConfigError& error) {
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
  return problems;
}

void translate(std::exception_ptr pointer) {
  try {
    if (pointer) std::rethrow_exception(pointer);
  } catch (const py::error_already_set&) {
    throw;  // a Python error already: pybind11 restores it
  } catch (const py::builtin_exception&) {
    throw;  // pybind11's own (cast errors, stop_iteration): pybind11 maps them
  } catch (...) {
    set_current_error();
  }
}

}  // namespace

py::handle error_type(ErrorCode code) {
  return error_types()[index_of(code)];
}

py::object make_error(ErrorCode code, const std::string& message, const std::string& context,
                      py::object problems) {
  py::object instance = error_type(code)(message);
  instance.attr("code") = std::string(to_string(code));
  instance.attr("context") = context;
  instance.attr("problems") = std::move(problems);
  return instance;
}

void set_current_error() {
  // The code and message come from the one mapping; apo's own errors add where they happened
  // (and a configuration error its problems).
  const ErrorReport report = current_error_report();
  std::string context;
  py::object problems = py::list();
  try {
    throw;
  } catch (const ConfigError& error) {
    context = error.context();
    problems = problems_of(error);
  } catch (const Error& error) {
    context = error.context();
  } catch (...) {
  }
  const py::object instance = make_error(report.code, report.message, context, problems);
  PyErr_SetObject(error_type(report.code).ptr(), instance.ptr());
}

Error error_from_python(py::error_already_set& error) {
  py::gil_scoped_acquire gil;
  const std::string text = py::str(error.value());
  if (error.matches(error_types()[0])) {
    const std::string code_name = py::str(error.value().attr("code"));
    const std::string context = py::hasattr(error.value(), "context")
                                    ? std::string(py::str(error.value().attr("context")))
                                    : std::string();
    return Error(parse_enum<ErrorCode>(code_name).value_or(ErrorCode::Internal), text, context);
  }
  const std::string type = py::str(error.type().attr("__name__"));
  const py::object torch_oom = py::module_::import("torch").attr("OutOfMemoryError");
  if (error.matches(PyExc_MemoryError) || error.matches(torch_oom)) {
    return Error(ErrorCode::OutOfMemory, type + ": " + text, "python");
  }
  return Error(ErrorCode::Internal, type + ": " + text, "python");
}

void bind_errors(py::module_& m) {
  auto& types = error_types();
  types[0] = new_exception(m, "Error", py::make_tuple(py::handle(PyExc_RuntimeError)),
                           "An apo failure. .code names its ErrorCode (\"NotFound\"), .context "
                           "where it happened (a file, a tensor, a request), .problems (for "
                           "ConfigError) every configuration problem found.");
  for (std::size_t i = 0; i < kCodes; ++i) {
    const ErrorCode code = EnumTraits<ErrorCode>::entries[i].value;
    py::list bases;
    bases.append(py::handle(types[0]));
    for (py::object& base : builtin_bases(code)) bases.append(std::move(base));
    const std::string doc = "apo.Error with code " + std::string(to_string(code)) + ".";
    types[i + 1] = new_exception(m, class_name(code), py::tuple(bases), doc.c_str());
    // Defaults for instances raised from Python (apo's own set their attributes).
    py::handle(types[i + 1]).attr("code") = std::string(to_string(code));
  }
  py::handle(types[0]).attr("code") = py::none();
  py::handle(types[0]).attr("context") = "";
  py::handle(types[0]).attr("problems") = py::tuple();
  // The code names, in the table's order, with their C ABI values.
  py::dict codes;
  for (const auto& entry : EnumTraits<ErrorCode>::entries) {
    codes[py::str(std::string(entry.name))] = static_cast<int>(entry.value);
  }
  m.attr("error_codes") = codes;
  m.def(
      "error_class",
      [](const std::string& code) {
        const auto parsed = parse_enum<ErrorCode>(code);
        if (!parsed) {
          throw Error(ErrorCode::InvalidArgument, "unknown error code '" + code + "'",
                      "apo.error_class");
        }
        return error_type(*parsed);
      },
      py::arg("code"), "The exception class of an error code name (\"OutOfMemory\").");
  py::register_exception_translator(&translate);
}

}  // namespace apo::python
