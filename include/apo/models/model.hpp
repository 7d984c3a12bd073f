#pragma once

/// @file
/// @brief A model as apo holds it: named weights (each a QTensor, quantized or not) on one
/// device, and what identifies it: the file, its kind, the precision asked for.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "apo/core/device.hpp"
#include "apo/core/settings.hpp"
#include "apo/memory/resource.hpp"
#include "apo/models/model_ref.hpp"
#include "apo/models/safetensors_format.hpp"
#include "apo/quant/qtensor.hpp"
#include "apo/quant/state_dict.hpp"

namespace apo::models {

namespace detail {
struct ModelMutation;  // how the model cache merges LoRAs into a resident model
}  // namespace detail

/// @brief Named weights on one device. Read-only to users: leases hand out const Models.
class Model {
 public:
  Model(std::string path, ModelKind kind, Precision precision, std::vector<quant::QTensor> weights);

  const std::string& path() const noexcept { return path_; }
  ModelKind kind() const noexcept { return kind_; }
  /// @brief The precision asked for ("auto" included).
  Precision precision() const noexcept { return precision_; }
  /// @brief The format the quantized weights use (none when nothing was quantized).
  quant::QuantSpec spec() const noexcept { return spec_; }
  Device device() const noexcept { return device_; }
  /// @brief Bytes of all weights (data and scales).
  std::int64_t bytes() const noexcept { return bytes_; }
  /// @brief Bytes of the same weights in their source dtypes.
  std::int64_t original_bytes() const noexcept { return original_bytes_; }

  const std::vector<quant::QTensor>& weights() const noexcept { return weights_; }
  /// @brief The weight of this name, or nullptr.
  const quant::QTensor* find(std::string_view name) const;
  /// @brief The weight of this name. @throws apo::Error NotFound naming the model.
  const quant::QTensor& weight(std::string_view name) const;
  /// @brief The weight dequantized to its source dtype (or `dtype`).
  at::Tensor dense(std::string_view name, std::optional<at::ScalarType> dtype = std::nullopt) const;

  /// @brief A copy of the weights on `device`. Host copies come from `host_memory` when given
  /// (a pool, pinned where CUDA is present, so copies reuse memory and move at full speed).
  Model to(Device device, const memory::AnyResource* host_memory = nullptr) const;

 private:
  friend struct detail::ModelMutation;
  quant::QTensor& mutable_weight(std::string_view name);
  void index();

  std::string path_;
  ModelKind kind_;
  Precision precision_;
  quant::QuantSpec spec_;
  Device device_ = Device::cpu();
  std::int64_t bytes_ = 0;
  std::int64_t original_bytes_ = 0;
  std::vector<quant::QTensor> weights_;
  std::unordered_map<std::string, std::size_t> index_;
};

/// @brief Metadata key of files apo quantized: "<format> <scaling>" of the quantized weights,
/// whose scales are stored as "<name>.scale" beside them.
inline constexpr std::string_view kQuantizationMetadataKey = "apo.quantization";

/// @brief Reads a model file into weights on the host: a file apo quantized comes back as the
/// QTensors it holds; any other file is quantized to `spec` by `rules` (spec none: kept as is).
/// While one tensor is copied, the next `prefetch_bytes` of the file are read ahead
/// (storage_optimization.io_buffer_size_mb).
/// @throws apo::Error NotFound, Corrupt (a bad file, or scales that do not match their weight)
std::vector<quant::QTensor> read_model_weights(const std::filesystem::path& path,
                                               const quant::QuantizationRules& rules,
                                               std::int64_t prefetch_bytes = 64 << 20);

/// @brief Whether a file holds weights apo quantized (its metadata says so).
bool is_quantized_file(const SafetensorsHeader& header);

/// @brief Writes weights as a safetensors file: quantized ones with their "<name>.scale" and the
/// format in the metadata, so read_model_weights restores them exactly.
void write_model_weights(const std::filesystem::path& path,
                         const std::vector<quant::QTensor>& weights,
                         std::map<std::string, std::string> metadata = {});

}  // namespace apo::models
