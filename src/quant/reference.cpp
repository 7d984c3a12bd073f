// The quantization math as a chain of libtorch ops: what torchao's _choose_scale_float8 and
// _quantize_affine_float8 do, plus the amax floor and int8's round-then-clamp.

#include "apo/quant/reference.hpp"

#include <ATen/ATen.h>

#include "apo/quant/qtensor.hpp"

namespace apo::quant::reference {

namespace {

// x as float32 [rows, row_length] for per-row math, [1, numel] per tensor.
at::Tensor rows_view(const at::Tensor& x, QuantSpec spec) {
  const std::int64_t rows = spec.scaling == Scaling::per_row ? scaling_rows(x.sizes()) : 1;
  return x.to(at::kFloat).reshape({rows, -1});
}

// A divisor tensor on x's device: dividing by a Scalar may multiply by its reciprocal on some
// backends, which is not bit-identical to division.
at::Tensor format_max(const at::Tensor& like, QFormat format) {
  return at::full({1}, traits(format).max_value, like.options().dtype(at::kFloat));
}

}  // namespace

at::Tensor scales(const at::Tensor& x, QuantSpec spec) {
  const at::Tensor amax = rows_view(x, spec).abs().amax(1);
  return at::div(amax.clamp(kAmaxFloor, kAmaxCeiling), format_max(x, spec.format));
}

Quantized quantize(const at::Tensor& x, QuantSpec spec) {
  const FormatTraits t = traits(spec.format);
  if (!t.scaled) return {x.to(storage_dtype(spec.format, x.scalar_type())), {}};
  const at::Tensor s = scales(x, spec);
  at::Tensor y = (rows_view(x, spec) / s.unsqueeze(1)).clamp(-t.max_value, t.max_value);
  if (spec.format == QFormat::int8) y = y.round();
  return {y.to(storage_dtype(spec.format, x.scalar_type())).reshape(x.sizes()), s};
}

at::Tensor dequantize(const at::Tensor& data, const at::Tensor& scales, QuantSpec spec,
                      at::ScalarType dtype) {
  if (!traits(spec.format).scaled) return data.to(dtype);
  const std::int64_t rows = scales.numel();
  return (data.to(at::kFloat).reshape({rows, -1}) * scales.reshape({rows, 1}))
      .to(dtype)
      .reshape(data.sizes());
}

}  // namespace apo::quant::reference
