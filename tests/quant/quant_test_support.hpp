#pragma once

// Helpers for the quant tests: sweep sizes that shrink under sanitizers, bitwise comparison that
// says how far two results are apart, and the CPU kernels to run.

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "apo/quant/kernels.hpp"

namespace apo::quant::test {

/// Sanitizer builds (detected at compile time, or APO_SANITIZER_BUILD set) run strided sweeps:
/// the exhaustive ones stay in the release run.
inline bool sanitizer_build() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return true;
#endif
#endif
  return std::getenv("APO_SANITIZER_BUILD") != nullptr;
}

/// Every `stride`-th element of a sweep: 1 in release runs.
inline std::int64_t sweep_stride(std::int64_t sanitizer_stride) {
  return sanitizer_build() ? sanitizer_stride : 1;
}

/// The CPU kernels this machine runs (portable always, AVX2 where the CPU has it).
inline std::vector<CpuKernel> cpu_kernels() {
  std::vector<CpuKernel> kernels{CpuKernel::portable};
  if (cpu_kernel_available(CpuKernel::avx2)) kernels.push_back(CpuKernel::avx2);
  return kernels;
}

inline const char* kernel_name(CpuKernel kernel) {
  return kernel == CpuKernel::avx2 ? "avx2" : kernel == CpuKernel::portable ? "portable" : "best";
}

/// How two tensors of the same shape differ bit for bit.
struct BitDiff {
  std::int64_t mismatches = 0;
  std::int64_t first_index = -1;
  double max_abs_difference = 0;  ///< of the values as float64 (NaN vs NaN counts as equal)
  std::string text;               ///< a line for INFO()
};

/// Compares the bits of `actual` and `expected` (same dtype and shape) and, where they differ,
/// how far apart their values are.
inline BitDiff bit_diff(const at::Tensor& actual, const at::Tensor& expected,
                        const at::Tensor& input = {}) {
  BitDiff diff;
  const at::Tensor a = actual.contiguous().view(at::kByte).reshape({actual.numel(), -1});
  const at::Tensor b = expected.contiguous().view(at::kByte).reshape({expected.numel(), -1});
  const at::Tensor differs = (a != b).any(1);
  diff.mismatches = differs.sum().item<std::int64_t>();
  std::ostringstream out;
  out << diff.mismatches << " of " << actual.numel() << " elements differ";
  if (diff.mismatches > 0) {
    diff.first_index = at::nonzero(differs)[0][0].item<std::int64_t>();
    const at::Tensor va = actual.flatten().to(at::kDouble);
    const at::Tensor vb = expected.flatten().to(at::kDouble);
    const at::Tensor gap = (va - vb).abs().masked_fill(va.isnan() & vb.isnan(), 0.0);
    diff.max_abs_difference = gap.max().item<double>();
    out << "; max |difference| " << diff.max_abs_difference << "; first at " << diff.first_index
        << ": " << va[diff.first_index].item<double>() << " vs "
        << vb[diff.first_index].item<double>();
    if (input.defined()) out << " (input " << input.flatten()[diff.first_index].item<double>() << ")";
  }
  diff.text = out.str();
  return diff;
}

/// Every finite value of a 16-bit float dtype (Half or BFloat16), as that dtype.
inline at::Tensor all_finite_16bit(at::ScalarType dtype) {
  const at::Tensor bits = at::arange(0, 65536, at::kInt).to(at::kShort);
  const at::Tensor values = bits.view(dtype);
  return values.index({at::isfinite(values)});
}

}  // namespace apo::quant::test
