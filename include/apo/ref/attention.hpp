#pragma once

/// @file
/// @brief Multi-head attention for the reference models: libtorch's scaled_dot_product_attention,
/// or the guide's attention slicing (diffusers' SlicedAttnProcessor), which computes
/// softmax(Q Kᵀ / √D) V for `slice_size` (batch × head) rows at a time so that only that many
/// score matrices [Lq, Lk] exist at once.

#include <ATen/core/Tensor.h>

namespace apo::ref {

/// @brief The guide's "enable_attention_slicing" and "attention_slice_size".
struct AttentionOptions {
  bool slicing = false;
  /// Batch × head rows per slice: 1 holds one [Lq, Lk] score matrix at a time (least memory).
  int slice_size = 1;
};

/// @brief Attention of queries `q` [B, H, Lq, D] over keys `k` and values `v` [B, H, Lk, D];
/// returns [B, H, Lq, D].
///
/// `key_padding_mask`, when defined, is bool [B, Lk] (true = attend): masked keys get zero
/// weight. Without slicing this is at::scaled_dot_product_attention (differentiable; libtorch
/// picks its kernel). With slicing, the (B·H) rows go `slice_size` at a time through
/// baddbmm → softmax → bmm into one preallocated output; the result equals the full path within
/// float rounding, and it is differentiable too (though training uses the full path).
/// @throws apo::Error InvalidArgument: tensors not 4-D, shapes that disagree, a mask of the wrong
/// shape or dtype, a batch item whose keys are all masked, slice_size < 1
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const AttentionOptions& options = {}, const at::Tensor& key_padding_mask = {});

}  // namespace apo::ref
