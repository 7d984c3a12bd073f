// The fused quantization kernels' drivers: validation, the split of tensors into runs for ATen's
// thread pool (CPU) or the launch of the CUDA kernels, and the errors that name a tensor.

#include "apo/quant/kernels.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstddef>

#include "internal.hpp"

#ifdef APO_WITH_CUDA
#include <c10/core/DeviceGuard.h>

#include "../core/cuda_context.hpp"
#include "cuda_kernels.hpp"
#endif

namespace apo::quant {
namespace detail {

std::string shape_text(at::IntArrayRef shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

Elem elem_of(at::ScalarType dtype, std::string_view name) {
  switch (dtype) {
    case at::kFloat:
      return Elem::f32;
    case at::kHalf:
      return Elem::f16;
    case at::kBFloat16:
      return Elem::bf16;
    default:
      fail_tensor(ErrorCode::Unsupported, name,
                  "dtype {} is not supported; expected Float, Half or BFloat16",
                  c10::toString(dtype));
  }
}

Code code_of(QFormat format) {
  switch (format) {
    case QFormat::fp8_e4m3:
      return Code::e4m3;
    case QFormat::fp8_e5m2:
      return Code::e5m2;
    default:
      return Code::int8;
  }
}

void check_quantizable(const at::Tensor& x, QuantSpec spec, std::string_view name) {
  if (!x.defined()) fail_tensor(ErrorCode::InvalidArgument, name, "tensor is undefined");
  if (!x.is_floating_point()) {
    fail_tensor(ErrorCode::InvalidArgument, name,
                "dtype {} is not floating point; expected a Float, Half or BFloat16 tensor",
                c10::toString(x.scalar_type()));
  }
  elem_of(x.scalar_type(), name);
  if (x.numel() == 0) {
    fail_tensor(ErrorCode::InvalidArgument, name, "tensor is empty (shape {})",
                shape_text(x.sizes()));
  }
  if (x.is_cuda()) {
#ifndef APO_WITH_CUDA
    fail_tensor(ErrorCode::Unsupported, name,
                "tensor is on {}, but this apo was built without CUDA", x.device().str());
#endif
  } else if (!x.is_cpu()) {
    fail_tensor(ErrorCode::Unsupported, name,
                "tensor is on {}; apo quantizes on the CPU and on CUDA devices", x.device().str());
  }
  const bool scaled = traits(spec.format).scaled;
  if (scaled && spec.scaling == Scaling::none) {
    fail_tensor(ErrorCode::InvalidArgument, name,
                "format {} needs per_tensor or per_row scaling, not none", to_string(spec.format));
  }
  if (!scaled && spec.scaling != Scaling::none) {
    fail_tensor(ErrorCode::InvalidArgument, name, "format {} takes no scales, but scaling is {}",
                to_string(spec.format), to_string(spec.scaling));
  }
}

#ifdef APO_WITH_CUDA
void* current_cuda_stream(at::Device device) {
  return apo::detail::torch_current_cuda_stream(device.has_index() ? device.index() : 0);
}
#endif

}  // namespace detail

namespace {

using detail::Code;
using detail::Elem;
using detail::fail_tensor;
using detail::RowKernels;

// Elements per parallel work item, and the elements below which one thread does everything: a
// parallel region costs tens of microseconds (more on a loaded machine), a quarter million
// elements take about as long on one core.
constexpr std::int64_t kBlock = 8192;
constexpr std::int64_t kGrainElements = 1 << 18;
constexpr std::int64_t kGrainBlocks = kGrainElements / kBlock;

bool avx2_runs() {
  static const bool runs = detail::avx2_row_kernels() != nullptr && detail::cpu_runs_avx2();
  return runs;
}

bool avx512_runs() {
  static const bool runs = detail::avx512_row_kernels() != nullptr && detail::cpu_runs_avx512();
  return runs;
}

const RowKernels& row_kernels(CpuKernel kernel) {
  switch (kernel) {
    case CpuKernel::best:
      if (avx512_runs()) return *detail::avx512_row_kernels();
      return avx2_runs() ? *detail::avx2_row_kernels() : detail::portable_row_kernels();
    case CpuKernel::avx512:
      if (!avx512_runs()) {
        fail(ErrorCode::Unsupported,
             "the AVX-512 quantization kernels need an x86-64 CPU with AVX-512 F, BW, VL and DQ");
      }
      return *detail::avx512_row_kernels();
    case CpuKernel::avx2:
      if (!avx2_runs()) {
        fail(ErrorCode::Unsupported,
             "the AVX2 quantization kernels need an x86-64 CPU with AVX2 and F16C");
      }
      return *detail::avx2_row_kernels();
    case CpuKernel::portable:
      return detail::portable_row_kernels();
  }
  return detail::portable_row_kernels();
}

std::size_t elem_bytes(Elem e) {
  return e == Elem::f32 ? 4 : 2;
}

// Calls f(row, first, count) for runs of elements in [begin, end) that stay within one row,
// in blocks spread over ATen's threads.
template <class F>
void parallel_runs(std::int64_t begin, std::int64_t end, std::int64_t row_length, const F& f) {
  const std::int64_t blocks = (end - begin + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrainBlocks, [&](std::int64_t b0, std::int64_t b1) {
    std::int64_t i = begin + b0 * kBlock;
    const std::int64_t stop = std::min(end, begin + b1 * kBlock);
    while (i < stop) {
      const std::int64_t row = i / row_length;
      const std::int64_t run_end = std::min(stop, (row + 1) * row_length);
      f(row, i, run_end - i);
      i = run_end;
    }
  });
}

bool finite(float amax) {
  return amax <= FLT_MAX;
}

// The scale rule the CUDA kernels share (codec.hpp); NaN for a non-finite amax, which the CPU
// paths reject.
float scale_of(float amax, float max_value) {
  return detail::codec::scale_from_amax(amax, max_value, kAmaxFloor, kAmaxCeiling);
}

// max |x| of a contiguous CPU tensor; +infinity if it holds NaN or infinity.
float cpu_amax(const at::Tensor& x, const RowKernels& k) {
  const Elem e = detail::elem_of(x.scalar_type(), {});
  const auto* in = static_cast<const std::byte*>(x.const_data_ptr());
  const std::int64_t n = x.numel();
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  return at::parallel_reduce(
      0, blocks, kGrainBlocks, 0.0f,
      [&](std::int64_t b0, std::int64_t b1, float init) {
        const std::int64_t first = b0 * kBlock;
        const std::int64_t count = std::min(n, b1 * kBlock) - first;
        return std::max(init, k.amax[static_cast<int>(e)](in + first * elem_bytes(e), count));
      },
      [](float a, float b) { return std::max(a, b); });
}

// Scales of a contiguous CPU tensor into `scales` (float32 [rows] or [1]); false if the tensor
// holds NaN or infinity.
bool cpu_scales(const at::Tensor& x, QuantSpec spec, std::int64_t rows, const RowKernels& k,
                float* scales) {
  const float max_value = traits(spec.format).max_value;
  if (spec.scaling == Scaling::per_tensor || rows == 1) {
    const float amax = cpu_amax(x, k);
    scales[0] = scale_of(amax, max_value);
    if (spec.scaling == Scaling::per_row) std::fill(scales, scales + rows, scales[0]);
    return finite(amax);
  }
  const Elem e = detail::elem_of(x.scalar_type(), {});
  const auto* in = static_cast<const std::byte*>(x.const_data_ptr());
  const std::int64_t length = x.numel() / rows;
  std::atomic<bool> all_finite{true};
  at::parallel_for(0, rows, std::max<std::int64_t>(1, kGrainElements / length),
                   [&](std::int64_t r0, std::int64_t r1) {
                     for (std::int64_t r = r0; r < r1; ++r) {
                       const float amax =
                           k.amax[static_cast<int>(e)](in + r * length * elem_bytes(e), length);
                       if (!finite(amax)) all_finite.store(false, std::memory_order_relaxed);
                       scales[r] = scale_of(amax, max_value);
                     }
                   });
  return all_finite.load();
}

// Codes and scales of a contiguous CPU tensor. Per row, each row's amax and codes are computed
// back to back so the row is read from memory once and from cache the second time. Returns
// false if the tensor holds NaN or infinity (codes are then meaningless).
bool cpu_quantize(const at::Tensor& x, QuantSpec spec, const RowKernels& k, at::Tensor& codes,
                  at::Tensor& scales) {
  const std::int64_t rows = scaling_rows(x.sizes());
  const std::int64_t n = x.numel();
  const std::int64_t length = n / rows;
  const Elem e = detail::elem_of(x.scalar_type(), {});
  const Code c = detail::code_of(spec.format);
  const auto encode = k.encode[static_cast<int>(e)][static_cast<int>(c)];
  const auto* in = static_cast<const std::byte*>(x.const_data_ptr());
  auto* out = static_cast<std::uint8_t*>(codes.mutable_data_ptr());
  float* s = scales.mutable_data_ptr<float>();

  if (spec.scaling == Scaling::per_tensor || rows == 1) {
    if (!cpu_scales(x, spec, rows, k, s)) return false;
    const float scale = s[0];
    parallel_runs(0, n, n, [&](std::int64_t, std::int64_t first, std::int64_t count) {
      encode(in + first * elem_bytes(e), count, scale, out + first, nullptr);
    });
    return true;
  }
  const float max_value = traits(spec.format).max_value;
  std::atomic<bool> all_finite{true};
  at::parallel_for(0, rows, std::max<std::int64_t>(1, kGrainElements / length),
                   [&](std::int64_t r0, std::int64_t r1) {
                     for (std::int64_t r = r0; r < r1; ++r) {
                       const std::byte* row = in + r * length * elem_bytes(e);
                       const float amax = k.amax[static_cast<int>(e)](row, length);
                       s[r] = scale_of(amax, max_value);
                       if (!finite(amax)) {
                         all_finite.store(false, std::memory_order_relaxed);
                         continue;
                       }
                       const std::byte* next = r + 1 < r1 ? row + length * elem_bytes(e) : nullptr;
                       encode(row, length, s[r], out + r * length, next);
                     }
                   });
  return all_finite.load();
}

// Rows [row_begin, row_end) of a scaled CPU QTensor into contiguous `out`.
void cpu_decode(const QTensor& q, std::int64_t row_begin, std::int64_t row_end, at::Tensor& out,
                const RowKernels& k) {
  const Elem e = detail::elem_of(out.scalar_type(), q.name());
  const Code c = detail::code_of(q.format());
  const auto decode = k.decode[static_cast<int>(c)][static_cast<int>(e)];
  const std::int64_t length = q.row_length();
  const auto* codes =
      static_cast<const std::uint8_t*>(q.data().const_data_ptr()) + row_begin * length;
  auto* result = static_cast<std::byte*>(out.mutable_data_ptr());
  const float* s = q.scales().const_data_ptr<float>();
  const bool per_row = q.scaling() == Scaling::per_row;
  parallel_runs(0, (row_end - row_begin) * length, length,
                [&](std::int64_t row, std::int64_t first, std::int64_t count) {
                  const float scale = per_row ? s[row_begin + row] : s[0];
                  decode(codes + first, count, scale, result + first * elem_bytes(e));
                });
}

// Throws the error for a tensor holding NaN or infinity, naming the first such element.
[[noreturn]] void fail_nonfinite(const at::Tensor& x, std::string_view name) {
  const at::Tensor bad = at::logical_not(at::isfinite(x)).flatten();
  const std::int64_t count = bad.sum().item<std::int64_t>();
  const std::int64_t first = count > 0 ? at::nonzero(bad)[0][0].item<std::int64_t>() : 0;
  const double value = x.flatten()[first].item<double>();
  std::vector<std::int64_t> index(static_cast<std::size_t>(x.dim()));
  std::int64_t rest = first;
  for (std::int64_t d = x.dim() - 1; d >= 0; --d) {
    index[static_cast<std::size_t>(d)] = rest % x.size(d);
    rest /= x.size(d);
  }
  fail_tensor(ErrorCode::InvalidArgument, name,
              "holds {} NaN or infinite value{} (first: {} at {}); apo does not quantize them",
              count, count == 1 ? "" : "s", value, detail::shape_text(index));
}

#ifdef APO_WITH_CUDA
void check_cuda(const std::string& error, std::string_view name) {
  if (!error.empty()) fail_tensor(ErrorCode::Internal, name, "CUDA: {}", error);
}

// amax per scaling row ([rows]) or of the whole tensor ([1]), on the device; +infinity marks
// NaN/inf.
at::Tensor cuda_amax(const at::Tensor& x, bool per_row, std::string_view name) {
  const std::int64_t rows = per_row ? scaling_rows(x.sizes()) : 1;
  at::Tensor amax = at::empty({rows}, x.options().dtype(at::kFloat));
  check_cuda(
      cuda::amax(x.const_data_ptr(), detail::elem_of(x.scalar_type(), name), rows, x.numel() / rows,
                 amax.mutable_data_ptr<float>(), detail::current_cuda_stream(x.device())),
      name);
  return amax;
}

// Scales from amax on the device. The divisor is a device tensor, not a scalar: ATen's CUDA
// division by a CPU scalar multiplies by its reciprocal, which is not bit-identical.
at::Tensor scales_from_amax(const at::Tensor& amax, QFormat format) {
  return at::div(amax.clamp(kAmaxFloor, kAmaxCeiling),
                 at::full({1}, traits(format).max_value, amax.options()));
}

// Codes and scales on the device. `checked`: NaN/inf is an error (one synchronization);
// otherwise a row holding them gets a NaN scale and NaN codes (the encode kernel's rule).
std::pair<at::Tensor, at::Tensor> cuda_quantize(const at::Tensor& x, QuantSpec spec, bool checked,
                                                std::string_view name) {
  const c10::DeviceGuard guard(x.device());
  const bool per_row = spec.scaling == Scaling::per_row;
  const std::int64_t rows = per_row ? scaling_rows(x.sizes()) : 1;
  const at::Tensor amax = cuda_amax(x, per_row, name);
  if (checked && !finite(amax.max().item<float>())) fail_nonfinite(x, name);
  at::Tensor scales = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor codes =
      at::empty(x.sizes(), x.options().dtype(storage_dtype(spec.format, x.scalar_type())));
  check_cuda(cuda::encode(x.const_data_ptr(), detail::elem_of(x.scalar_type(), name), rows,
                          x.numel() / rows, amax.const_data_ptr<float>(), kAmaxFloor, kAmaxCeiling,
                          detail::code_of(spec.format), scales.mutable_data_ptr<float>(),
                          codes.mutable_data_ptr(), detail::current_cuda_stream(x.device())),
             name);
  return {codes, scales};
}

void cuda_decode(const QTensor& q, std::int64_t row_begin, std::int64_t row_end, at::Tensor& out) {
  const c10::DeviceGuard guard(q.device());
  const std::int64_t length = q.row_length();
  const std::int64_t rows = row_end - row_begin;
  const bool per_row = q.scaling() == Scaling::per_row;
  const auto* codes =
      static_cast<const std::uint8_t*>(q.data().const_data_ptr()) + row_begin * length;
  const float* scales = q.scales().const_data_ptr<float>() + (per_row ? row_begin : 0);
  // Per tensor, the rows are one run of elements with one scale.
  check_cuda(cuda::decode(codes, detail::code_of(q.format()), per_row ? rows : 1,
                          per_row ? length : rows * length, scales, out.mutable_data_ptr(),
                          detail::elem_of(out.scalar_type(), q.name()),
                          detail::current_cuda_stream(q.device())),
             q.name());
}
#endif

// max |x| of a contiguous tensor on its device; +infinity if it holds NaN or infinity.
float tensor_amax(const at::Tensor& x, CpuKernel kernel, std::string_view name) {
#ifdef APO_WITH_CUDA
  if (x.is_cuda()) {
    const c10::DeviceGuard guard(x.device());
    return cuda_amax(x, false, name).item<float>();
  }
#endif
  (void)name;
  return cpu_amax(x, row_kernels(kernel));
}

void check_out_dtype(at::ScalarType dtype, std::string_view name) {
  detail::elem_of(dtype, name);
}

}  // namespace

bool cpu_kernel_available(CpuKernel kernel) {
  switch (kernel) {
    case CpuKernel::avx512:
      return avx512_runs();
    case CpuKernel::avx2:
      return avx2_runs();
    default:
      return true;
  }
}

std::string_view best_cpu_kernel_name() {
  return row_kernels(CpuKernel::best).name;
}

QTensor quantize(const at::Tensor& input, QuantSpec spec, std::string_view name, CpuKernel kernel) {
  detail::check_quantizable(input, spec, name);
  const at::Tensor x = input.contiguous();
  const FormatTraits t = traits(spec.format);
  if (!t.scaled) {
    const float amax = tensor_amax(x, kernel, name);
    if (!finite(amax)) fail_nonfinite(x, name);
    if (spec.format == QFormat::fp16 && amax > t.max_value) {
      fail_tensor(ErrorCode::InvalidArgument, name,
                  "holds values up to {} in magnitude, beyond fp16's largest finite value 65504; "
                  "store it as bf16 or in a scaled format (fp8, int8)",
                  amax);
    }
    // float32 values beyond bfloat16's largest finite value would round to infinity: saturate.
    const at::Tensor source =
        spec.format == QFormat::bf16 && amax > t.max_value ? x.clamp(-t.max_value, t.max_value) : x;
    const at::Tensor data =
        spec.format == QFormat::none ? x : source.to(storage_dtype(spec.format, x.scalar_type()));
    return QTensor::from_parts(std::string(name), data, {}, spec.format, Scaling::none,
                               x.scalar_type());
  }
#ifdef APO_WITH_CUDA
  if (x.is_cuda()) {
    auto [codes, scales] = cuda_quantize(x, spec, true, name);
    return QTensor::from_parts(std::string(name), codes, scales, spec.format, spec.scaling,
                               x.scalar_type());
  }
#endif
  const std::int64_t rows = scaling_rows(x.sizes());
  at::Tensor codes =
      at::empty(x.sizes(), x.options().dtype(storage_dtype(spec.format, x.scalar_type())));
  at::Tensor scales =
      at::empty({spec.scaling == Scaling::per_row ? rows : 1}, x.options().dtype(at::kFloat));
  if (!cpu_quantize(x, spec, row_kernels(kernel), codes, scales)) fail_nonfinite(x, name);
  return QTensor::from_parts(std::string(name), codes, scales, spec.format, spec.scaling,
                             x.scalar_type());
}

at::Tensor compute_scales(const at::Tensor& input, QuantSpec spec, std::string_view name,
                          CpuKernel kernel) {
  detail::check_quantizable(input, spec, name);
  if (!traits(spec.format).scaled) {
    fail_tensor(ErrorCode::InvalidArgument, name, "format {} has no scales",
                to_string(spec.format));
  }
  const at::Tensor x = input.contiguous();
#ifdef APO_WITH_CUDA
  if (x.is_cuda()) {
    const c10::DeviceGuard guard(x.device());
    const at::Tensor amax = cuda_amax(x, spec.scaling == Scaling::per_row, name);
    if (!finite(amax.max().item<float>())) fail_nonfinite(x, name);
    return scales_from_amax(amax, spec.format);
  }
#endif
  const std::int64_t rows = scaling_rows(x.sizes());
  at::Tensor scales =
      at::empty({spec.scaling == Scaling::per_row ? rows : 1}, x.options().dtype(at::kFloat));
  if (!cpu_scales(x, spec, rows, row_kernels(kernel), scales.mutable_data_ptr<float>())) {
    fail_nonfinite(x, name);
  }
  return scales;
}

void dequantize_rows_into(const QTensor& q, std::int64_t row_begin, std::int64_t row_end,
                          at::Tensor& out, CpuKernel kernel) {
  if (row_begin < 0 || row_begin >= row_end || row_end > q.rows()) {
    fail_tensor(ErrorCode::InvalidArgument, q.name(), "rows [{}, {}) are not within [0, {})",
                row_begin, row_end, q.rows());
  }
  const std::int64_t rows = row_end - row_begin;
  if (!out.defined() || !out.is_contiguous() || out.numel() != rows * q.row_length() ||
      out.device() != q.device()) {
    fail_tensor(ErrorCode::InvalidArgument, q.name(),
                "the output for rows [{}, {}) must be a contiguous tensor of {} elements on {}",
                row_begin, row_end, rows * q.row_length(), q.device().str());
  }
  check_out_dtype(out.scalar_type(), q.name());
  if (!traits(q.format()).scaled) {
    out.view({rows, q.row_length()})
        .copy_(q.data().view({q.rows(), q.row_length()}).narrow(0, row_begin, rows));
    return;
  }
#ifdef APO_WITH_CUDA
  if (q.device().is_cuda()) {
    cuda_decode(q, row_begin, row_end, out);
    return;
  }
#endif
  cpu_decode(q, row_begin, row_end, out, row_kernels(kernel));
}

at::Tensor dequantize(const QTensor& q, std::optional<at::ScalarType> dtype, CpuKernel kernel) {
  const at::ScalarType out_dtype = dtype.value_or(q.original_dtype());
  if (!traits(q.format()).scaled) return q.data().to(out_dtype);
  check_out_dtype(out_dtype, q.name());
  at::Tensor out = at::empty(q.shape(), q.data().options().dtype(out_dtype));
  dequantize_rows_into(q, 0, q.rows(), out, kernel);
  return out;
}

#ifdef APO_WITH_CUDA
namespace detail {

std::pair<at::Tensor, at::Tensor> quantize_unchecked_cuda(const at::Tensor& x, QuantSpec spec) {
  return cuda_quantize(x.contiguous(), spec, false, "activation");
}

}  // namespace detail
#endif

}  // namespace apo::quant
