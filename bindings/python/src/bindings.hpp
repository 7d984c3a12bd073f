#pragma once

// What the parts of apo._core share: the error mapping, tensors across DLPack, and Python objects
// that C++ threads may hold.

#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "apo/core/error.hpp"

namespace apo::engine {
class Workflow;
}  // namespace apo::engine

namespace apo::python {

namespace py = pybind11;

// Errors (errors.cpp). -------------------------------------------------------------------------

/// @brief Creates apo.Error and one subclass per ErrorCode (from its EnumTraits table) in `m`,
/// and registers the translator that turns C++ exceptions into them.
void bind_errors(py::module_& m);

/// @brief The Python class of an ErrorCode.
py::handle error_type(ErrorCode code);

/// @brief A new instance of the class of `code`, with .code, .context and .problems set.
py::object make_error(ErrorCode code, const std::string& message, const std::string& context,
                      py::object problems = py::list());

/// @brief Classifies the exception being handled (call inside a catch block) and sets it as the
/// Python error: the one mapping the C ABI uses too (apo::current_error_report).
void set_current_error();

/// @brief The apo::Error that a Python exception (being handled as error_already_set) stands
/// for when it crosses back into C++ (a Python workflow raised): an apo.Error keeps its code,
/// MemoryError and torch.OutOfMemoryError become OutOfMemory (so the engine splits the batch),
/// anything else Internal, with the Python type and message.
Error error_from_python(py::error_already_set& error);

// Tensors (tensors.cpp). -----------------------------------------------------------------------

/// @brief A torch.Tensor sharing `tensor`'s memory, through a versioned DLPack capsule.
py::object to_python(const at::Tensor& tensor);

/// @brief The at::Tensor sharing the memory of a Python object with __dlpack__ (a torch.Tensor,
/// a NumPy array, ...), through a versioned DLPack capsule. None gives an undefined tensor.
/// @throws apo::Error(InvalidArgument) naming `what` for an object that is not a tensor
at::Tensor from_python(py::handle object, const std::string& what);

void bind_tensors(py::module_& m);

// The engine (engine.cpp, workflow.cpp). -------------------------------------------------------

void bind_engine(py::module_& m);
void bind_workflows(py::module_& m);

/// @brief The engine::Workflow of a Python object with name, models(request),
/// memory_estimate(request), run(requests, context) and optionally check(request).
std::shared_ptr<engine::Workflow> python_workflow(py::object impl);

// Python objects held by C++ threads. ----------------------------------------------------------

/// @brief A Python object that a C++ thread may copy and drop without holding the GIL: the last
/// owner takes the GIL to let the object go. Held through shared_ptr (std::function copies it).
class SharedObject {
 public:
  explicit SharedObject(py::object object)
      : object_(new py::object(std::move(object)), [](py::object* held) {
          if (Py_IsInitialized() == 0) {
            // The interpreter is gone: the reference can no longer be dropped safely.
            static_cast<void>(held->release());
          } else {
            py::gil_scoped_acquire gil;
            held->release().dec_ref();
          }
          delete held;
        }) {}

  /// @brief The object; call with the GIL held.
  const py::object& get() const noexcept { return *object_; }
  explicit operator bool() const noexcept { return object_ && !object_->is_none(); }

 private:
  std::shared_ptr<py::object> object_;
};

}  // namespace apo::python
