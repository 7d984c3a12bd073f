#pragma once

// How the CUDA quantization kernels split their work, and what one lane of a warp does on one
// tile, as __host__ __device__ code: the kernels (cuda_kernels.cu) run it on the GPU, and the CPU
// tests run it lane by lane and compare with the CPU kernels, so that the split, the indexing and
// the vector accesses are tested where no GPU is.
//
// A tile is a run of elements within one row; each warp takes tiles in a grid-stride loop. Rows
// are split into several tiles only when there are too few rows to fill the device (the CPU
// kernels split a single row the same way), so a handful of long rows still use every SM. Each
// lane handles groups of 16 elements with 16-byte loads and stores (16 codes are 16 bytes) where
// the pointers are 16-byte aligned and every row starts on a group; otherwise lanes take single
// elements, still coalesced. The row of a tile costs one division per tile, not per element.

#include "codec_lanes.hpp"

#if defined(__CUDACC__)
#include <cuda_runtime.h>  // uint4
#endif

namespace apo::quant::detail::tiles {

inline constexpr int kWarpLanes = 32;
/// Elements per lane per step: 16 fp8 or int8 codes are one 16-byte store.
inline constexpr int kGroup = 16;
/// Elements a warp covers per step.
inline constexpr std::int64_t kWarpStep = std::int64_t{kWarpLanes} * kGroup;

/// The split of a [rows, row_length] layout into tiles.
struct Tiles {
  std::int64_t rows = 0;
  std::int64_t row_length = 0;
  std::int64_t chunk = 0;          ///< elements per tile (the last tile of a row may be shorter)
  std::int64_t tiles_per_row = 0;  ///< ceil(row_length / chunk)
  bool grouped = false;            ///< lanes take 16-element groups with 16-byte accesses

  APO_HD std::int64_t count() const { return rows * tiles_per_row; }
};

/// Splits rows into tiles: whole rows when there are at least `target_tiles` of them (enough
/// warps for the device), otherwise each row into up to target_tiles / rows tiles of whole warp
/// steps. `aligned`: every pointer the kernel reads or writes is 16-byte aligned. rows >= 1 and
/// row_length >= 1.
inline Tiles plan_tiles(std::int64_t rows, std::int64_t row_length, std::int64_t target_tiles,
                        bool aligned) {
  Tiles t;
  t.rows = rows;
  t.row_length = row_length;
  const std::int64_t steps = (row_length + kWarpStep - 1) / kWarpStep;
  std::int64_t split = rows >= target_tiles ? 1 : (target_tiles + rows - 1) / rows;
  if (split > steps) split = steps;
  const std::int64_t steps_per_tile = (steps + split - 1) / split;
  t.chunk = steps_per_tile * kWarpStep;
  t.tiles_per_row = (row_length + t.chunk - 1) / t.chunk;
  // Groups must not straddle rows: each row starts on a group (or there is only one row).
  t.grouped = aligned && (rows == 1 || row_length % kGroup == 0);
  return t;
}

/// The elements [begin, end) of a tile, and its row.
struct Span {
  std::int64_t row;
  std::int64_t begin;
  std::int64_t end;
};

APO_HD Span span_of(const Tiles& t, std::int64_t tile) {
  const std::int64_t row = tile / t.tiles_per_row;
  const std::int64_t row_begin = row * t.row_length;
  const std::int64_t begin = row_begin + (tile - row * t.tiles_per_row) * t.chunk;
  const std::int64_t row_end = row_begin + t.row_length;
  return {row, begin, begin + t.chunk < row_end ? begin + t.chunk : row_end};
}

/// Copies one group (16 elements) from `source` to `target`, both 16-byte aligned: 16-byte
/// accesses on the device.
template <class T>
APO_HD void copy_group(T* target, const T* source) {
  constexpr int kQuads = kGroup * static_cast<int>(sizeof(T)) / 16;
#if defined(__CUDA_ARCH__)
  const auto* from = reinterpret_cast<const uint4*>(source);
  auto* to = reinterpret_cast<uint4*>(target);
  APO_UNROLL
  for (int q = 0; q < kQuads; ++q) to[q] = from[q];
#else
  __builtin_memcpy(target, source, static_cast<std::size_t>(kQuads) * 16);
#endif
}

/// The end of the grouped part of a span: whole groups from its start.
APO_HD std::int64_t grouped_end(const Span& s) {
  return s.begin + (s.end - s.begin) / kGroup * kGroup;
}

/// The largest magnitude bits (codec::magnitude_bits) of the elements that `lane` handles in the
/// span.
template <Elem E>
APO_HD std::uint32_t lane_amax_bits(const elem_storage_t<E>* x, const Tiles& t, const Span& s,
                                    int lane) {
  using T = elem_storage_t<E>;
  std::uint32_t largest = 0;
  std::int64_t rest = s.begin;
  if (t.grouped) {
    const std::int64_t end = grouped_end(s);
    for (std::int64_t i = s.begin + std::int64_t{lane} * kGroup; i < end; i += kWarpStep) {
      alignas(16) T v[kGroup];
      copy_group(v, x + i);
      APO_UNROLL
      for (int k = 0; k < kGroup; ++k) {
        const std::uint32_t bits = codec::magnitude_bits<E>(v[k]);
        largest = bits > largest ? bits : largest;
      }
    }
    rest = end;
  }
  for (std::int64_t i = rest + lane; i < s.end; i += kWarpLanes) {
    const std::uint32_t bits = codec::magnitude_bits<E>(x[i]);
    largest = bits > largest ? bits : largest;
  }
  return largest;
}

/// Encodes the elements that `lane` handles in the span with the span's row scale.
template <Elem E, Code C>
APO_HD void lane_encode(const elem_storage_t<E>* x, const Tiles& t, const Span& s, int lane,
                        float scale, std::uint8_t* codes) {
  using T = elem_storage_t<E>;
  std::int64_t rest = s.begin;
  if (t.grouped) {
    const std::int64_t end = grouped_end(s);
    for (std::int64_t i = s.begin + std::int64_t{lane} * kGroup; i < end; i += kWarpStep) {
      alignas(16) T v[kGroup];
      alignas(16) std::uint8_t c[kGroup];
      copy_group(v, x + i);
      APO_UNROLL
      for (int k = 0; k < kGroup; ++k) c[k] = codec::encode_element<E, C>(v[k], scale);
      copy_group(codes + i, c);
    }
    rest = end;
  }
  for (std::int64_t i = rest + lane; i < s.end; i += kWarpLanes) {
    codes[i] = codec::encode_element<E, C>(x[i], scale);
  }
}

/// Decodes the codes that `lane` handles in the span with the span's row scale.
template <Code C, Elem E>
APO_HD void lane_decode(const std::uint8_t* codes, const Tiles& t, const Span& s, int lane,
                        float scale, elem_storage_t<E>* out) {
  using T = elem_storage_t<E>;
  std::int64_t rest = s.begin;
  if (t.grouped) {
    const std::int64_t end = grouped_end(s);
    for (std::int64_t i = s.begin + std::int64_t{lane} * kGroup; i < end; i += kWarpStep) {
      alignas(16) std::uint8_t c[kGroup];
      alignas(16) T v[kGroup];
      copy_group(c, codes + i);
      APO_UNROLL
      for (int k = 0; k < kGroup; ++k) v[k] = codec::decode_element<C, E>(c[k], scale);
      copy_group(out + i, v);
    }
    rest = end;
  }
  for (std::int64_t i = rest + lane; i < s.end; i += kWarpLanes) {
    out[i] = codec::decode_element<C, E>(codes[i], scale);
  }
}

}  // namespace apo::quant::detail::tiles
