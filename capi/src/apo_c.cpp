// The C ABI over the C++ library, first part: status and errors, configurations, the machine
// probe, DLPack conversions and the quantizers. Every entry point catches everything (guarded),
// so no exception crosses the boundary; handles are generation-counted (capi_internal.hpp).

#include "capi_internal.hpp"

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/qtensor.hpp"
#include "apo/tune/presets.hpp"
#include "apo/version.hpp"

namespace apo::capi {

static_assert(APO_STATUS_INVALID_ARGUMENT == static_cast<int>(ErrorCode::InvalidArgument));
static_assert(APO_STATUS_INVALID_CONFIG == static_cast<int>(ErrorCode::InvalidConfig));
static_assert(APO_STATUS_NOT_FOUND == static_cast<int>(ErrorCode::NotFound));
static_assert(APO_STATUS_IO == static_cast<int>(ErrorCode::Io));
static_assert(APO_STATUS_CORRUPT == static_cast<int>(ErrorCode::Corrupt));
static_assert(APO_STATUS_UNSUPPORTED == static_cast<int>(ErrorCode::Unsupported));
static_assert(APO_STATUS_OUT_OF_MEMORY == static_cast<int>(ErrorCode::OutOfMemory));
static_assert(APO_STATUS_CANCELLED == static_cast<int>(ErrorCode::Cancelled));
static_assert(APO_STATUS_TIMED_OUT == static_cast<int>(ErrorCode::TimedOut));
static_assert(APO_STATUS_REJECTED == static_cast<int>(ErrorCode::Rejected));
static_assert(APO_STATUS_INTERNAL == static_cast<int>(ErrorCode::Internal));
static_assert(APO_STATUS_WORKFLOW_FAILED == static_cast<int>(ErrorCode::WorkflowFailed));

// Version 1 of apo_config_options, frozen: fields may be appended, never moved.
constexpr std::size_t kApoConfigOptionsV1Size = 48;
static_assert(offsetof(apo_config_options, struct_size) == 0);
static_assert(offsetof(apo_config_options, presets) == 8);
static_assert(offsetof(apo_config_options, preset_count) == 16);
static_assert(offsetof(apo_config_options, overrides) == 24);
static_assert(offsetof(apo_config_options, override_count) == 32);
static_assert(offsetof(apo_config_options, check_machine) == 40);
static_assert(sizeof(apo_config_options) >= kApoConfigOptionsV1Size);

namespace {

thread_local std::string last_error;

struct ConfigObject {
  Config config;
};

HandleTable<ConfigObject>& configs() {
  // Never destroyed: handles a program leaks must not be torn down after libtorch at exit.
  static auto* table = new HandleTable<ConfigObject>(HandleType::config, "apo_config");
  return *table;
}

// Loads a configuration from the source that `add_source` adds, then the options' layers.
template <class AddSource>
apo_status load_config(AddSource&& add_source, const apo_config_options* options,
                       apo_config** out_config) {
  return guarded([&] {
    require(out_config != nullptr, "out_config is NULL");
    ConfigLoader loader = tune::config_loader();
    add_source(loader);
    MachineInfo machine;
    if (options != nullptr) {
      require_struct(options, kApoConfigOptionsV1Size, "options");
      require(options->preset_count == 0 || options->presets != nullptr,
              "options->presets is NULL but preset_count is not 0");
      require(options->override_count == 0 || options->overrides != nullptr,
              "options->overrides is NULL but override_count is not 0");
      for (std::size_t i = 0; i < options->preset_count; ++i) {
        require(options->presets[i] != nullptr, "options->presets has a NULL entry");
        loader.preset(options->presets[i]);
      }
      for (std::size_t i = 0; i < options->override_count; ++i) {
        require(options->overrides[i] != nullptr, "options->overrides has a NULL entry");
        loader.set(options->overrides[i]);
      }
      if (options->check_machine != 0) {
        machine = probe_machine();
        loader.check_against(machine);
      }
    }
    auto object = std::make_shared<ConfigObject>(ConfigObject{loader.load().config});
    *out_config = handle_pointer<apo_config>(configs().add(std::move(object)));
  });
}

// Deletes the DLPack tensor it holds unless released: a consumed tensor is deleted on every path.
class ManagedTensorOwner {
 public:
  explicit ManagedTensorOwner(DLManagedTensorVersioned* tensor) noexcept : tensor_(tensor) {}
  ~ManagedTensorOwner() {
    if (tensor_ != nullptr && tensor_->deleter != nullptr) tensor_->deleter(tensor_);
  }
  ManagedTensorOwner(const ManagedTensorOwner&) = delete;
  ManagedTensorOwner& operator=(const ManagedTensorOwner&) = delete;
  DLManagedTensorVersioned* release() noexcept { return std::exchange(tensor_, nullptr); }

 private:
  DLManagedTensorVersioned* tensor_;
};

constexpr std::int32_t kMaxDimensions = 64;

struct TensorLayout {
  at::ScalarType dtype;
  std::vector<std::int64_t> sizes;
  std::vector<std::int64_t> strides;  // empty: contiguous
  void* data;
};

// Checks a DLPack tensor against what DLPack 1.x promises and what apo takes.
TensorLayout layout_of(const DLManagedTensorVersioned* tensor, const char* argument) {
  const std::string name(argument);
  if (tensor == nullptr) throw Error(ErrorCode::InvalidArgument, name + " is NULL");
  if (tensor->version.major != DLPACK_MAJOR_VERSION) {
    fail(ErrorCode::Unsupported, "{} is DLPack {}.{}; apo takes DLPack {}.x", name,
         tensor->version.major, tensor->version.minor, DLPACK_MAJOR_VERSION);
  }
  const DLTensor& dl = tensor->dl_tensor;
  if (dl.device.device_type != kDLCPU) {
    fail(ErrorCode::Unsupported, "{} is on DLPack device type {}; apo takes CPU tensors (1)", name,
         static_cast<int>(dl.device.device_type));
  }
  if (dl.ndim < 0 || dl.ndim > kMaxDimensions) {
    fail(ErrorCode::InvalidArgument, "{} has {} dimensions (0 to {} allowed)", name, dl.ndim,
         kMaxDimensions);
  }
  if (dl.ndim > 0 && dl.shape == nullptr) {
    fail(ErrorCode::InvalidArgument, "{} has {} dimensions but no shape", name, dl.ndim);
  }
  if (dl.dtype.lanes != 1) {
    fail(ErrorCode::Unsupported, "{} has {} lanes; apo takes 1", name, dl.dtype.lanes);
  }
  TensorLayout layout{};
  try {
    layout.dtype = at::toScalarType(dl.dtype);
  } catch (const c10::Error&) {
    fail(ErrorCode::Unsupported, "{} has DLPack dtype code {} with {} bits, which torch lacks",
         name, static_cast<int>(dl.dtype.code), static_cast<int>(dl.dtype.bits));
  }
  std::int64_t elements = 1;
  for (std::int32_t d = 0; d < dl.ndim; ++d) {
    if (dl.shape[d] < 0) {
      fail(ErrorCode::InvalidArgument, "{} has size {} in dimension {}", name, dl.shape[d], d);
    }
    layout.sizes.push_back(dl.shape[d]);
    if (dl.shape[d] != 0 && elements > (std::int64_t{1} << 48) / dl.shape[d]) {
      fail(ErrorCode::InvalidArgument, "{} has more than 2^48 elements", name);
    }
    elements *= dl.shape[d];
  }
  if (dl.strides != nullptr) layout.strides.assign(dl.strides, dl.strides + dl.ndim);
  if (elements > 0 && dl.data == nullptr) {
    fail(ErrorCode::InvalidArgument, "{} has {} elements but no data", name, elements);
  }
  layout.data = dl.data == nullptr ? nullptr : static_cast<char*>(dl.data) + dl.byte_offset;
  return layout;
}

at::Tensor view_of(const TensorLayout& layout, std::function<void(void*)> deleter) {
  const auto options = at::TensorOptions().dtype(layout.dtype).device(at::kCPU);
  if (layout.strides.empty()) {
    return deleter ? at::from_blob(layout.data, layout.sizes, std::move(deleter), options)
                   : at::from_blob(layout.data, layout.sizes, options);
  }
  return deleter
             ? at::from_blob(layout.data, layout.sizes, layout.strides, std::move(deleter), options)
             : at::from_blob(layout.data, layout.sizes, layout.strides, options);
}

quant::QFormat format_named(const char* format) {
  require(format != nullptr, "format is NULL");
  const auto parsed = parse_enum<quant::QFormat>(format);
  if (!parsed) {
    fail(ErrorCode::InvalidArgument,
         "format \"{}\" is not one of none, fp16, bf16, fp8_e4m3 (fp8), fp8_e5m2, int8", format);
  }
  return *parsed;
}

quant::Scaling scaling_named(const char* scaling, quant::QFormat format) {
  if (scaling == nullptr) {
    return quant::traits(format).scaled ? quant::Scaling::per_row : quant::Scaling::none;
  }
  const auto parsed = parse_enum<quant::Scaling>(scaling);
  if (!parsed) {
    fail(ErrorCode::InvalidArgument, "scaling \"{}\" is not one of none, per_tensor, per_row",
         scaling);
  }
  return *parsed;
}

at::ScalarType dtype_named(const char* dtype) {
  if (dtype == nullptr) return at::kFloat;
  const std::string_view name(dtype);
  if (name == "float32") return at::kFloat;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  fail(ErrorCode::InvalidArgument, "dtype \"{}\" is not one of float32, float16, bfloat16", name);
}

}  // namespace

std::shared_ptr<const Config> config_of(const apo_config* config) {
  const auto object = lookup(configs(), config, "config");
  return std::shared_ptr<const Config>(object, &object->config);
}

apo_status set_error(apo_status status, const std::string& message) noexcept {
  try {
    last_error = message;
  } catch (...) {
    last_error.clear();
  }
  return status;
}

apo_status report_current_exception() noexcept {
  const ErrorReport report = current_error_report();
  return set_error(static_cast<apo_status>(report.code), report.message);
}

void require_struct(const void* structure, std::size_t v1_size, const char* argument) {
  if (structure == nullptr) fail(ErrorCode::InvalidArgument, "{} is NULL", argument);
  std::uint32_t size = 0;
  std::memcpy(&size, structure, sizeof size);
  if (size < v1_size) {
    fail(ErrorCode::InvalidArgument,
         "{}->struct_size is {}, smaller than version 1 of the struct ({} bytes): set it to "
         "sizeof the struct (the *_init function does)",
         argument, size, v1_size);
  }
}

char* copy_string(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out == nullptr) throw std::bad_alloc();
  std::memcpy(out, text.c_str(), text.size() + 1);
  return out;
}

at::Tensor borrow_tensor(const DLManagedTensorVersioned* tensor, const char* argument) {
  return view_of(layout_of(tensor, argument), {});
}

at::Tensor consume_tensor(DLManagedTensorVersioned* tensor, const char* argument) {
  ManagedTensorOwner owner(tensor);
  const TensorLayout layout = layout_of(tensor, argument);
  auto deleter = [tensor](void*) {
    if (tensor->deleter != nullptr) tensor->deleter(tensor);
  };
  at::Tensor view = view_of(layout, std::move(deleter));
  owner.release();  // the view's storage owns it now
  return view;
}

DLManagedTensorVersioned* export_tensor(const at::Tensor& tensor, bool read_only) {
  DLManagedTensorVersioned* out = at::toDLPackVersioned(tensor);
  if (read_only) out->flags |= DLPACK_FLAG_BITMASK_READ_ONLY;
  return out;
}

}  // namespace apo::capi

using namespace apo::capi;

extern "C" {

const char* apo_version(void) {
  return APO_VERSION_STRING;
}

uint32_t apo_abi_version(void) {
  return APO_ABI_VERSION;
}

const char* apo_status_name(apo_status status) {
  switch (status) {
    case APO_STATUS_OK:
      return "OK";
    case APO_STATUS_INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case APO_STATUS_INVALID_CONFIG:
      return "INVALID_CONFIG";
    case APO_STATUS_NOT_FOUND:
      return "NOT_FOUND";
    case APO_STATUS_IO:
      return "IO";
    case APO_STATUS_CORRUPT:
      return "CORRUPT";
    case APO_STATUS_UNSUPPORTED:
      return "UNSUPPORTED";
    case APO_STATUS_OUT_OF_MEMORY:
      return "OUT_OF_MEMORY";
    case APO_STATUS_CANCELLED:
      return "CANCELLED";
    case APO_STATUS_TIMED_OUT:
      return "TIMED_OUT";
    case APO_STATUS_REJECTED:
      return "REJECTED";
    case APO_STATUS_INTERNAL:
      return "INTERNAL";
    case APO_STATUS_WORKFLOW_FAILED:
      return "WORKFLOW_FAILED";
    case APO_STATUS_NOT_READY:
      return "NOT_READY";
  }
  return "UNKNOWN";
}

const char* apo_last_error(void) {
  return last_error.c_str();
}

void apo_string_free(char* text) {
  std::free(text);
}

void apo_config_options_init(apo_config_options* options) {
  if (options == nullptr) return;
  *options = apo_config_options{};
  options->struct_size = sizeof(apo_config_options);
}

apo_status apo_config_load_file(const char* path, const apo_config_options* options,
                                apo_config** out_config) {
  if (path == nullptr) return set_error(APO_STATUS_INVALID_ARGUMENT, "path is NULL");
  return load_config([&](apo::ConfigLoader& loader) { loader.file(path); }, options, out_config);
}

apo_status apo_config_load_string(const char* json, const char* source_name,
                                  const apo_config_options* options, apo_config** out_config) {
  if (json == nullptr) return set_error(APO_STATUS_INVALID_ARGUMENT, "json is NULL");
  return load_config(
      [&](apo::ConfigLoader& loader) { loader.text(json, source_name ? source_name : "<string>"); },
      options, out_config);
}

apo_status apo_config_to_json(const apo_config* config, char** out_json) {
  return guarded([&] {
    const auto object = lookup(configs(), config, "config");
    require(out_json != nullptr, "out_json is NULL");
    *out_json = copy_string(apo::to_json(object->config));
  });
}

void apo_config_free(apo_config* config) {
  try {
    configs().remove(handle_value(config));
  } catch (...) {
    // Releasing never fails; a handle that is not live is ignored.
  }
}

apo_status apo_probe_json(char** out_json) {
  return guarded([&] {
    require(out_json != nullptr, "out_json is NULL");
    *out_json = copy_string(apo::to_json(apo::probe_machine()));
  });
}

apo_status apo_quantize(const DLManagedTensorVersioned* tensor, const char* format,
                        const char* scaling, DLManagedTensorVersioned** out_data,
                        DLManagedTensorVersioned** out_scales) {
  return guarded([&] {
    const at::Tensor input = borrow_tensor(tensor, "tensor");
    require(out_data != nullptr, "out_data is NULL");
    require(out_scales != nullptr, "out_scales is NULL");
    const apo::quant::QFormat parsed = format_named(format);
    const apo::quant::QuantSpec spec{parsed, scaling_named(scaling, parsed)};
    const apo::quant::QTensor q = apo::quant::quantize(input, spec, "tensor");
    // The codes of format none are the input's own memory: copy them, as the input is lent.
    const at::Tensor data = spec.format == apo::quant::QFormat::none ? q.data().clone() : q.data();
    DLManagedTensorVersioned* data_out = export_tensor(data, false);
    if (q.scales().defined()) {
      try {
        *out_scales = export_tensor(q.scales(), false);
      } catch (...) {
        data_out->deleter(data_out);
        throw;
      }
    } else {
      *out_scales = nullptr;
    }
    *out_data = data_out;
  });
}

apo_status apo_dequantize(const DLManagedTensorVersioned* data,
                          const DLManagedTensorVersioned* scales, const char* format,
                          const char* scaling, const char* dtype,
                          DLManagedTensorVersioned** out_tensor) {
  return guarded([&] {
    const at::Tensor codes = borrow_tensor(data, "data");
    const at::Tensor scale_view =
        scales == nullptr ? at::Tensor() : borrow_tensor(scales, "scales");
    require(out_tensor != nullptr, "out_tensor is NULL");
    const apo::quant::QFormat parsed = format_named(format);
    const apo::quant::Scaling parsed_scaling = scaling_named(scaling, parsed);
    const at::ScalarType out_dtype = dtype_named(dtype);
    const at::ScalarType original =
        parsed == apo::quant::QFormat::none ? codes.scalar_type() : out_dtype;
    const apo::quant::QTensor q = apo::quant::QTensor::from_parts(
        "data", codes.contiguous(), scale_view, parsed, parsed_scaling, original);
    at::Tensor decoded = q.dequantize(out_dtype);
    // Decoding a format-none tensor to its own dtype gives back the lent memory: copy it.
    if (decoded.data_ptr() == codes.data_ptr()) decoded = decoded.clone();
    *out_tensor = export_tensor(decoded, false);
  });
}

}  // extern "C"
