// The multithreaded CPU kernels against the libtorch chain, bit for bit: tensors above the
// parallel grain (a quarter million elements, src/quant/kernels.cpp), so that at::parallel_for
// really splits them, under 1, 2 and 4 ATen threads, with shapes whose rows and blocks divide
// unevenly among the threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "apo_catch.hpp"

#include <string>
#include <vector>

#include "apo/quant/kernels.hpp"
#include "apo/quant/qtensor.hpp"
#include "apo/quant/reference.hpp"
#include "quant_test_support.hpp"

namespace q = apo::quant;
using q::QFormat;
using q::Scaling;

namespace {

// ThreadSanitizer builds run ATen on one thread (tests/support/tsan_single_threaded_aten.cpp):
// TSan cannot see libgomp's barriers, so more threads would only report false races there.
std::vector<int> thread_counts() {
#if defined(__SANITIZE_THREAD__)
  return {1};
#else
  return {1, 2, 4};
#endif
}

// Restores ATen's thread count when a check fails half-way.
class ThreadCount {
 public:
  explicit ThreadCount(int threads) : saved_(at::get_num_threads()) {
    at::set_num_threads(threads);
  }
  ~ThreadCount() { at::set_num_threads(saved_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int saved_;
};

struct Shape {
  std::vector<std::int64_t> sizes;
  std::vector<at::ScalarType> dtypes;
  const char* why;
};

}  // namespace

TEST_CASE("multithreaded quantize and dequantize match the libtorch chain bit for bit",
          "[quant][kernels][threads]") {
  const std::vector<Shape> shapes{
      {{4096, 4096}, {at::kFloat, at::kBFloat16}, "4096x4096: 64-row chunks, an even split"},
      {{1031, 4099},
       {at::kFloat, at::kBFloat16, at::kHalf},
       "1031x4099: prime sizes, uneven row chunks, blocks that cross rows"},
      {{1, (1 << 21) + 3}, {at::kFloat, at::kHalf}, "one long row, split into blocks"},
  };
  const q::QuantSpec specs[] = {
      {QFormat::fp8_e4m3, Scaling::per_row}, {QFormat::fp8_e4m3, Scaling::per_tensor},
      {QFormat::fp8_e5m2, Scaling::per_row}, {QFormat::int8, Scaling::per_row},
      {QFormat::int8, Scaling::per_tensor},
  };
  // Under sanitizers the kernels run several times slower: the uneven shape only, in fp32.
  const bool reduced = q::test::sanitizer_build();

  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  for (const Shape& shape : shapes) {
    if (reduced && shape.sizes[0] != 1031) continue;
    INFO(shape.why);
    const std::int64_t rows = shape.sizes[0];
    // Rows of very different magnitude (within float16's range, some subnormal there), a zero row.
    at::Tensor base = at::randn(shape.sizes, gen) * at::exp(at::randn({rows, 1}, gen) * 2.0);
    if (rows > 7) base[7].zero_();
    for (at::ScalarType dtype : shape.dtypes) {
      if (reduced && dtype != at::kFloat) continue;
      const at::Tensor x = base.to(dtype);
      for (q::QuantSpec spec : specs) {
        INFO(q::to_string(spec) << " from " << c10::toString(dtype));
        const q::reference::Quantized expected = q::reference::quantize(x, spec);
        const at::Tensor expected_out =
            q::reference::dequantize(expected.data, expected.scales, spec, dtype);
        for (const int threads : thread_counts()) {
          INFO(threads << " ATen threads");
          const ThreadCount scope(threads);
          REQUIRE(at::get_num_threads() == threads);
          const q::QTensor qt = q::quantize(x, spec, "w");
          const auto scales = q::test::bit_diff(qt.scales(), expected.scales);
          INFO("scales: " << scales.text);
          CHECK(scales.mismatches == 0);
          const auto codes = q::test::bit_diff(qt.data(), expected.data, x);
          INFO("codes: " << codes.text);
          CHECK(codes.mismatches == 0);
          const auto values = q::test::bit_diff(q::dequantize(qt, dtype), expected_out);
          INFO("dequantized: " << values.text);
          CHECK(values.mismatches == 0);
        }
      }
    }
  }
}
