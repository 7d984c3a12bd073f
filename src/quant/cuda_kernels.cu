// CUDA quantization kernels: row amax, encode and decode. The arithmetic per
// element is the shared codec (codec.hpp, codec_lanes.hpp) and the work per
// lane is cuda_tiles.hpp: both run on the CPU in the tests too. Here: one warp
// per tile in a grid-stride loop, a warp reduction and one atomic per tile for
// amax, and the launches with their error checks.

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "cuda_kernels.hpp"
#include "cuda_tiles.hpp"

namespace apo::quant::cuda {
namespace {

using detail::elem_storage_t;
namespace codec = detail::codec;
namespace tiles = detail::tiles;

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / tiles::kWarpLanes;
// Resident warps per SM on sm_80..sm_90 (2048 threads): tiles to keep every SM
// busy.
constexpr std::int64_t kWarpsPerSm = 64;

// Device storage of an Elem: the bits, as the codec takes them.
template <Elem E>
using Storage = elem_storage_t<E>;

struct WarpPosition {
  int lane;
  std::int64_t warp;
  std::int64_t warps;
};

__device__ __forceinline__ WarpPosition warp_position() {
  const std::int64_t thread = std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  return {static_cast<int>(threadIdx.x % tiles::kWarpLanes), thread / tiles::kWarpLanes,
          std::int64_t{gridDim.x} * blockDim.x / tiles::kWarpLanes};
}

// amax_bits[row] holds the row's amax as float bits: non-negative floats order
// as their bits, and +infinity (which NaN reports as) above every finite value,
// so atomicMax on the bits is max.
template <Elem E>
__global__ void amax_kernel(const Storage<E>* x, tiles::Tiles t, unsigned int* amax_bits) {
  const WarpPosition p = warp_position();
  for (std::int64_t tile = p.warp; tile < t.count(); tile += p.warps) {
    const tiles::Span s = tiles::span_of(t, tile);
    // The loop is uniform across the warp, so every lane reaches the reduction.
    const unsigned int largest =
        __reduce_max_sync(0xFFFFFFFFu, tiles::lane_amax_bits<E>(x, t, s, p.lane));
    if (p.lane == 0) {
      atomicMax(&amax_bits[s.row], codec::bits_of(codec::magnitude_from_bits<E>(largest)));
    }
  }
}

template <Elem E, Code C>
__global__ void encode_kernel(const Storage<E>* x, tiles::Tiles t, const float* amax,
                              float amax_floor, float amax_ceiling, float* scales,
                              std::uint8_t* codes) {
  const WarpPosition p = warp_position();
  for (std::int64_t tile = p.warp; tile < t.count(); tile += p.warps) {
    const tiles::Span s = tiles::span_of(t, tile);
    const float scale =
        codec::scale_from_amax(amax[s.row], detail::code_max<C>(), amax_floor, amax_ceiling);
    if (p.lane == 0 && s.begin == s.row * t.row_length) scales[s.row] = scale;
    tiles::lane_encode<E, C>(x, t, s, p.lane, scale, codes);
  }
}

template <Code C, Elem E>
__global__ void decode_kernel(const std::uint8_t* codes, tiles::Tiles t, const float* scales,
                              Storage<E>* out) {
  const WarpPosition p = warp_position();
  for (std::int64_t tile = p.warp; tile < t.count(); tile += p.warps) {
    const tiles::Span s = tiles::span_of(t, tile);
    tiles::lane_decode<C, E>(codes, t, s, p.lane, scales[s.row], out);
  }
}

constexpr const char* kElemNames[] = {"f32", "f16", "bf16"};
constexpr const char* kCodeNames[] = {"e4m3", "e5m2", "int8"};

std::string error_text(cudaError_t error) {
  return std::string(cudaGetErrorName(error)) + " (" + cudaGetErrorString(error) + ")";
}

// The number of SMs of the current device, cached per device (the query is not
// free).
int sm_count() {
  static std::atomic<int> cached[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  const bool cacheable = device >= 0 && device < 64;
  if (cacheable) {
    if (const int known = cached[device].load(std::memory_order_relaxed); known > 0) return known;
  }
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      count <= 0) {
    cudaGetLastError();
    return 1;
  }
  if (cacheable) cached[device].store(count, std::memory_order_relaxed);
  return count;
}

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// The split for a launch and its grid: enough blocks for the tiles, at most a
// few waves.
struct Launch {
  tiles::Tiles t;
  unsigned int blocks;
};

Launch plan(std::int64_t rows, std::int64_t row_length, bool aligned) {
  const std::int64_t sms = sm_count();
  Launch l{tiles::plan_tiles(rows, row_length, sms * kWarpsPerSm, aligned), 1};
  const std::int64_t wanted = (l.t.count() + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const std::int64_t cap = sms * (kWarpsPerSm / kWarpsPerBlock) * 4;
  l.blocks = static_cast<unsigned int>(wanted < cap ? wanted : cap);
  return l;
}

// The outcome of a launch: its launch error, and in debug builds its execution
// error too.
std::string launched(const std::string& kernel, cudaStream_t stream) {
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return kernel + " could not launch: " + error_text(error);
#ifndef NDEBUG
  error = cudaStreamSynchronize(stream);
  if (error != cudaSuccess) return kernel + " failed: " + error_text(error);
#else
  (void)stream;
#endif
  return {};
}

template <Elem E>
std::string launch_amax(const void* x, std::int64_t rows, std::int64_t row_length, float* amax,
                        cudaStream_t stream) {
  const Launch l = plan(rows, row_length, aligned16(x));
  const cudaError_t cleared =
      cudaMemsetAsync(amax, 0, static_cast<std::size_t>(rows) * sizeof(float), stream);
  if (cleared != cudaSuccess) return "cudaMemsetAsync of the amax buffer: " + error_text(cleared);
  amax_kernel<E><<<l.blocks, kThreads, 0, stream>>>(static_cast<const Storage<E>*>(x), l.t,
                                                    reinterpret_cast<unsigned int*>(amax));
  return launched(std::string("apo amax<") + kElemNames[static_cast<int>(E)] + ">", stream);
}

template <Elem E, Code C>
std::string launch_encode(const void* x, std::int64_t rows, std::int64_t row_length,
                          const float* amax, float amax_floor, float amax_ceiling, float* scales,
                          void* codes, cudaStream_t stream) {
  const Launch l = plan(rows, row_length, aligned16(x) && aligned16(codes));
  encode_kernel<E, C><<<l.blocks, kThreads, 0, stream>>>(static_cast<const Storage<E>*>(x), l.t,
                                                         amax, amax_floor, amax_ceiling, scales,
                                                         static_cast<std::uint8_t*>(codes));
  return launched(std::string("apo encode<") + kElemNames[static_cast<int>(E)] + ", " +
                      kCodeNames[static_cast<int>(C)] + ">",
                  stream);
}

template <Code C, Elem E>
std::string launch_decode(const void* codes, std::int64_t rows, std::int64_t row_length,
                          const float* scales, void* out, cudaStream_t stream) {
  const Launch l = plan(rows, row_length, aligned16(codes) && aligned16(out));
  decode_kernel<C, E><<<l.blocks, kThreads, 0, stream>>>(
      static_cast<const std::uint8_t*>(codes), l.t, scales, static_cast<Storage<E>*>(out));
  return launched(std::string("apo decode<") + kCodeNames[static_cast<int>(C)] + ", " +
                      kElemNames[static_cast<int>(E)] + ">",
                  stream);
}

template <Elem E>
std::string encode_as(const void* x, std::int64_t rows, std::int64_t row_length, const float* amax,
                      float amax_floor, float amax_ceiling, Code code, float* scales, void* codes,
                      cudaStream_t stream) {
  switch (code) {
    case Code::e4m3:
      return launch_encode<E, Code::e4m3>(x, rows, row_length, amax, amax_floor, amax_ceiling,
                                          scales, codes, stream);
    case Code::e5m2:
      return launch_encode<E, Code::e5m2>(x, rows, row_length, amax, amax_floor, amax_ceiling,
                                          scales, codes, stream);
    case Code::int8:
      return launch_encode<E, Code::int8>(x, rows, row_length, amax, amax_floor, amax_ceiling,
                                          scales, codes, stream);
  }
  return "unknown code format";
}

template <Code C>
std::string decode_as(const void* codes, std::int64_t rows, std::int64_t row_length,
                      const float* scales, void* out, Elem elem, cudaStream_t stream) {
  switch (elem) {
    case Elem::f32:
      return launch_decode<C, Elem::f32>(codes, rows, row_length, scales, out, stream);
    case Elem::f16:
      return launch_decode<C, Elem::f16>(codes, rows, row_length, scales, out, stream);
    case Elem::bf16:
      return launch_decode<C, Elem::bf16>(codes, rows, row_length, scales, out, stream);
  }
  return "unknown element type";
}

}  // namespace

std::string amax(const void* x, Elem elem, std::int64_t rows, std::int64_t row_length, float* amax,
                 void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (elem) {
    case Elem::f32:
      return launch_amax<Elem::f32>(x, rows, row_length, amax, s);
    case Elem::f16:
      return launch_amax<Elem::f16>(x, rows, row_length, amax, s);
    case Elem::bf16:
      return launch_amax<Elem::bf16>(x, rows, row_length, amax, s);
  }
  return "unknown element type";
}

std::string encode(const void* x, Elem elem, std::int64_t rows, std::int64_t row_length,
                   const float* amax, float amax_floor, float amax_ceiling, Code code,
                   float* scales, void* codes, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (elem) {
    case Elem::f32:
      return encode_as<Elem::f32>(x, rows, row_length, amax, amax_floor, amax_ceiling, code, scales,
                                  codes, s);
    case Elem::f16:
      return encode_as<Elem::f16>(x, rows, row_length, amax, amax_floor, amax_ceiling, code, scales,
                                  codes, s);
    case Elem::bf16:
      return encode_as<Elem::bf16>(x, rows, row_length, amax, amax_floor, amax_ceiling, code,
                                   scales, codes, s);
  }
  return "unknown element type";
}

std::string decode(const void* codes, Code code, std::int64_t rows, std::int64_t row_length,
                   const float* scales, void* out, Elem elem, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (code) {
    case Code::e4m3:
      return decode_as<Code::e4m3>(codes, rows, row_length, scales, out, elem, s);
    case Code::e5m2:
      return decode_as<Code::e5m2>(codes, rows, row_length, scales, out, elem, s);
    case Code::int8:
      return decode_as<Code::int8>(codes, rows, row_length, scales, out, elem, s);
  }
  return "unknown code format";
}

int compute_capability(int device) {
  int major = 0;
  int minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return major * 10 + minor;
}

}  // namespace apo::quant::cuda
