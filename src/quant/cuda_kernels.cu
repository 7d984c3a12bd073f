// CUDA quantization kernels: segment amax, encode and decode, with the numerics of the CPU
// kernels (IEEE division by the scale, clamp, round to nearest even, saturating fp8 casts).
// The fp8 conversions are cuda_fp8.h's, which round to nearest even and, with __NV_SATFINITE,
// saturate; before sm_89 they are emulated in software with the same results.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cfloat>
#include <cstdint>

#include "cuda_kernels.hpp"

namespace apo::quant::cuda {
namespace {

constexpr int kThreads = 256;
constexpr std::int64_t kMaxBlocks = 65535;

__device__ __forceinline__ float load(const float* p, std::int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, std::int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, std::int64_t i) {
  return __bfloat162float(p[i]);
}

__device__ __forceinline__ void store(float* p, std::int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__half* p, std::int64_t i, float v) {
  p[i] = __float2half_rn(v);
}
__device__ __forceinline__ void store(__nv_bfloat16* p, std::int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

template <class T>
__global__ void segment_amax_kernel(const T* x, std::int64_t n, std::int64_t segment,
                                    std::int64_t segments, float* amax) {
  __shared__ float warp_max[kThreads / 32];
  for (std::int64_t s = blockIdx.x; s < segments; s += gridDim.x) {
    const std::int64_t begin = s * segment;
    const std::int64_t end = begin + segment < n ? begin + segment : n;
    float m = 0.0f;
    for (std::int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      float a = fabsf(load(x, i));
      if (!(a <= FLT_MAX)) a = CUDART_INF_F;  // NaN and infinity both report as infinity
      m = fmaxf(m, a);
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      m = fmaxf(m, __shfl_down_sync(0xFFFFFFFFu, m, offset));
    }
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
      float block_max = 0.0f;
      for (int w = 0; w < kThreads / 32; ++w) block_max = fmaxf(block_max, warp_max[w]);
      amax[s] = block_max;
    }
    __syncthreads();
  }
}

template <Code C>
__device__ __forceinline__ std::uint8_t encode_one(float x, float scale) {
  const float y = __fdiv_rn(x, scale);
  if constexpr (C == Code::e4m3) {
    return __nv_cvt_float_to_fp8(fminf(fmaxf(y, -448.0f), 448.0f), __NV_SATFINITE, __NV_E4M3);
  } else if constexpr (C == Code::e5m2) {
    return __nv_cvt_float_to_fp8(fminf(fmaxf(y, -57344.0f), 57344.0f), __NV_SATFINITE, __NV_E5M2);
  } else {
    const int q = __float2int_rn(fminf(fmaxf(y, -127.0f), 127.0f));
    return static_cast<std::uint8_t>(static_cast<std::int8_t>(q));
  }
}

template <Code C>
__device__ __forceinline__ float decode_one(std::uint8_t code) {
  if constexpr (C == Code::int8) {
    return static_cast<float>(static_cast<std::int8_t>(code));
  } else {
    const __half_raw h = __nv_cvt_fp8_to_halfraw(code, C == Code::e4m3 ? __NV_E4M3 : __NV_E5M2);
    return __half2float(__half(h));
  }
}

template <class T, Code C>
__global__ void encode_kernel(const T* x, std::int64_t n, std::int64_t row_length,
                              const float* scales, bool per_row, std::uint8_t* codes) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float scale = scales[per_row ? i / row_length : 0];
    codes[i] = encode_one<C>(load(x, i), scale);
  }
}

template <class T, Code C>
__global__ void decode_kernel(const std::uint8_t* codes, std::int64_t n, std::int64_t row_length,
                              std::int64_t first_row, const float* scales, bool per_row, T* out) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float scale = scales[per_row ? first_row + i / row_length : 0];
    store(out, i, __fmul_rn(decode_one<C>(codes[i]), scale));
  }
}

unsigned int blocks_for(std::int64_t n) {
  const std::int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < kMaxBlocks ? (blocks > 0 ? blocks : 1) : kMaxBlocks);
}

const char* status() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

template <class T>
const char* launch_encode(const void* x, std::int64_t n, std::int64_t row_length,
                          const float* scales, bool per_row, Code code, void* codes,
                          cudaStream_t stream) {
  const T* in = static_cast<const T*>(x);
  auto* out = static_cast<std::uint8_t*>(codes);
  switch (code) {
    case Code::e4m3:
      encode_kernel<T, Code::e4m3>
          <<<blocks_for(n), kThreads, 0, stream>>>(in, n, row_length, scales, per_row, out);
      break;
    case Code::e5m2:
      encode_kernel<T, Code::e5m2>
          <<<blocks_for(n), kThreads, 0, stream>>>(in, n, row_length, scales, per_row, out);
      break;
    case Code::int8:
      encode_kernel<T, Code::int8>
          <<<blocks_for(n), kThreads, 0, stream>>>(in, n, row_length, scales, per_row, out);
      break;
  }
  return status();
}

template <class T>
const char* launch_decode(const void* codes, Code code, std::int64_t n, std::int64_t row_length,
                          std::int64_t first_row, const float* scales, bool per_row, void* out,
                          cudaStream_t stream) {
  const auto* in = static_cast<const std::uint8_t*>(codes);
  T* result = static_cast<T*>(out);
  switch (code) {
    case Code::e4m3:
      decode_kernel<T, Code::e4m3><<<blocks_for(n), kThreads, 0, stream>>>(
          in, n, row_length, first_row, scales, per_row, result);
      break;
    case Code::e5m2:
      decode_kernel<T, Code::e5m2><<<blocks_for(n), kThreads, 0, stream>>>(
          in, n, row_length, first_row, scales, per_row, result);
      break;
    case Code::int8:
      decode_kernel<T, Code::int8><<<blocks_for(n), kThreads, 0, stream>>>(
          in, n, row_length, first_row, scales, per_row, result);
      break;
  }
  return status();
}

}  // namespace

const char* segment_amax(const void* x, Elem elem, std::int64_t n, std::int64_t segment,
                         float* amax, void* stream) {
  const std::int64_t segments = (n + segment - 1) / segment;
  const auto blocks = static_cast<unsigned int>(segments < kMaxBlocks ? segments : kMaxBlocks);
  auto s = static_cast<cudaStream_t>(stream);
  switch (elem) {
    case Elem::f32:
      segment_amax_kernel<<<blocks, kThreads, 0, s>>>(static_cast<const float*>(x), n, segment,
                                                      segments, amax);
      break;
    case Elem::f16:
      segment_amax_kernel<<<blocks, kThreads, 0, s>>>(static_cast<const __half*>(x), n, segment,
                                                      segments, amax);
      break;
    case Elem::bf16:
      segment_amax_kernel<<<blocks, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(x), n,
                                                      segment, segments, amax);
      break;
  }
  return status();
}

const char* encode(const void* x, Elem elem, std::int64_t n, std::int64_t row_length,
                   const float* scales, bool per_row, Code code, void* codes, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (elem) {
    case Elem::f32:
      return launch_encode<float>(x, n, row_length, scales, per_row, code, codes, s);
    case Elem::f16:
      return launch_encode<__half>(x, n, row_length, scales, per_row, code, codes, s);
    case Elem::bf16:
      return launch_encode<__nv_bfloat16>(x, n, row_length, scales, per_row, code, codes, s);
  }
  return "unknown element type";
}

const char* decode(const void* codes, Code code, std::int64_t n, std::int64_t row_length,
                   std::int64_t first_row, const float* scales, bool per_row, void* out,
                   Elem elem, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (elem) {
    case Elem::f32:
      return launch_decode<float>(codes, code, n, row_length, first_row, scales, per_row, out, s);
    case Elem::f16:
      return launch_decode<__half>(codes, code, n, row_length, first_row, scales, per_row, out, s);
    case Elem::bf16:
      return launch_decode<__nv_bfloat16>(codes, code, n, row_length, first_row, scales, per_row,
                                          out, s);
  }
  return "unknown element type";
}

int compute_capability(int device) {
  int major = 0;
  int minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    return -1;
  }
  return major * 10 + minor;
}

}  // namespace apo::quant::cuda
