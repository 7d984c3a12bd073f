// Tensors across the boundary (versioned DLPack, no copy), safetensors files, and quantized
// tensors (apo.QTensor, apo.quantize, apo.dequantize).

#include <pybind11/stl.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/DLConvertor.h>

#include "apo/models/safetensors.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/qtensor.hpp"
#include "bindings.hpp"

namespace apo::python {

namespace {

constexpr const char* kCapsule = "dltensor_versioned";
constexpr const char* kUsedCapsule = "used_dltensor_versioned";

// The dtypes a QTensor comes from and dequantizes to, with their torch names.
constexpr std::array<std::pair<at::ScalarType, const char*>, 3> kFloatDtypes{{
    {at::kFloat, "float32"},
    {at::kHalf, "float16"},
    {at::kBFloat16, "bfloat16"},
}};

py::object dtype_to_python(at::ScalarType dtype) {
  for (const auto& [type, name] : kFloatDtypes) {
    if (type == dtype) return py::module_::import("torch").attr(name);
  }
  throw Error(ErrorCode::Unsupported,
              std::string("dtype ") + c10::toString(dtype) + " has no float equivalent in torch");
}

std::optional<at::ScalarType> dtype_from_python(py::handle dtype) {
  if (dtype.is_none()) return std::nullopt;
  const py::object torch = py::module_::import("torch");
  for (const auto& [type, name] : kFloatDtypes) {
    if (dtype.equal(torch.attr(name))) return type;
  }
  throw Error(ErrorCode::InvalidArgument,
              "dtype " + std::string(py::str(dtype)) +
                  " is not one apo dequantizes to; expected torch.float32, float16 or bfloat16",
              "dtype");
}

quant::QuantSpec spec_from(const std::string& format, const std::optional<std::string>& scaling) {
  const auto parsed = parse_enum<quant::QFormat>(format);
  if (!parsed) {
    throw Error(
        ErrorCode::InvalidArgument,
        "unknown format '" + format + "'; expected none, fp16, bf16, fp8_e4m3, fp8_e5m2 or int8",
        "format");
  }
  if (!scaling) {
    return {*parsed,
            quant::traits(*parsed).scaled ? quant::Scaling::per_row : quant::Scaling::none};
  }
  const auto parsed_scaling = parse_enum<quant::Scaling>(*scaling);
  if (!parsed_scaling) {
    throw Error(ErrorCode::InvalidArgument,
                "unknown scaling '" + *scaling + "'; expected none, per_tensor or per_row",
                "scaling");
  }
  return {*parsed, *parsed_scaling};
}

py::dict entry_dict(const models::TensorEntry& entry, std::int64_t data_offset) {
  py::dict item;
  item["dtype"] = std::string(models::to_string(entry.dtype));
  item["shape"] = entry.shape;
  item["bytes"] = entry.bytes();
  item["offset"] = data_offset + entry.data_begin;  // in the file
  return item;
}

}  // namespace

py::object to_python(const at::Tensor& tensor) {
  if (!tensor.defined()) return py::none();
  DLManagedTensorVersioned* managed = at::toDLPackVersioned(tensor);
  py::capsule capsule(managed, kCapsule, [](PyObject* object) {
    // Only a capsule nobody consumed still owns its tensor (consumers rename it).
    if (PyCapsule_IsValid(object, kCapsule) != 0) {
      auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(object, kCapsule));
      if (m != nullptr && m->deleter != nullptr) m->deleter(m);
    }
  });
  return py::module_::import("torch").attr("from_dlpack")(capsule);
}

at::Tensor from_python(py::handle object, const std::string& what) {
  if (object.is_none()) return {};
  if (!py::hasattr(object, "__dlpack__")) {
    throw Error(ErrorCode::InvalidArgument,
                "expected a tensor (an object with __dlpack__), got " +
                    std::string(py::str(py::type::of(object).attr("__name__"))),
                what);
  }
  py::object capsule = object.attr("__dlpack__")(py::arg("max_version") = py::make_tuple(1, 0));
  if (PyCapsule_IsValid(capsule.ptr(), kCapsule) == 0) {
    throw Error(ErrorCode::InvalidArgument,
                "the tensor's __dlpack__ gave no versioned capsule (DLPack 1.0 needed)", what);
  }
  auto* managed =
      static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(capsule.ptr(), kCapsule));
  at::Tensor tensor = at::fromDLPackVersioned(managed);
  // The tensor owns `managed` now: the capsule must not free it.
  PyCapsule_SetName(capsule.ptr(), kUsedCapsule);
  return tensor;
}

void bind_tensors(py::module_& m) {
  m.def(
      "safetensors_load",
      [](const std::string& path, bool copy) {
        std::vector<std::pair<std::string, at::Tensor>> tensors;
        std::map<std::string, std::string> metadata;
        {
          py::gil_scoped_release release;
          const auto file = models::SafetensorsFile::open(path);
          for (const auto& entry : file.tensors()) {
            tensors.emplace_back(entry.name, copy ? file.copy(entry.name) : file.view(entry.name));
          }
          metadata = file.metadata();
        }
        py::dict named;
        for (const auto& [name, tensor] : tensors) named[py::str(name)] = to_python(tensor);
        return py::make_tuple(named, metadata);
      },
      py::arg("path"), py::arg("copy") = false,
      "({name: tensor}, metadata) of a safetensors file (see apo.models.load_file).");

  m.def(
      "safetensors_header",
      [](const std::string& path) {
        models::SafetensorsHeader header;
        {
          // Maps the file and parses its header; the data section is never touched (a
          // compressed file is decompressed whole, as its header is inside the stream).
          py::gil_scoped_release release;
          header = models::SafetensorsFile::open(path).header();
        }
        py::dict tensors;
        for (const auto& entry : header.tensors) {
          tensors[py::str(entry.name)] = entry_dict(entry, header.data_offset());
        }
        return py::make_tuple(tensors, header.metadata);
      },
      py::arg("path"),
      "({name: {dtype, shape, bytes, offset}}, metadata) from a safetensors file's header only.");

  m.def(
      "safetensors_save",
      [](const std::string& path, const py::dict& named,
         const std::map<std::string, std::string>& metadata) {
        std::vector<models::NamedTensor> tensors;
        for (const auto& [name, tensor] : named) {
          const std::string key = py::str(name);
          tensors.push_back({key, from_python(tensor, key)});
        }
        py::gil_scoped_release release;
        models::save_safetensors(path, tensors, metadata);
      },
      py::arg("path"), py::arg("tensors"), py::arg("metadata"),
      "Write {name: tensor} and metadata as a safetensors file.");

  py::class_<quant::QTensor>(m, "QTensor", R"doc(
A quantized tensor: codes (`data`, the original shape) and float32 `scales` ([rows] per row, [1]
per tensor, None for unscaled formats). Element i decodes as code(i) * scale(row of i).)doc")
      .def(py::init([](py::handle data, py::handle scales, const std::string& format,
                       const std::optional<std::string>& scaling, py::handle original_dtype,
                       const std::string& name) {
             const quant::QuantSpec spec = spec_from(format, scaling);
             const std::optional<at::ScalarType> original = dtype_from_python(original_dtype);
             at::Tensor d = from_python(data, name);
             at::Tensor s = from_python(scales, name + ".scales");
             const quant::Scaling chosen =
                 scaling                              ? spec.scaling
                 : !quant::traits(spec.format).scaled ? quant::Scaling::none
                 : s.defined() && s.numel() == 1      ? quant::Scaling::per_tensor
                                                      : quant::Scaling::per_row;
             return quant::QTensor::from_parts(name, std::move(d), std::move(s), spec.format,
                                               chosen, original.value_or(at::kFloat));
           }),
           py::arg("data"), py::arg("scales"), py::arg("format"), py::kw_only(),
           py::arg("scaling") = py::none(), py::arg("original_dtype") = py::none(),
           py::arg("name") = "tensor",
           "From its parts, checked (shares their memory). `scaling` defaults to per_tensor for "
           "one scale, per_row otherwise; `original_dtype` to torch.float32.")
      .def_property_readonly(
          "data", [](const quant::QTensor& q) { return to_python(q.data()); },
          "The codes (shares memory).")
      .def_property_readonly(
          "scales", [](const quant::QTensor& q) { return to_python(q.scales()); },
          "float32 scales, or None for unscaled formats (shares memory).")
      .def_property_readonly(
          "format", [](const quant::QTensor& q) { return std::string(to_string(q.format())); })
      .def_property_readonly(
          "scaling", [](const quant::QTensor& q) { return std::string(to_string(q.scaling())); })
      .def_property_readonly(
          "original_dtype",
          [](const quant::QTensor& q) { return dtype_to_python(q.original_dtype()); })
      .def_property_readonly("name", &quant::QTensor::name)
      .def_property_readonly(
          "shape", [](const quant::QTensor& q) { return py::tuple(py::cast(q.shape().vec())); })
      .def_property_readonly("nbytes", &quant::QTensor::bytes, "Bytes held: data and scales.")
      .def_property_readonly("original_nbytes", &quant::QTensor::original_bytes,
                             "Bytes of the tensor in its original dtype.")
      .def(
          "dequantize",
          [](const quant::QTensor& q, py::handle dtype) {
            const std::optional<at::ScalarType> to = dtype_from_python(dtype);
            at::Tensor out;
            {
              py::gil_scoped_release release;
              out = q.dequantize(to);
            }
            return to_python(out);
          },
          py::arg("dtype") = py::none(), "The tensor back in `dtype` (default: the original).")
      .def("__repr__", [](const quant::QTensor& q) {
        std::string shape;
        for (const std::int64_t size : q.shape())
          shape += (shape.empty() ? "" : ", ") + std::to_string(size);
        return "<apo.QTensor " + q.name() + " [" + shape + "] " + to_string(q.spec()) + ">";
      });

  m.def(
      "quantize",
      [](py::handle tensor, const std::string& format, const std::optional<std::string>& scaling,
         const std::string& name) {
        const at::Tensor x = from_python(tensor, name);
        const quant::QuantSpec spec = spec_from(format, scaling);
        py::gil_scoped_release release;
        return quant::quantize(x, spec, name);
      },
      py::arg("tensor"), py::arg("format"), py::kw_only(), py::arg("scaling") = py::none(),
      py::arg("name") = "tensor",
      "Quantizes a float32/float16/bfloat16 tensor to `format` (none, fp16, bf16, fp8_e4m3, "
      "fp8_e5m2, int8); `scaling` (per_row by default for fp8 and int8, or per_tensor).");
}

}  // namespace apo::python
