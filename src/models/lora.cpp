// LoRA adapters: reading the common key layouts, binding to weights, computing deltas.

#include "apo/models/lora.hpp"

#include <algorithm>
#include <array>
#include <unordered_map>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apo/core/error.hpp"
#include "apo/models/safetensors.hpp"

namespace apo::models {

namespace {

// Suffixes of the two halves and the alpha, in every layout apo reads.
struct Suffix {
  std::string_view text;
  enum class Part { down, up, alpha } part;
};
constexpr std::array<Suffix, 5> kSuffixes{{
    {".lora_down.weight", Suffix::Part::down},  // kohya, musubi, ComfyUI
    {".lora_up.weight", Suffix::Part::up},
    {".lora_A.weight", Suffix::Part::down},  // diffusers / PEFT, ComfyUI's DiT LoRAs
    {".lora_B.weight", Suffix::Part::up},
    {".alpha", Suffix::Part::alpha},
}};

// Key fragments of adapter kinds apo does not merge (LoHa, LoKr, LoCon's mid, full diffs).
constexpr std::array<std::string_view, 6> kUnsupported{
    {".hada_", ".lokr_", ".lora_mid.", ".diff", ".diff_b", ".dora_scale"}};

// Prefixes a LoRA puts before module names, and prefixes models put before weight names.
constexpr std::array<std::string_view, 9> kLoraPrefixes{
    {"lora_unet_", "lora_te1_", "lora_te2_", "lora_te_", "lora_transformer_", "base_model.model.",
     "model.diffusion_model.", "diffusion_model.", "transformer."}};
constexpr std::array<std::string_view, 5> kModelPrefixes{
    {"model.diffusion_model.", "diffusion_model.", "transformer.", "unet.", "model."}};

std::string_view strip_prefix(std::string_view name, std::span<const std::string_view> prefixes) {
  for (const auto prefix : prefixes) {
    if (name.starts_with(prefix)) return name.substr(prefix.size());
  }
  return name;
}

std::string underscored(std::string_view name) {
  std::string out(name);
  std::replace(out.begin(), out.end(), '.', '_');
  return out;
}

std::string shape_text(at::IntArrayRef shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace

at::Tensor LoraLayer::delta(double strength, at::IntArrayRef weight_shape) const {
  const double scale = strength * alpha.value_or(static_cast<double>(rank())) / rank();
  const at::Tensor product =
      at::matmul(up.to(at::kFloat).flatten(1), down.to(at::kFloat).flatten(1));
  if (product.numel() != c10::multiply_integers(weight_shape) ||
      product.size(0) != weight_shape[0]) {
    fail(ErrorCode::InvalidArgument,
         "LoRA layer '{}' makes a {} delta, which does not fit the weight's shape {}", module,
         shape_text(product.sizes()), shape_text(weight_shape));
  }
  return product.reshape(weight_shape).mul_(scale);
}

LoraAdapter LoraAdapter::load(const std::filesystem::path& path) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  std::map<std::string, at::Tensor> tensors;
  for (const auto& entry : file.tensors()) tensors.emplace(entry.name, file.copy(entry.name));
  return from_tensors(path.string(), tensors);
}

LoraAdapter LoraAdapter::from_tensors(std::string name,
                                      const std::map<std::string, at::Tensor>& tensors) {
  auto corrupt = [&](std::string message) { throw Error(ErrorCode::Corrupt, message, name); };
  struct Halves {
    at::Tensor down, up, alpha;
  };
  std::map<std::string, Halves> modules;
  for (const auto& [key, tensor] : tensors) {
    for (const auto fragment : kUnsupported) {
      if (key.find(fragment) != std::string::npos) {
        throw Error(ErrorCode::Unsupported,
                    fmt::format("'{}' belongs to an adapter kind apo does not merge (LoHa, LoKr, "
                                "LoCon mid or full diffs); only low-rank pairs are supported",
                                key),
                    name);
      }
    }
    const auto suffix = std::find_if(kSuffixes.begin(), kSuffixes.end(), [&](const Suffix& s) {
      return key.size() > s.text.size() && key.ends_with(s.text);
    });
    if (suffix == kSuffixes.end()) {
      corrupt(
          fmt::format("'{}' is not part of a LoRA pair (expected names ending in "
                      ".lora_down/.lora_up/.lora_A/.lora_B.weight or .alpha)",
                      key));
    }
    Halves& halves = modules[key.substr(0, key.size() - suffix->text.size())];
    switch (suffix->part) {
      case Suffix::Part::down:
        halves.down = tensor;
        break;
      case Suffix::Part::up:
        halves.up = tensor;
        break;
      case Suffix::Part::alpha:
        halves.alpha = tensor;
        break;
    }
  }
  LoraAdapter adapter;
  adapter.name_ = std::move(name);
  for (auto& [module, halves] : modules) {
    if (!halves.down.defined() || !halves.up.defined()) {
      corrupt(fmt::format("module '{}' has {} half but not the other", module,
                          halves.down.defined() ? "its down (A)" : "its up (B)"));
    }
    if (halves.down.dim() < 2 || halves.up.dim() < 2 || halves.down.size(0) != halves.up.size(1) ||
        halves.down.size(0) == 0) {
      corrupt(
          fmt::format("module '{}': down {} and up {} do not chain (expected [rank, in, ...] "
                      "and [out, rank, ...])",
                      module, shape_text(halves.down.sizes()), shape_text(halves.up.sizes())));
    }
    if (!halves.down.is_floating_point() || !halves.up.is_floating_point()) {
      corrupt(fmt::format("module '{}': the pair is not floating point", module));
    }
    std::optional<double> alpha;
    if (halves.alpha.defined()) {
      if (halves.alpha.numel() != 1) {
        corrupt(fmt::format("module '{}': alpha has {} elements (expected 1)", module,
                            halves.alpha.numel()));
      }
      alpha = halves.alpha.to(at::kDouble).item<double>();
    }
    adapter.layers_.push_back({module, halves.down, halves.up, alpha});
  }
  if (adapter.layers_.empty()) corrupt("no LoRA pairs in the file");
  return adapter;
}

LoraBinding LoraAdapter::bind(const std::vector<std::string>& weight_names) const {
  std::unordered_map<std::string_view, const std::string*> exact;
  std::unordered_map<std::string, const std::string*> by_underscores;
  std::unordered_map<std::string, int> underscore_count;
  for (const std::string& weight : weight_names) {
    exact.emplace(weight, &weight);
    if (!weight.ends_with(".weight")) continue;
    const std::string_view stem =
        strip_prefix(std::string_view(weight).substr(0, weight.size() - 7), kModelPrefixes);
    const std::string key = underscored(stem);
    by_underscores.emplace(key, &weight);
    ++underscore_count[key];
  }
  LoraBinding binding;
  for (const LoraLayer& layer : layers_) {
    const std::string_view module = layer.module;
    const std::string_view stripped = strip_prefix(module, kLoraPrefixes);
    const std::string* target = nullptr;
    for (const std::string& candidate :
         {std::string(module) + ".weight", std::string(stripped) + ".weight"}) {
      if (const auto it = exact.find(candidate); it != exact.end()) {
        target = it->second;
        break;
      }
      for (const auto prefix : kModelPrefixes) {
        if (const auto it = exact.find(std::string(prefix) + candidate); it != exact.end()) {
          target = it->second;
          break;
        }
      }
      if (target != nullptr) break;
    }
    if (target == nullptr) {
      // kohya's form: dots became underscores, so only an unambiguous match counts.
      const std::string key = underscored(stripped);
      if (const auto it = by_underscores.find(key);
          it != by_underscores.end() && underscore_count[key] == 1) {
        target = it->second;
      }
    }
    if (target != nullptr) {
      binding.targets.push_back({&layer, *target});
    } else {
      binding.unmatched.push_back(layer.module);
    }
  }
  return binding;
}

}  // namespace apo::models
