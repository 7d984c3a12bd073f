#include "apo_catch.hpp"

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "apo/core/error.hpp"
#include "apo/ref/attention.hpp"
#include "cpu_allocation_counter.hpp"

namespace attention_test {

struct Shape {
  std::int64_t batch, heads, queries, keys, dim;
};

// The textbook "math" attention, unsliced: all (B·H) score matrices at once.
at::Tensor math_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& mask = {}) {
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(double(q.size(-1)));
  if (mask.defined())
    scores =
        scores.masked_fill(mask.logical_not().view({mask.size(0), 1, 1, mask.size(1)}), -INFINITY);
  return at::matmul(scores.softmax(-1), v);
}

at::Tensor random_mask(std::int64_t batch, std::int64_t keys, at::Generator& generator) {
  at::Tensor mask = at::rand({batch, keys}, generator) > 0.4;
  mask.select(1, 0).fill_(true);  // every item attends to something
  return mask;
}

apo::ref::AttentionOptions sliced(int slice_size) {
  return {.slicing = true, .slice_size = slice_size};
}

}  // namespace attention_test

using namespace attention_test;

TEST_CASE("sliced attention equals full attention", "[attention]") {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(21);
  for (const Shape shape : {Shape{1, 1, 4, 4, 8}, Shape{2, 3, 17, 9, 5}, Shape{2, 4, 64, 64, 16},
                            Shape{3, 2, 1, 33, 32}}) {
    const at::Tensor q = at::randn({shape.batch, shape.heads, shape.queries, shape.dim}, generator);
    const at::Tensor k = at::randn({shape.batch, shape.heads, shape.keys, shape.dim}, generator);
    const at::Tensor v = at::randn({shape.batch, shape.heads, shape.keys, shape.dim}, generator);
    for (const bool masked : {false, true}) {
      const at::Tensor mask =
          masked ? random_mask(shape.batch, shape.keys, generator) : at::Tensor();
      const at::Tensor full = apo::ref::attention(q, k, v, {}, mask);
      CHECK(at::allclose(full, math_attention(q, k, v, mask), 1e-5, 1e-5));
      const int rows = static_cast<int>(shape.batch * shape.heads);
      for (const int slice_size : {1, 2, 3, rows, rows + 5}) {
        CAPTURE(shape.batch, shape.heads, shape.queries, shape.keys, shape.dim, masked, slice_size);
        const at::Tensor out = apo::ref::attention(q, k, v, sliced(slice_size), mask);
        REQUIRE(out.sizes() == full.sizes());
        CHECK((out - full).abs().max().item<double>() < 1e-5);
      }
    }
  }
}

TEST_CASE("masked keys get zero weight", "[attention]") {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(22);
  const at::Tensor q = at::randn({2, 2, 6, 8}, generator);
  const at::Tensor k = at::randn({2, 2, 10, 8}, generator);
  at::Tensor v = at::randn({2, 2, 10, 8}, generator);
  // Keys 6..9 are padding, with values so large that any weight on them would show.
  at::Tensor mask = at::ones({2, 10}, at::kBool);
  mask.narrow(1, 6, 4).fill_(false);
  v.narrow(2, 6, 4).fill_(1e6);
  const at::Tensor expected = math_attention(q, k.narrow(2, 0, 6), v.narrow(2, 0, 6));
  for (const apo::ref::AttentionOptions options :
       {apo::ref::AttentionOptions{}, sliced(1), sliced(3)}) {
    CAPTURE(options.slicing, options.slice_size);
    CHECK(at::allclose(apo::ref::attention(q, k, v, options, mask), expected, 1e-5, 1e-5));
  }
}

TEST_CASE("slicing lowers the peak memory of math attention", "[attention]") {
  // 8 rows of 512 × 512 fp32 scores: 8 MiB per score tensor unsliced, 1 MiB per slice of one.
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(23);
  const at::Tensor q = at::randn({2, 4, 512, 32}, generator);
  const at::Tensor k = at::randn({2, 4, 512, 32}, generator);
  const at::Tensor v = at::randn({2, 4, 512, 32}, generator);
  auto peak_bytes = [](auto&& run) {
    const apo::quant::test::CpuAllocationCounter::Scope scope;
    const at::Tensor out = run();
    return scope.peak_bytes();
  };
  const std::int64_t math = peak_bytes([&] { return math_attention(q, k, v); });
  const std::int64_t slice1 = peak_bytes([&] { return apo::ref::attention(q, k, v, sliced(1)); });
  const std::int64_t slice4 = peak_bytes([&] { return apo::ref::attention(q, k, v, sliced(4)); });
  const std::int64_t score_bytes = 8 * 512 * 512 * 4;
  CAPTURE(math, slice1, slice4);
  CHECK(math >= score_bytes);
  CHECK(slice1 < math / 4);
  CHECK(slice1 < slice4);
  CHECK(slice4 < math);
}

TEST_CASE("gradients flow through attention", "[attention]") {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(24);
  const at::Tensor mask = random_mask(2, 7, generator);
  std::vector<at::Tensor> reference_grads;
  {
    const at::Tensor q = at::randn({2, 3, 5, 4}, generator).requires_grad_();
    const at::Tensor k = at::randn({2, 3, 7, 4}, generator).requires_grad_();
    const at::Tensor v = at::randn({2, 3, 7, 4}, generator).requires_grad_();
    const at::Tensor weights = at::randn({2, 3, 5, 4}, generator);
    math_attention(q, k, v, mask).mul(weights).sum().backward();
    reference_grads = {q.grad(), k.grad(), v.grad()};
    for (const apo::ref::AttentionOptions options : {apo::ref::AttentionOptions{}, sliced(2)}) {
      CAPTURE(options.slicing);
      const at::Tensor q2 = q.detach().clone().requires_grad_();
      const at::Tensor k2 = k.detach().clone().requires_grad_();
      const at::Tensor v2 = v.detach().clone().requires_grad_();
      apo::ref::attention(q2, k2, v2, options, mask).mul(weights).sum().backward();
      const std::vector<at::Tensor> grads{q2.grad(), k2.grad(), v2.grad()};
      for (std::size_t i = 0; i < grads.size(); ++i) {
        REQUIRE(grads[i].defined());
        CHECK(at::allclose(grads[i], reference_grads[i], 1e-5, 1e-5));
      }
    }
  }
}

TEST_CASE("attention rejects inputs it cannot take", "[attention]") {
  const at::Tensor q = at::randn({1, 2, 3, 4});
  const at::Tensor kv = at::randn({1, 2, 5, 4});
  CHECK_THROWS_AS(apo::ref::attention(q.flatten(0, 1), kv, kv), apo::Error);
  CHECK_THROWS_AS(apo::ref::attention(q, kv, at::randn({1, 2, 6, 4})), apo::Error);
  CHECK_THROWS_AS(apo::ref::attention(at::randn({1, 2, 3, 8}), kv, kv), apo::Error);
  CHECK_THROWS_AS(apo::ref::attention(q, kv, kv, sliced(0)), apo::Error);
  CHECK_THROWS_AS(apo::ref::attention(q, kv, kv, {}, at::ones({1, 4}, at::kBool)), apo::Error);
  CHECK_THROWS_AS(apo::ref::attention(q, kv, kv, {}, at::ones({1, 5})), apo::Error);
  // A query with nothing to attend to.
  CHECK_THROWS_AS(apo::ref::attention(q, kv, kv, {}, at::zeros({1, 5}, at::kBool)), apo::Error);
}
