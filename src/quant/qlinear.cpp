// qlinear: y = x W^T + b with W quantized. The tiled path decodes a tile of W's rows into one
// buffer and runs a GEMM that writes straight into the matching columns of y, so the
// dequantized weight never exists whole; on CUDA, fp8 weights can go to at::_scaled_mm.

#include "apo/quant/qlinear.hpp"

#include <ATen/ATen.h>

#include <algorithm>

#include <fmt/format.h>

#include "apo/core/units.hpp"
#include "apo/quant/kernels.hpp"
#include "internal.hpp"

#ifdef APO_WITH_CUDA
#include "cuda_kernels.hpp"
#endif

namespace apo::quant {
namespace {

using detail::fail_tensor;

constexpr std::int64_t kDecodeWholeBytes = 1 * MiB;
constexpr std::int64_t kMaxTileBytes = 8 * MiB;
// The default tile: 1/32 of the dequantized weight, leaving room under the 10% target for the
// GEMM's own scratch (oneDNN's bfloat16 GEMM allocates a few hundred KiB per call).
constexpr std::int64_t kTileFraction = 32;

void check_arguments(const at::Tensor& x, const QTensor& w, const std::optional<at::Tensor>& bias) {
  if (w.shape().size() != 2) {
    fail_tensor(ErrorCode::InvalidArgument, w.name(),
                "qlinear needs a 2-d weight [out, in]; this one has shape {}",
                detail::shape_text(w.shape()));
  }
  if (!x.defined() || x.dim() < 1) {
    fail_tensor(ErrorCode::InvalidArgument, w.name(),
                "qlinear needs an input x of at least one dimension");
  }
  if (!x.is_floating_point()) {
    fail_tensor(ErrorCode::InvalidArgument, w.name(),
                "x has dtype {}; qlinear takes Float, Half or BFloat16 inputs",
                c10::toString(x.scalar_type()));
  }
  detail::elem_of(x.scalar_type(), w.name());
  const std::int64_t in_features = w.shape()[1];
  if (x.size(-1) != in_features) {
    fail_tensor(ErrorCode::InvalidArgument, w.name(),
                "x has {} input features (shape {}), but the weight of shape {} expects {}",
                x.size(-1), detail::shape_text(x.sizes()), detail::shape_text(w.shape()),
                in_features);
  }
  if (x.device() != w.device()) {
    fail_tensor(ErrorCode::InvalidArgument, w.name(), "x is on {} but the weight is on {}",
                x.device().str(), w.device().str());
  }
  if (bias && bias->defined()) {
    if (bias->dim() != 1 || bias->size(0) != w.shape()[0] || !bias->is_floating_point() ||
        bias->device() != x.device()) {
      fail_tensor(ErrorCode::InvalidArgument, w.name(),
                  "the bias must be a floating-point [{}] tensor on {}; it is {} {} on {}",
                  w.shape()[0], x.device().str(), c10::toString(bias->scalar_type()),
                  detail::shape_text(bias->sizes()), bias->device().str());
    }
  }
}

#ifdef APO_WITH_CUDA
// Why at::_scaled_mm cannot take these arguments, or empty if it can. `rowwise` is set when the
// weight's per-row scales are used as _scaled_mm's row-wise scales.
std::string scaled_mm_obstacle(const at::Tensor& x, const QTensor& w, bool& rowwise) {
  const int capability = cuda::compute_capability(w.device().index());
  const std::int64_t out_features = w.shape()[0];
  const std::int64_t in_features = w.shape()[1];
  rowwise = w.scaling() == Scaling::per_row;
  if (capability < 89) return fmt::format("the device has sm {} (fp8 GEMMs need sm >= 8.9)", capability);
  if (in_features % 16 != 0 || out_features % 16 != 0) {
    return fmt::format("in ({}) and out ({}) are not both multiples of 16", in_features,
                       out_features);
  }
  if (rowwise) {
    if (capability < 90) return "per-row weight scales need sm >= 9.0 for _scaled_mm";
    if (x.scalar_type() != at::kBFloat16) return "per-row weight scales need bfloat16 x";
    if (w.format() != QFormat::fp8_e4m3) return "per-row weight scales need an E4M3 weight";
  }
  return {};
}
#endif

std::int64_t tile_rows_for(const at::Tensor& x, const QTensor& w, const QLinearOptions& options) {
  const std::int64_t out_features = w.shape()[0];
  const std::int64_t row_bytes = w.shape()[1] * static_cast<std::int64_t>(x.element_size());
  const std::int64_t whole = out_features * row_bytes;
  std::int64_t budget = options.tile_bytes;
  if (budget <= 0) {
    budget = whole <= kDecodeWholeBytes ? whole : std::min(kMaxTileBytes, whole / kTileFraction);
  }
  std::int64_t rows = std::clamp<std::int64_t>(budget / std::max<std::int64_t>(row_bytes, 1), 1,
                                               out_features);
  if (rows > 16 && rows < out_features) rows -= rows % 16;  // whole GEMM blocks
  return rows;
}

}  // namespace

QLinearPlan plan_qlinear(const at::Tensor& x, const QTensor& w, const QLinearOptions& options) {
  check_arguments(x, w, std::nullopt);
  QLinearPlan plan;
  if (!traits(w.format()).scaled && w.data().scalar_type() == x.scalar_type()) {
    plan.path = QLinearPath::direct;
    plan.reason = fmt::format("the weight is stored as {}, x's dtype: one GEMM",
                              c10::toString(x.scalar_type()));
    return plan;
  }
  std::string why_not_scaled_mm;
#ifdef APO_WITH_CUDA
  if (w.device().is_cuda() && traits(w.format()).scaled && w.format() != QFormat::int8) {
    if (!options.allow_scaled_mm) {
      why_not_scaled_mm = "; _scaled_mm is disabled by the options";
    } else {
      bool rowwise = false;
      const std::string obstacle = scaled_mm_obstacle(x, w, rowwise);
      if (obstacle.empty()) {
        const std::int64_t m = x.numel() / x.size(-1);
        plan.path = QLinearPath::cuda_scaled_mm;
        plan.workspace_bytes = x.numel() + 4 * (rowwise ? m : 1);
        plan.reason = fmt::format("fp8 weight on a device with fp8 GEMMs: x quantized to E4M3 ({}), "
                                  "at::_scaled_mm",
                                  rowwise ? "row-wise scales" : "one scale");
        return plan;
      }
      why_not_scaled_mm = "; not _scaled_mm: " + obstacle;
    }
  }
#endif
  plan.path = QLinearPath::tiled;
  plan.tile_rows = tile_rows_for(x, w, options);
  plan.workspace_bytes = plan.tile_rows * w.shape()[1] * static_cast<std::int64_t>(x.element_size());
  plan.reason = fmt::format("{} weight decoded {} rows at a time into a {} buffer ({} tiles){}",
                            to_string(w.format()), plan.tile_rows,
                            format_bytes(plan.workspace_bytes),
                            (w.shape()[0] + plan.tile_rows - 1) / plan.tile_rows,
                            why_not_scaled_mm);
  return plan;
}

at::Tensor qlinear(const at::Tensor& x, const QTensor& w, const std::optional<at::Tensor>& bias,
                   const QLinearOptions& options) {
  check_arguments(x, w, bias);
  const QLinearPlan plan = plan_qlinear(x, w, options);
  const std::int64_t out_features = w.shape()[0];
  const std::int64_t in_features = w.shape()[1];
  std::vector<std::int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  const bool has_bias = bias && bias->defined();
  const at::Tensor b = has_bias ? bias->to(x.scalar_type()) : at::Tensor();

  if (plan.path == QLinearPath::direct) {
    return at::linear(x, w.data(), has_bias ? std::optional<at::Tensor>(b) : std::nullopt);
  }
  const at::Tensor x2d = x.reshape({-1, in_features});
  if (x2d.size(0) == 0) return at::empty(out_shape, x.options());

#ifdef APO_WITH_CUDA
  if (plan.path == QLinearPath::cuda_scaled_mm) {
    const bool rowwise = w.scaling() == Scaling::per_row;
    const auto [x_codes, x_scales] = detail::quantize_unchecked_cuda(
        x2d, {QFormat::fp8_e4m3, rowwise ? Scaling::per_row : Scaling::per_tensor});
    const at::Tensor scale_a = rowwise ? x_scales.view({-1, 1}) : x_scales;
    const at::Tensor scale_b = rowwise ? w.scales().view({1, -1}) : w.scales();
    at::Tensor y = at::_scaled_mm(x_codes, w.data().t(), scale_a, scale_b, std::nullopt,
                                  std::nullopt, x.scalar_type(), false);
    if (has_bias) y.add_(b);
    return y.view(out_shape);
  }
#endif

  at::Tensor y = at::empty({x2d.size(0), out_features}, x.options());
  at::Tensor buffer = at::empty({plan.tile_rows, in_features}, x.options());
  for (std::int64_t first = 0; first < out_features; first += plan.tile_rows) {
    const std::int64_t rows = std::min(plan.tile_rows, out_features - first);
    at::Tensor tile = buffer.narrow(0, 0, rows);
    dequantize_rows_into(w, first, first + rows, tile);
    // y's columns [first, first + rows) are a strided view: BLAS writes them in place.
    at::Tensor y_tile = y.narrow(1, first, rows);
    if (has_bias) {
      at::addmm_out(y_tile, b.narrow(0, first, rows), x2d, tile.t());
    } else {
      at::mm_out(y_tile, x2d, tile.t());
    }
  }
  return y.view(out_shape);
}

}  // namespace apo::quant
