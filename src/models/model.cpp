// Model: named QTensors on a device, and reading/writing model files (quantized ones too).

#include "apo/models/model.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "../core/cuda_context.hpp"
#include "apo/core/error.hpp"
#include "apo/memory/torch_allocator.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/quant/kernels.hpp"

namespace apo::models {

Model::Model(std::string path, ModelKind kind, Precision precision,
             std::vector<quant::QTensor> weights)
    : path_(std::move(path)), kind_(kind), precision_(precision), weights_(std::move(weights)) {
  index();
}

void Model::index() {
  index_.clear();
  bytes_ = 0;
  original_bytes_ = 0;
  spec_ = {};
  device_ = Device::cpu();
  if (!weights_.empty()) {
    const auto device = Device::from_torch(weights_.front().device());
    if (!device) {
      fail(ErrorCode::Unsupported, "model {} lives on {}, a device apo does not run on", path_,
           weights_.front().device().str());
    }
    device_ = *device;
  }
  for (std::size_t i = 0; i < weights_.size(); ++i) {
    const quant::QTensor& w = weights_[i];
    if (!index_.emplace(w.name(), i).second) {
      fail(ErrorCode::InvalidArgument, "model {} has two weights named '{}'", path_, w.name());
    }
    bytes_ += w.bytes();
    original_bytes_ += w.original_bytes();
    if (w.format() != quant::QFormat::none) spec_ = w.spec();
  }
}

const quant::QTensor* Model::find(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &weights_[it->second];
}

const quant::QTensor& Model::weight(std::string_view name) const {
  const quant::QTensor* w = find(name);
  if (w == nullptr)
    throw Error(ErrorCode::NotFound, fmt::format("no weight named '{}'", name), path_);
  return *w;
}

quant::QTensor& Model::mutable_weight(std::string_view name) {
  return const_cast<quant::QTensor&>(weight(name));
}

at::Tensor Model::dense(std::string_view name, std::optional<at::ScalarType> dtype) const {
  return weight(name).dequantize(dtype);
}

Model Model::to(Device device, const memory::AnyResource* host_memory) const {
  // Copies between pinned host memory and a device run asynchronously on torch's current stream
  // of that device; one wait at the end (not one per tensor) makes the copy complete before it is
  // returned, so the source may go and host code may read the result.
  std::optional<int> queued_on;
  auto copy = [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined()) return t;
    if (device.is_cpu() && host_memory != nullptr) {
      at::Tensor out = memory::empty_from(*host_memory, t.sizes(), t.scalar_type());
      const bool async =
          t.is_cuda() && host_memory->space().kind == memory::MemoryKind::pinned_host;
      out.copy_(t, /*non_blocking=*/async);
      if (async) queued_on = t.device().index();
      return out;
    }
    const bool async = device.is_cuda() && t.is_cpu() && t.is_pinned();
    if (async) queued_on = device.index;
    return t.to(device.to_torch(), /*non_blocking=*/async, /*copy=*/true);
  };
  std::vector<quant::QTensor> moved;
  moved.reserve(weights_.size());
  for (const quant::QTensor& w : weights_) {
    moved.push_back(quant::QTensor::from_parts(w.name(), copy(w.data()), copy(w.scales()),
                                               w.format(), w.scaling(), w.original_dtype()));
  }
  if (queued_on) apo::detail::synchronize_torch_cuda_stream(*queued_on, path_);
  return Model(path_, kind_, precision_, std::move(moved));
}

namespace {

constexpr std::string_view kScaleSuffix = ".scale";

}  // namespace

bool is_quantized_file(const SafetensorsHeader& header) {
  return header.metadata.count(std::string(kQuantizationMetadataKey)) != 0;
}

std::vector<quant::QTensor> read_model_weights(const std::filesystem::path& path,
                                               const quant::QuantizationRules& rules,
                                               std::int64_t prefetch_bytes) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  // Tensors are read in data order: ask for the next window while the current one is copied.
  auto read_ahead = [&](const TensorEntry& entry) {
    file.prefetch(entry.data_end, prefetch_bytes);
  };
  const auto meta = file.metadata().find(std::string(kQuantizationMetadataKey));
  if (meta == file.metadata().end()) {
    quant::NamedTensors tensors;
    tensors.reserve(file.tensors().size());
    for (const auto& entry : file.tensors())
      tensors.emplace_back(entry.name, file.view(entry.name));
    if (rules.spec.format == quant::QFormat::none) {
      std::vector<quant::QTensor> kept;
      for (std::size_t i = 0; i < tensors.size(); ++i) {
        read_ahead(file.tensors()[i]);
        // Views of the mapping would tie the model to the file: own the memory.
        const at::Tensor& tensor = tensors[i].second;
        kept.push_back(quant::QTensor::from_parts(tensors[i].first, tensor.clone(), {},
                                                  quant::QFormat::none, quant::Scaling::none,
                                                  tensor.scalar_type()));
      }
      return kept;
    }
    file.prefetch(0, prefetch_bytes);
    quant::QuantizationRules measured = rules;
    measured.measure_error = false;  // loading: no report wanted, no extra dequantize
    auto quantized = quant::quantize_state_dict(tensors, measured);
    for (std::size_t i = 0; i < quantized.tensors.size(); ++i) {
      // A weight kept as it is, or already in the dtype asked for (bf16 to bf16), still views
      // the mapping: own the memory, as above.
      quant::QTensor& w = quantized.tensors[i];
      if (w.data().is_alias_of(tensors[i].second)) {
        w = quant::QTensor::from_parts(w.name(), w.data().clone(), w.scales(), w.format(),
                                       w.scaling(), w.original_dtype());
      }
    }
    return std::move(quantized.tensors);
  }

  // A file apo quantized: {"format", "scaling", "tensors": {name: original dtype}}.
  auto corrupt = [&](const std::string& what) {
    throw Error(ErrorCode::Corrupt, fmt::format("{}: {}", kQuantizationMetadataKey, what),
                file.path());
  };
  nlohmann::json description;
  try {
    description = nlohmann::json::parse(meta->second);
  } catch (const nlohmann::json::exception& e) {
    corrupt(std::string("not JSON: ") + e.what());
  }
  if (!description.is_object() || !description.contains("format") ||
      !description.contains("scaling") || !description["tensors"].is_object() ||
      !description["format"].is_string() || !description["scaling"].is_string()) {
    corrupt("expected {\"format\", \"scaling\", \"tensors\": {name: dtype}}");
  }
  const auto format = parse_enum<quant::QFormat>(description["format"].get<std::string>());
  const auto scaling = parse_enum<quant::Scaling>(description["scaling"].get<std::string>());
  if (!format || !scaling) corrupt("unknown format or scaling");
  std::vector<quant::QTensor> weights;
  for (const auto& entry : file.tensors()) {
    if (entry.name.ends_with(kScaleSuffix) && description["tensors"].contains(entry.name.substr(
                                                  0, entry.name.size() - kScaleSuffix.size()))) {
      continue;  // read with its weight
    }
    read_ahead(entry);
    const at::Tensor data = file.copy(entry.name);
    const auto original = description["tensors"].find(entry.name);
    if (original == description["tensors"].end()) {
      weights.push_back(quant::QTensor::from_parts(entry.name, data, {}, quant::QFormat::none,
                                                   quant::Scaling::none, data.scalar_type()));
      continue;
    }
    const auto dtype =
        original->is_string() ? parse_dtype(original->get<std::string>()) : std::nullopt;
    if (!dtype) corrupt(fmt::format("tensor '{}' has no original dtype", entry.name));
    at::Tensor scales;
    if (quant::traits(*format).scaled) {
      const std::string scale_name = entry.name + std::string(kScaleSuffix);
      if (file.find(scale_name) == nullptr) corrupt(fmt::format("'{}' is missing", scale_name));
      scales = file.copy(scale_name);
    }
    // from_parts checks the parts agree (dtype, shape of the scales) and names the tensor.
    try {
      weights.push_back(quant::QTensor::from_parts(entry.name, data, scales, *format, *scaling,
                                                   scalar_type_of(*dtype)));
    } catch (const Error& e) {
      throw Error(ErrorCode::Corrupt, e.message(), file.path());
    }
  }
  return weights;
}

void write_model_weights(const std::filesystem::path& path,
                         const std::vector<quant::QTensor>& weights,
                         std::map<std::string, std::string> metadata) {
  std::vector<NamedTensor> tensors;
  nlohmann::json originals = nlohmann::json::object();
  std::optional<quant::QuantSpec> spec;
  for (const quant::QTensor& w : weights) {
    tensors.push_back({w.name(), w.data()});
    if (w.format() == quant::QFormat::none) continue;
    if (spec && *spec != w.spec()) {
      fail(ErrorCode::InvalidArgument, "weights mix {} and {}: one file holds one quantized format",
           quant::to_string(*spec), quant::to_string(w.spec()));
    }
    spec = w.spec();
    originals[w.name()] = std::string(to_string(dtype_of(w.original_dtype())));
    if (w.scales().defined()) tensors.push_back({w.name() + std::string(kScaleSuffix), w.scales()});
  }
  if (spec) {
    metadata[std::string(kQuantizationMetadataKey)] = nlohmann::json{
        {"format", std::string(quant::to_string(spec->format))},
        {"scaling", std::string(quant::to_string(spec->scaling))},
        {"tensors", originals}}.dump();
  }
  save_safetensors(path, tensors, metadata);
}

}  // namespace apo::models
