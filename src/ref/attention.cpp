#include "apo/ref/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

#include <ATen/ATen.h>
#include <fmt/ranges.h>

#include "apo/core/error.hpp"

namespace apo::ref {

namespace {

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const AttentionOptions& options, const at::Tensor& mask) {
  if (!q.defined() || !k.defined() || !v.defined())
    fail(ErrorCode::InvalidArgument, "attention: q, k and v must be defined tensors");
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    fail(ErrorCode::InvalidArgument,
         "attention: q, k and v must be [B, H, L, D]; got {}, {} and {} dimensions", q.dim(),
         k.dim(), v.dim());
  if (k.sizes() != v.sizes())
    fail(ErrorCode::InvalidArgument, "attention: k {} and v {} differ in shape",
         fmt::join(k.sizes(), "x"), fmt::join(v.sizes(), "x"));
  if (q.size(0) != k.size(0) || q.size(1) != k.size(1) || q.size(3) != k.size(3))
    fail(ErrorCode::InvalidArgument,
         "attention: q {} and k {} must agree in batch, heads and head dimension",
         fmt::join(q.sizes(), "x"), fmt::join(k.sizes(), "x"));
  if (options.slicing && options.slice_size < 1)
    fail(ErrorCode::InvalidArgument, "attention: slice_size {} must be at least 1",
         options.slice_size);
  if (!mask.defined()) return;
  if (mask.scalar_type() != at::kBool || mask.dim() != 2 || mask.size(0) != k.size(0) ||
      mask.size(1) != k.size(2))
    fail(ErrorCode::InvalidArgument,
         "attention: key_padding_mask must be bool [{}, {}]; got {} [{}]", k.size(0), k.size(2),
         c10::toString(mask.scalar_type()), fmt::join(mask.sizes(), "x"));
  // A query with no key to attend to has no softmax (0/0): refuse it instead of returning NaN.
  const at::Tensor attended = mask.any(1).cpu();
  for (std::int64_t b = 0; b < attended.size(0); ++b)
    if (!attended[b].item<bool>())
      fail(ErrorCode::InvalidArgument,
           "attention: key_padding_mask masks every key of batch item {}", b);
}

// diffusers' SlicedAttnProcessor: (B·H) rows `slice_size` at a time, so one slice's scores
// [slice, Lq, Lk] are the largest temporary.
at::Tensor sliced_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int slice_size, const at::Tensor& mask) {
  const std::int64_t batch = q.size(0), heads = q.size(1), lq = q.size(2), lk = k.size(2);
  const std::int64_t rows = batch * heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  const at::Tensor q_rows = q.reshape({rows, lq, q.size(3)});
  const at::Tensor k_rows_t = k.reshape({rows, lk, k.size(3)}).transpose(1, 2);
  const at::Tensor v_rows = v.reshape({rows, lk, v.size(3)});
  // The mask as an additive bias per row, [rows, 1, Lk]: 0 where attended, -inf where masked.
  at::Tensor bias;
  if (mask.defined())
    bias = at::zeros({batch, 1, 1, lk}, q.options())
               .masked_fill(mask.logical_not().view({batch, 1, 1, lk}),
                            -std::numeric_limits<double>::infinity())
               .expand({batch, heads, 1, lk})
               .reshape({rows, 1, lk});
  at::Tensor out = at::empty({rows, lq, v.size(3)}, q.options());
  for (std::int64_t start = 0; start < rows; start += slice_size) {
    const std::int64_t length = std::min<std::int64_t>(slice_size, rows - start);
    const at::Tensor qs = q_rows.narrow(0, start, length);
    const at::Tensor kts = k_rows_t.narrow(0, start, length);
    at::Tensor scores =
        bias.defined() ? at::baddbmm(bias.narrow(0, start, length).expand({length, lq, lk}), qs,
                                     kts, 1.0, scale)
                       : at::baddbmm(at::empty({length, lq, lk}, q.options()), qs, kts, 0.0, scale);
    scores = scores.softmax(-1);
    out.narrow(0, start, length).copy_(at::bmm(scores, v_rows.narrow(0, start, length)));
  }
  return out.view({batch, heads, lq, v.size(3)});
}

}  // namespace

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const AttentionOptions& options, const at::Tensor& key_padding_mask) {
  check_inputs(q, k, v, options, key_padding_mask);
  if (options.slicing) return sliced_attention(q, k, v, options.slice_size, key_padding_mask);
  std::optional<at::Tensor> mask;
  if (key_padding_mask.defined())
    mask = key_padding_mask.view({key_padding_mask.size(0), 1, 1, key_padding_mask.size(1)});
  return at::scaled_dot_product_attention(q, k, v, mask);
}

}  // namespace apo::ref
