// The code the CUDA kernels run, tested on the CPU: the shared element codec (src/quant/codec.hpp,
// codec_lanes.hpp) against PyTorch's casts and the CPU kernels, over every fp16 and bf16 input
// and a large random fp32 set; and the kernels' work split (src/quant/cuda_tiles.hpp) run lane by
// lane, against the CPU kernels. What only a GPU can show (the device's own arithmetic, the warp
// reduction and atomics, the speed) is left to the [gpu] tests.

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "apo_catch.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "../../src/quant/cuda_tiles.hpp"
#include "apo/quant/format.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/reference.hpp"
#include "quant_test_support.hpp"

namespace q = apo::quant;
namespace codec = apo::quant::detail::codec;
namespace tiles = apo::quant::detail::tiles;
using q::QFormat;
using q::Scaling;
using q::detail::Code;
using q::detail::Elem;
using q::detail::elem_storage_t;

namespace {

std::uint32_t bits_of(float v) {
  std::uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

float float_of(std::uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

bool same_float(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || bits_of(a) == bits_of(b);
}

// Finite random floats over every exponent.
std::vector<float> random_floats(std::int64_t count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> values;
  values.reserve(static_cast<std::size_t>(count));
  while (static_cast<std::int64_t>(values.size()) < count) {
    const float v = float_of(rng());
    if (std::isfinite(v)) values.push_back(v);
  }
  return values;
}

at::Tensor tensor_of(const std::vector<float>& values) {
  return at::from_blob(const_cast<float*>(values.data()),
                       {static_cast<std::int64_t>(values.size())}, at::kFloat)
      .clone();
}

Elem elem_of(at::ScalarType dtype) {
  return dtype == at::kFloat ? Elem::f32 : dtype == at::kHalf ? Elem::f16 : Elem::bf16;
}

Code code_of(QFormat format) {
  return format == QFormat::fp8_e4m3   ? Code::e4m3
         : format == QFormat::fp8_e5m2 ? Code::e5m2
                                       : Code::int8;
}

// Calls f.template operator()<E, C>() for the runtime pair.
template <class F>
void with_types(Elem e, Code c, F&& f) {
  auto with_code = [&]<Elem E>() {
    switch (c) {
      case Code::e4m3:
        return f.template operator()<E, Code::e4m3>();
      case Code::e5m2:
        return f.template operator()<E, Code::e5m2>();
      case Code::int8:
        return f.template operator()<E, Code::int8>();
    }
  };
  switch (e) {
    case Elem::f32:
      return with_code.template operator()<Elem::f32>();
    case Elem::f16:
      return with_code.template operator()<Elem::f16>();
    case Elem::bf16:
      return with_code.template operator()<Elem::bf16>();
  }
}

// The shared element encoder over a whole tensor with one scale.
at::Tensor codec_encode(const at::Tensor& x, QFormat format, float scale) {
  const at::Tensor input = x.contiguous();
  at::Tensor codes = at::empty({input.numel()}, at::kByte);
  with_types(elem_of(input.scalar_type()), code_of(format), [&]<Elem E, Code C>() {
    const auto* in = static_cast<const elem_storage_t<E>*>(input.const_data_ptr());
    auto* out = codes.mutable_data_ptr<std::uint8_t>();
    for (std::int64_t i = 0; i < input.numel(); ++i) {
      out[i] = codec::encode_element<E, C>(in[i], scale);
    }
  });
  return codes;
}

// PyTorch's chain for one scale: clamp(x / scale) cast to the format (rounded first for int8).
at::Tensor torch_encode(const at::Tensor& x, QFormat format, float scale) {
  const float max_value = q::traits(format).max_value;
  at::Tensor y = at::div(x.to(at::kFloat), at::full({1}, scale)).clamp(-max_value, max_value);
  if (format == QFormat::int8) y = y.round();
  return y.to(q::storage_dtype(format, x.scalar_type())).contiguous().view(at::kByte).flatten();
}

const QFormat kFormats[] = {QFormat::fp8_e4m3, QFormat::fp8_e5m2, QFormat::int8};
const float kScales[] = {1.0f, 0.3671875f, 1.0f / 3.0f, 7.5e-4f, 2.9e4f};

// The CUDA kernels' work, run lane by lane: amax (the warp's max over lanes, then the max over a
// row's tiles, as the atomics do), scales and codes.
struct Emulated {
  at::Tensor codes;
  at::Tensor scales;
  tiles::Tiles split;
};

constexpr std::int64_t kTargetTiles = 132 * 64;  // an H100's SMs times resident warps

Emulated emulate_quantize(const at::Tensor& x, std::int64_t rows, QFormat format, bool aligned) {
  const std::int64_t length = x.numel() / rows;
  Emulated r{at::full({x.numel()}, 0xA5, at::kByte), at::full({rows}, -1.0f), {}};
  r.split = tiles::plan_tiles(rows, length, kTargetTiles, aligned);
  with_types(elem_of(x.scalar_type()), code_of(format), [&]<Elem E, Code C>() {
    const auto* in = static_cast<const elem_storage_t<E>*>(x.const_data_ptr());
    std::vector<std::uint32_t> amax_bits(static_cast<std::size_t>(rows), 0);
    for (std::int64_t tile = 0; tile < r.split.count(); ++tile) {
      const tiles::Span s = tiles::span_of(r.split, tile);
      std::uint32_t warp_max = 0;
      for (int lane = 0; lane < tiles::kWarpLanes; ++lane) {
        warp_max = std::max(warp_max, tiles::lane_amax_bits<E>(in, r.split, s, lane));
      }
      auto& row_max = amax_bits[static_cast<std::size_t>(s.row)];
      row_max = std::max(row_max, bits_of(codec::magnitude_from_bits<E>(warp_max)));
    }
    auto* codes = r.codes.mutable_data_ptr<std::uint8_t>();
    auto* scales = r.scales.mutable_data_ptr<float>();
    for (std::int64_t tile = 0; tile < r.split.count(); ++tile) {
      const tiles::Span s = tiles::span_of(r.split, tile);
      const float scale =
          codec::scale_from_amax(float_of(amax_bits[static_cast<std::size_t>(s.row)]),
                                 q::detail::code_max<C>(), q::kAmaxFloor, q::kAmaxCeiling);
      if (s.begin == s.row * length) scales[s.row] = scale;
      for (int lane = 0; lane < tiles::kWarpLanes; ++lane) {
        tiles::lane_encode<E, C>(in, r.split, s, lane, scale, codes);
      }
    }
  });
  return r;
}

at::Tensor emulate_dequantize(const at::Tensor& codes, const at::Tensor& scales, std::int64_t rows,
                              QFormat format, at::ScalarType out_dtype, bool aligned) {
  const std::int64_t length = codes.numel() / rows;
  at::Tensor out = at::empty({codes.numel()}, out_dtype);
  const tiles::Tiles split = tiles::plan_tiles(rows, length, kTargetTiles, aligned);
  with_types(elem_of(out_dtype), code_of(format), [&]<Elem E, Code C>() {
    const auto* in = codes.const_data_ptr<std::uint8_t>();
    auto* result = static_cast<elem_storage_t<E>*>(out.mutable_data_ptr());
    for (std::int64_t tile = 0; tile < split.count(); ++tile) {
      const tiles::Span s = tiles::span_of(split, tile);
      for (int lane = 0; lane < tiles::kWarpLanes; ++lane) {
        tiles::lane_decode<C, E>(in, split, s, lane, scales.const_data_ptr<float>()[s.row], result);
      }
    }
  });
  return out;
}

}  // namespace

TEST_CASE("the shared codec reads every fp16 and bf16 value as c10 does", "[quant][codec]") {
  std::int64_t half_mismatches = 0;
  std::int64_t bf16_mismatches = 0;
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const auto b16 = static_cast<std::uint16_t>(bits);
    if (!same_float(codec::half_to_float(b16),
                    static_cast<float>(c10::Half(b16, c10::Half::from_bits())))) {
      ++half_mismatches;
    }
    if (!same_float(codec::bf16_to_float(b16),
                    static_cast<float>(c10::BFloat16(b16, c10::BFloat16::from_bits())))) {
      ++bf16_mismatches;
    }
  }
  CHECK(half_mismatches == 0);
  CHECK(bf16_mismatches == 0);
}

TEST_CASE("the shared codec rounds floats to fp16 and bf16 as c10 does", "[quant][codec]") {
  std::vector<float> values =
      random_floats(q::test::sanitizer_build() ? (1 << 16) : (1 << 22), 20261130);
  // Every half and bfloat16 value, the midpoints to their neighbours and the floats either side
  // (ties and near-ties), zeros, infinities and NaN.
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    for (const float v : {codec::half_to_float(bits), codec::bf16_to_float(bits)}) {
      if (!std::isfinite(v)) continue;
      values.insert(values.end(), {v, std::nextafter(v, INFINITY), std::nextafter(v, -INFINITY)});
    }
    const float next_half = codec::half_to_float(bits + 1);
    const float half = codec::half_to_float(bits);
    if (bits < 0x7C00 && std::isfinite(next_half)) {
      const float mid = half + (next_half - half) / 2;
      values.insert(values.end(),
                    {mid, std::nextafter(mid, INFINITY), std::nextafter(mid, -INFINITY)});
    }
    const float bf_mid = float_of((bits << 16) | 0x8000u);  // exactly between two bfloat16s
    values.insert(values.end(), {bf_mid, std::nextafter(bf_mid, 0.0f)});
  }
  values.insert(values.end(),
                {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, INFINITY, -INFINITY,
                 std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                 0x1p-25f, 0x1.8p-25f, std::numeric_limits<float>::denorm_min()});
  std::int64_t half_mismatches = 0;
  std::int64_t bf16_mismatches = 0;
  float first_half = 0;
  for (const float v : values) {
    if (codec::float_to_half(v) != c10::Half(v).x) {
      if (half_mismatches++ == 0) first_half = v;
    }
    if (codec::float_to_bf16(v) != c10::BFloat16(v).x) ++bf16_mismatches;
  }
  INFO(values.size() << " floats; first fp16 mismatch at " << first_half);
  CHECK(half_mismatches == 0);
  CHECK(bf16_mismatches == 0);
}

TEST_CASE("the CUDA kernels' encoder matches PyTorch on every fp16 and bf16 input and scale",
          "[quant][codec]") {
  for (at::ScalarType source : {at::kHalf, at::kBFloat16}) {
    const at::Tensor values = q::test::all_finite_16bit(source);
    for (QFormat format : kFormats) {
      for (float scale : kScales) {
        const auto diff = q::test::bit_diff(codec_encode(values, format, scale),
                                            torch_encode(values, format, scale), values);
        INFO(q::to_string(format) << " from " << c10::toString(source) << ", scale " << scale
                                  << ": " << diff.text);
        CHECK(diff.mismatches == 0);
      }
    }
  }
}

TEST_CASE("the CUDA kernels' encoder matches PyTorch on a large random fp32 set",
          "[quant][codec]") {
  const at::Tensor values =
      tensor_of(random_floats(q::test::sanitizer_build() ? (1 << 16) : (1 << 22), 7));
  for (QFormat format : kFormats) {
    for (float scale : {1.0f, 7.5e-4f, 3.0e30f}) {
      const auto diff = q::test::bit_diff(codec_encode(values, format, scale),
                                          torch_encode(values, format, scale), values);
      INFO(q::to_string(format) << ", scale " << scale << ": " << diff.text);
      CHECK(diff.mismatches == 0);
    }
  }
}

TEST_CASE("the CUDA kernels' encoder keeps NaN as NaN and saturates infinity", "[quant][codec]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float scale : {1.0f, nan}) {
    // fmaxf(NaN, -448) is -448: a clamp written that way turned NaN into a finite code.
    const std::uint8_t e4m3 = codec::encode_element<Elem::f32, Code::e4m3>(nan, scale);
    const std::uint8_t e5m2 = codec::encode_element<Elem::f32, Code::e5m2>(-nan, scale);
    INFO("scale " << scale << ": codes " << int{e4m3} << ", " << int{e5m2});
    CHECK(std::isnan(at::tensor({e4m3}, at::kByte).view(at::kFloat8_e4m3fn).item<float>()));
    CHECK(std::isnan(at::tensor({e5m2}, at::kByte).view(at::kFloat8_e5m2).item<float>()));
  }
  // Infinity saturates, as the clamp of the reference chain does; a NaN scale (a row whose amax
  // is not finite) makes every code of the row NaN.
  CHECK(codec::encode_element<Elem::f32, Code::e4m3>(INFINITY, 1.0f) == 0x7E);
  CHECK(codec::encode_element<Elem::f32, Code::e4m3>(-INFINITY, 1.0f) == 0xFE);
  CHECK(codec::encode_element<Elem::f32, Code::e5m2>(INFINITY, 1.0f) == 0x7B);
  CHECK((codec::encode_element<Elem::f32, Code::e4m3>(1.0f, nan) & 0x7F) == 0x7F);
  CHECK(codec::encode_element<Elem::f32, Code::int8>(nan, 1.0f) == 0);
  CHECK(std::isnan(codec::scale_from_amax(INFINITY, 448.0f, q::kAmaxFloor, q::kAmaxCeiling)));
  CHECK(codec::scale_from_amax(0.0f, 448.0f, q::kAmaxFloor, q::kAmaxCeiling) ==
        q::kAmaxFloor / 448.0f);
}

TEST_CASE("the CUDA kernels' decoder matches the reference chain for every code",
          "[quant][codec]") {
  const at::Tensor codes = at::arange(0, 256, at::kInt).to(at::kByte);
  for (QFormat format : kFormats) {
    const at::Tensor data = codes.view(q::storage_dtype(format, at::kFloat));
    for (at::ScalarType out : {at::kFloat, at::kHalf, at::kBFloat16}) {
      for (float scale : kScales) {
        at::Tensor ours = at::empty({256}, out);
        with_types(elem_of(out), code_of(format), [&]<Elem E, Code C>() {
          auto* result = static_cast<elem_storage_t<E>*>(ours.mutable_data_ptr());
          for (int c = 0; c < 256; ++c) {
            result[c] = codec::decode_element<C, E>(static_cast<std::uint8_t>(c), scale);
          }
        });
        const at::Tensor theirs = q::reference::dequantize(data, at::full({1}, scale),
                                                           {format, Scaling::per_tensor}, out);
        // NaN codes decode to NaN; its payload is the platform's (the GPU's is canonical).
        const at::Tensor agree = (ours == theirs) | (ours.isnan() & theirs.isnan());
        INFO(q::to_string(format) << " to " << c10::toString(out) << ", scale " << scale);
        CHECK(agree.all().item<bool>());
        CHECK(at::equal(ours.isnan(), theirs.isnan()));
        CHECK(at::equal(at::signbit(ours.masked_fill(ours.isnan(), 0)),
                        at::signbit(theirs.masked_fill(theirs.isnan(), 0))));
      }
    }
  }
}

TEST_CASE("the CUDA kernels' work split covers every element and matches the CPU kernels",
          "[quant][codec]") {
  struct Shape {
    std::int64_t rows;
    std::int64_t length;
    const char* what;
  };
  const Shape shapes[] = {
      {3, 40000, "few long rows: split into tiles"},
      {300, 48, "many short rows"},
      {5, 1001, "rows that are not whole groups"},
      {1, 100003, "one odd row"},
  };
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (const Shape& shape : shapes) {
    const at::Tensor base =
        at::randn({shape.rows, shape.length}, gen) * at::exp(at::randn({shape.rows, 1}, gen) * 3);
    for (at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
      // A view one element in, to take the path for pointers that are not 16-byte aligned.
      const at::Tensor padded = at::cat({at::zeros({1}), base.flatten()}).to(dtype);
      for (bool aligned : {true, false}) {
        const at::Tensor x = aligned ? base.to(dtype).contiguous()
                                     : padded.narrow(0, 1, base.numel()).view(base.sizes());
        for (QFormat format : kFormats) {
          for (Scaling scaling : {Scaling::per_row, Scaling::per_tensor}) {
            const std::int64_t rows = scaling == Scaling::per_row ? shape.rows : 1;
            const q::QTensor cpu = q::quantize(x, {format, scaling}, "w");
            const Emulated gpu = emulate_quantize(x, rows, format, aligned);
            INFO(shape.what << ": " << shape.rows << " x " << shape.length << " "
                            << c10::toString(dtype) << ", " << q::to_string(format) << " "
                            << q::to_string(scaling) << (aligned ? "" : ", unaligned") << "; "
                            << gpu.split.count() << " tiles of " << gpu.split.chunk
                            << (gpu.split.grouped ? ", grouped" : ""));
            CHECK(gpu.split.grouped == (aligned && (rows == 1 || shape.length % 16 == 0)));
            const auto scales = q::test::bit_diff(gpu.scales, cpu.scales());
            const auto codes = q::test::bit_diff(gpu.codes, cpu.data().flatten().view(at::kByte));
            INFO("scales: " << scales.text << "; codes: " << codes.text);
            CHECK(scales.mismatches == 0);
            CHECK(codes.mismatches == 0);
            for (at::ScalarType out : {at::kFloat, at::kBFloat16}) {
              const at::Tensor values =
                  emulate_dequantize(gpu.codes, gpu.scales, rows, format, out, aligned);
              const auto diff = q::test::bit_diff(values, q::dequantize(cpu, out).flatten());
              INFO("dequantize to " << c10::toString(out) << ": " << diff.text);
              CHECK(diff.mismatches == 0);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("the CUDA kernels split rows only when there are too few to fill the device",
          "[quant][codec]") {
  const tiles::Tiles few = tiles::plan_tiles(2, 1 << 22, kTargetTiles, true);
  CHECK(few.tiles_per_row > 1);
  CHECK(few.count() >= kTargetTiles / 2);
  CHECK(few.chunk % tiles::kWarpStep == 0);
  CHECK(few.chunk * few.tiles_per_row >= (1 << 22));
  const tiles::Tiles many = tiles::plan_tiles(100000, 4096, kTargetTiles, true);
  CHECK(many.tiles_per_row == 1);
  CHECK(many.chunk >= 4096);
  const tiles::Tiles tiny = tiles::plan_tiles(1, 1, kTargetTiles, true);
  CHECK(tiny.count() == 1);
  const tiles::Span last = tiles::span_of(few, few.count() - 1);
  CHECK(last.row == 1);
  CHECK(last.end == 2 * (std::int64_t{1} << 22));
}

TEST_CASE("a row holding NaN or infinity encodes as NaN codes under a NaN scale",
          "[quant][codec]") {
  // The unchecked path (activations for _scaled_mm) does not reject NaN: the row's result must
  // come out NaN, not finite garbage. Other rows are untouched.
  at::Tensor x = at::randn({6, 256});
  x[2][17] = std::numeric_limits<float>::quiet_NaN();
  x[4][3] = -INFINITY;
  const at::Tensor clean = x.clone();
  clean[2][17] = 0.0f;
  clean[4][3] = 0.0f;
  const q::QTensor reference = q::quantize(clean, {QFormat::fp8_e4m3, Scaling::per_row}, "x");
  const Emulated gpu = emulate_quantize(x, 6, QFormat::fp8_e4m3, true);
  const at::Tensor codes = gpu.codes.view({6, 256});
  for (std::int64_t row : {2, 4}) {
    INFO("row " << row);
    CHECK(std::isnan(gpu.scales[row].item<float>()));
    CHECK(at::bitwise_and(codes[row], 0x7F).eq(0x7F).all().item<bool>());
  }
  for (std::int64_t row : {0, 1, 3, 5}) {
    INFO("row " << row);
    CHECK(gpu.scales[row].item<float>() == reference.scales()[row].item<float>());
    CHECK(at::equal(codes[row], reference.data()[row].view(at::kByte)));
  }
}
