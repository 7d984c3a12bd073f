#include "apo_catch.hpp"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "apo/core/error.hpp"
#include "apo/ref/sampling.hpp"

namespace sampling_test {

using apo::NoiseSchedule;
using apo::Sampler;

// The analytic case: data N(mu, s²) per element. Its exact denoiser is E[x0 | x] at σ, and the
// probability-flow ODE dx/dσ = (x − x0̂)/σ = σ(x − mu)/(s² + σ²) solves in closed form.
constexpr double kMu = 0.5;
constexpr double kStd = 0.3;

apo::ref::Denoiser gaussian_denoiser() {
  return [](const at::Tensor& x, double sigma) {
    return (x * (kStd * kStd) + sigma * sigma * kMu) / (kStd * kStd + sigma * sigma);
  };
}

at::Tensor exact_solution(const at::Tensor& x, double sigma_from, double sigma_to) {
  return kMu + (x - kMu) * std::sqrt((kStd * kStd + sigma_to * sigma_to) /
                                     (kStd * kStd + sigma_from * sigma_from));
}

// A draw from the marginal at σ: x = x0 + σ·ε with x0 ~ N(mu, s²).
at::Tensor marginal_draw(at::IntArrayRef shape, double sigma, std::uint64_t seed) {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return kMu + std::sqrt(kStd * kStd + sigma * sigma) *
                   at::randn(shape, generator, at::TensorOptions().dtype(at::kDouble));
}

apo::ref::SamplerOptions with_sampler(Sampler sampler) {
  apo::ref::SamplerOptions options;
  options.sampler = sampler;
  return options;
}

at::Generator seeded(std::uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

double mean_abs_error(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().mean().item<double>();
}

}  // namespace sampling_test

using namespace sampling_test;

TEST_CASE("schedules start at sigma_max, decrease strictly and end at 0", "[sampling]") {
  for (const NoiseSchedule schedule : {NoiseSchedule::linear, NoiseSchedule::karras,
                                       NoiseSchedule::exponential, NoiseSchedule::cosine}) {
    for (const int steps : {1, 2, 4, 30}) {
      CAPTURE(apo::to_string(schedule), steps);
      apo::ref::ScheduleOptions options;
      options.steps = steps;
      options.schedule = schedule;
      const std::vector<double> sigmas = apo::ref::sigmas(options);
      REQUIRE(sigmas.size() == static_cast<std::size_t>(steps) + 1);
      CHECK(sigmas.front() == options.sigma_max);
      CHECK(sigmas.back() == 0.0);
      if (steps > 1) CHECK(sigmas[sigmas.size() - 2] == Approx(options.sigma_min));
      for (std::size_t i = 1; i < sigmas.size(); ++i) CHECK(sigmas[i] < sigmas[i - 1]);
    }
  }
}

TEST_CASE("each schedule is uniform in its own coordinate", "[sampling]") {
  apo::ref::ScheduleOptions options;
  options.steps = 5;
  options.sigma_min = 0.01;
  options.sigma_max = 20.0;
  auto uniform_in = [&](NoiseSchedule schedule, auto coordinate) {
    options.schedule = schedule;
    const std::vector<double> sigmas = apo::ref::sigmas(options);
    const double step = coordinate(sigmas[1]) - coordinate(sigmas[0]);
    for (int i = 1; i < options.steps; ++i)
      CHECK(coordinate(sigmas[i]) - coordinate(sigmas[i - 1]) == Approx(step).epsilon(1e-9));
  };
  uniform_in(NoiseSchedule::linear, [](double s) { return s / (1 + s); });
  uniform_in(NoiseSchedule::karras, [](double s) { return std::pow(s, 1.0 / 7.0); });
  uniform_in(NoiseSchedule::exponential, [](double s) { return std::log(s); });
  uniform_in(NoiseSchedule::cosine, [](double s) { return std::atan(s); });

  SECTION("a shift multiplies every sigma (the flow time shift)") {
    options.schedule = NoiseSchedule::linear;
    const std::vector<double> plain = apo::ref::sigmas(options);
    options.shift = 3.0;
    const std::vector<double> shifted = apo::ref::sigmas(options);
    for (std::size_t i = 0; i < plain.size(); ++i) {
      CHECK(shifted[i] == Approx(3.0 * plain[i]));
      // the same in flow time: t' = 3t / (1 + 2t)
      const double t = plain[i] / (1 + plain[i]);
      CHECK(shifted[i] / (1 + shifted[i]) == Approx(3 * t / (1 + 2 * t)));
    }
  }
}

TEST_CASE("schedules reject bad options", "[sampling]") {
  apo::ref::ScheduleOptions options;
  options.steps = 0;
  CHECK_THROWS_AS(apo::ref::sigmas(options), apo::Error);
  options.steps = 10;
  options.sigma_min = 0.0;
  CHECK_THROWS_AS(apo::ref::sigmas(options), apo::Error);
  options.sigma_min = 90.0;
  CHECK_THROWS_AS(apo::ref::sigmas(options), apo::Error);
  options.sigma_min = 0.002;
  options.shift = 0.0;
  CHECK_THROWS_AS(apo::ref::sigmas(options), apo::Error);
}

TEST_CASE("strength selects the tail of a schedule", "[sampling]") {
  apo::ref::ScheduleOptions options;
  options.steps = 30;
  const std::vector<double> sigmas = apo::ref::sigmas(options);
  CHECK(apo::ref::sigmas_for_strength(sigmas, 1.0) == sigmas);
  CHECK(apo::ref::sigmas_for_strength(sigmas, 0.0) == std::vector<double>{0.0});
  const std::vector<double> tail = apo::ref::sigmas_for_strength(sigmas, 0.7);
  REQUIRE(tail.size() == 22);  // 21 steps, as diffusers' int(30 × 0.7)
  CHECK(tail.front() == sigmas[9]);
  CHECK(tail.back() == 0.0);
  CHECK(apo::ref::sigmas_for_strength(sigmas, 0.5).size() == 16);
  CHECK_THROWS_AS(apo::ref::sigmas_for_strength(sigmas, 1.5), apo::Error);
  CHECK_THROWS_AS(apo::ref::sigmas_for_strength({}, 0.5), apo::Error);
}

TEST_CASE("deterministic samplers transport the Gaussian's noise to the Gaussian", "[sampling]") {
  // First-order samplers are ~9% off in std at 30 Karras steps on this case (as k-diffusion's
  // own), ~3% at 100; DPM-Solver++(2M) is within 0.2% at 100.
  apo::ref::ScheduleOptions schedule;
  schedule.steps = 100;
  schedule.schedule = NoiseSchedule::karras;
  const std::vector<double> sigmas = apo::ref::sigmas(schedule);
  const at::Tensor start = marginal_draw({4, 4, 32, 32}, sigmas.front(), 1);
  const at::Tensor exact = exact_solution(start, sigmas.front(), 0.0);
  struct Case {
    Sampler sampler;
    double std_tolerance;
    double error_tolerance;
  };
  for (const Case c :
       {Case{Sampler::euler, 0.04, 0.01}, Case{Sampler::ddim, 0.04, 0.01},
        Case{Sampler::flow_match_euler, 0.04, 0.01},
        Case{Sampler::dpm_solver_multistep, 0.005, 0.001}, Case{Sampler::dpmpp_2m, 0.005, 0.001}}) {
    CAPTURE(apo::to_string(c.sampler));
    const at::Tensor x =
        apo::ref::sample(gaussian_denoiser(), start, sigmas, with_sampler(c.sampler));
    CHECK(x.mean().item<double>() == Approx(kMu).margin(0.01));
    CHECK(x.std().item<double>() == Approx(kStd).epsilon(c.std_tolerance));
    CHECK(mean_abs_error(x, exact) < c.error_tolerance);
  }
}

TEST_CASE("DPM-Solver++(2M) is closer to the exact ODE solution than Euler", "[sampling]") {
  const at::Tensor start = marginal_draw({4, 256}, 80.0, 2);
  std::vector<double> euler_errors, dpm_errors;
  for (const int steps : {8, 15, 30, 60}) {
    apo::ref::ScheduleOptions schedule;
    schedule.steps = steps;
    schedule.schedule = NoiseSchedule::karras;
    const std::vector<double> sigmas = apo::ref::sigmas(schedule);
    const at::Tensor exact = exact_solution(start, sigmas.front(), 0.0);
    euler_errors.push_back(mean_abs_error(
        apo::ref::sample(gaussian_denoiser(), start, sigmas, with_sampler(Sampler::euler)), exact));
    dpm_errors.push_back(mean_abs_error(
        apo::ref::sample(gaussian_denoiser(), start, sigmas, with_sampler(Sampler::dpmpp_2m)),
        exact));
  }
  CAPTURE(euler_errors, dpm_errors);
  for (std::size_t i = 0; i < euler_errors.size(); ++i) CHECK(dpm_errors[i] < euler_errors[i]);
  // Second order against first: doubling the steps from 30 to 60 divides DPM's error by more
  // than 3, Euler's by about 2.
  CHECK(dpm_errors[3] < dpm_errors[2] / 3);
  CHECK(euler_errors[3] > euler_errors[2] / 2.5);
  CHECK(dpm_errors[3] < euler_errors[3] / 8);
}

TEST_CASE("DDIM is the Euler step, and with eta the ancestral one; flow Euler equals Euler",
          "[sampling]") {
  const std::vector<double> sigmas = apo::ref::sigmas({.steps = 12});
  const at::Tensor start = marginal_draw({2, 3, 8, 8}, sigmas.front(), 3);
  const at::Tensor euler =
      apo::ref::sample(gaussian_denoiser(), start, sigmas, with_sampler(Sampler::euler));
  CHECK(at::allclose(
      apo::ref::sample(gaussian_denoiser(), start, sigmas, with_sampler(Sampler::ddim)), euler,
      1e-9, 1e-12));
  CHECK(at::allclose(
      apo::ref::sample(gaussian_denoiser(), start, sigmas, with_sampler(Sampler::flow_match_euler)),
      euler, 1e-9, 1e-12));

  apo::ref::SamplerOptions ddim = with_sampler(Sampler::ddim);
  ddim.eta = 0.6;
  ddim.generator = seeded(7);
  apo::ref::SamplerOptions ancestral = with_sampler(Sampler::euler_ancestral);
  ancestral.eta = 0.6;
  ancestral.generator = seeded(7);
  const at::Tensor ddim_x = apo::ref::sample(gaussian_denoiser(), start, sigmas, ddim);
  CHECK(at::allclose(ddim_x, apo::ref::sample(gaussian_denoiser(), start, sigmas, ancestral), 1e-9,
                     1e-12));
  CHECK(!at::allclose(ddim_x, euler));
}

TEST_CASE("ancestral sampling gives the data distribution, reproducibly for a seed", "[sampling]") {
  apo::ref::ScheduleOptions schedule;
  // Ancestral steps converge in distribution at first order: the std is ~12% low at 50 Karras
  // steps on this case, ~3.5% at 200.
  schedule.steps = 200;
  schedule.schedule = NoiseSchedule::karras;
  const std::vector<double> sigmas = apo::ref::sigmas(schedule);
  const at::Tensor start = marginal_draw({4, 64, 64}, sigmas.front(), 4);
  for (const Sampler sampler : {Sampler::euler_ancestral, Sampler::ddim}) {
    CAPTURE(apo::to_string(sampler));
    apo::ref::SamplerOptions options = with_sampler(sampler);
    options.eta = 1.0;
    options.generator = seeded(11);
    const at::Tensor x = apo::ref::sample(gaussian_denoiser(), start, sigmas, options);
    CHECK(x.mean().item<double>() == Approx(kMu).margin(0.01));
    CHECK(x.std().item<double>() == Approx(kStd).epsilon(0.05));
    // Not the deterministic path: fresh noise moved the samples.
    const at::Tensor exact = exact_solution(start, sigmas.front(), 0.0);
    CHECK(mean_abs_error(x, exact) > 0.05);

    options.generator = seeded(11);
    CHECK(at::equal(x, apo::ref::sample(gaussian_denoiser(), start, sigmas, options)));
    options.generator = seeded(12);
    CHECK(!at::equal(x, apo::ref::sample(gaussian_denoiser(), start, sigmas, options)));
  }
}

TEST_CASE("samplers work on clips and batches, item by item", "[sampling]") {
  const std::vector<double> sigmas =
      apo::ref::sigmas({.steps = 6, .schedule = NoiseSchedule::karras});
  const at::Tensor clip = marginal_draw({2, 3, 4, 8, 8}, sigmas.front(), 5).to(at::kFloat);
  for (const Sampler sampler : {Sampler::euler, Sampler::dpmpp_2m, Sampler::flow_match_euler}) {
    CAPTURE(apo::to_string(sampler));
    const at::Tensor both =
        apo::ref::sample(gaussian_denoiser(), clip, sigmas, with_sampler(sampler));
    CHECK(both.sizes() == clip.sizes());
    CHECK(both.scalar_type() == at::kFloat);
    const at::Tensor second =
        apo::ref::sample(gaussian_denoiser(), clip.narrow(0, 1, 1), sigmas, with_sampler(sampler));
    CHECK(at::allclose(both.narrow(0, 1, 1), second, 1e-5, 1e-6));
  }
}

TEST_CASE("with a generator per item, ancestral noise does not depend on the batch", "[sampling]") {
  const std::vector<double> sigmas =
      apo::ref::sigmas({.steps = 8, .schedule = NoiseSchedule::karras});
  const at::Tensor batch = marginal_draw({3, 2, 8, 8}, sigmas.front(), 6).to(at::kFloat);
  apo::ref::SamplerOptions options = with_sampler(Sampler::euler_ancestral);
  options.item_generators = {seeded(1), seeded(2), seeded(3)};
  const at::Tensor together = apo::ref::sample(gaussian_denoiser(), batch, sigmas, options);
  options.item_generators = {seeded(2)};
  const at::Tensor alone =
      apo::ref::sample(gaussian_denoiser(), batch.narrow(0, 1, 1), sigmas, options);
  CHECK(at::allclose(together.narrow(0, 1, 1), alone, 1e-5, 1e-6));
  options.item_generators = {seeded(1)};
  CHECK_THROWS_AS(apo::ref::sample(gaussian_denoiser(), batch, sigmas, options), apo::Error);
}

TEST_CASE("sample calls back after each step and continues from after_step", "[sampling]") {
  const std::vector<double> sigmas = apo::ref::sigmas({.steps = 5});
  const at::Tensor start = marginal_draw({1, 2, 4, 4}, sigmas.front(), 6);
  apo::ref::SamplerOptions options;
  std::vector<std::pair<int, int>> progress;
  std::vector<double> seen_sigmas;
  options.on_step = [&](int step, int steps) { progress.emplace_back(step, steps); };
  // Inpainting: the first channel is known (2.0) and put back, noised to each σ.
  options.after_step = [&](const at::Tensor& x, double sigma) {
    seen_sigmas.push_back(sigma);
    at::Tensor next = x.clone();
    next.select(1, 0).fill_(2.0 + sigma * 0.1);
    return next;
  };
  const at::Tensor x = apo::ref::sample(gaussian_denoiser(), start, sigmas, options);
  CHECK(progress == std::vector<std::pair<int, int>>{{1, 5}, {2, 5}, {3, 5}, {4, 5}, {5, 5}});
  CHECK(seen_sigmas == std::vector<double>(sigmas.begin() + 1, sigmas.end()));
  CHECK(at::allclose(x.select(1, 0), at::full({1, 4, 4}, 2.0, x.options())));

  SECTION("a throwing callback cancels") {
    options.on_step = [](int step, int) {
      if (step == 2) throw apo::Error(apo::ErrorCode::Cancelled, "cancelled");
    };
    CHECK_THROWS_AS(apo::ref::sample(gaussian_denoiser(), start, sigmas, options), apo::Error);
  }
  SECTION("a schedule of one sigma takes no step") {
    const std::vector<double> none{0.0};
    CHECK(at::equal(apo::ref::sample(gaussian_denoiser(), start, none, options), start));
    CHECK(progress.size() == 5);
  }
}

TEST_CASE("sample rejects what it cannot do", "[sampling]") {
  const std::vector<double> sigmas = apo::ref::sigmas({.steps = 4});
  const at::Tensor x = at::randn({1, 4});
  for (const Sampler sampler :
       {Sampler::heun, Sampler::ddpm, Sampler::dpmpp_2m_sde, Sampler::unipc, Sampler::lcm}) {
    try {
      apo::ref::sample(gaussian_denoiser(), x, sigmas, with_sampler(sampler));
      FAIL("no error for " << apo::to_string(sampler));
    } catch (const apo::Error& error) {
      CHECK(error.code() == apo::ErrorCode::Unsupported);
      CHECK_THAT(error.what(), Catch::Contains(std::string(apo::to_string(sampler))));
    }
  }
  const std::vector<double> increasing{1.0, 2.0, 0.0};
  CHECK_THROWS_AS(apo::ref::sample(gaussian_denoiser(), x, increasing), apo::Error);
  CHECK_THROWS_AS(apo::ref::sample(gaussian_denoiser(), x, {}), apo::Error);
  CHECK_THROWS_AS(apo::ref::sample(gaussian_denoiser(), at::ones({2}, at::kLong), sigmas),
                  apo::Error);
  apo::ref::SamplerOptions bad_eta = with_sampler(Sampler::euler_ancestral);
  bad_eta.eta = 1.5;
  CHECK_THROWS_AS(apo::ref::sample(gaussian_denoiser(), x, sigmas, bad_eta), apo::Error);
  const apo::ref::Denoiser wrong_shape = [](const at::Tensor& x_in, double) {
    return x_in.flatten();
  };
  CHECK_THROWS_AS(apo::ref::sample(wrong_shape, at::randn({2, 2}), sigmas), apo::Error);
}

TEST_CASE("classifier-free guidance and CFG rescale on hand-computed tensors", "[sampling]") {
  const at::Tensor conditional = at::tensor({1.0, 3.0, 2.0, 2.0}, at::kDouble).view({2, 2});
  const at::Tensor unconditional = at::tensor({0.0, 0.0, 2.0, 4.0}, at::kDouble).view({2, 2});
  // u + 2 (c − u): [2, 6] and [2, 0]
  const at::Tensor cfg = apo::ref::guided(conditional, unconditional, 2.0);
  CHECK(at::allclose(cfg, at::tensor({2.0, 6.0, 2.0, 0.0}, at::kDouble).view({2, 2})));
  // Sample 0: std(c) = 1, std(cfg) = 2 → × 0.5 → [1, 3]; sample 1: std(c) = 0 → [0, 0].
  CHECK(at::allclose(apo::ref::guided(conditional, unconditional, 2.0, 1.0),
                     at::tensor({1.0, 3.0, 0.0, 0.0}, at::kDouble).view({2, 2})));
  // Half rescaled: the mean of the two.
  CHECK(at::allclose(apo::ref::guided(conditional, unconditional, 2.0, 0.5),
                     at::tensor({1.5, 4.5, 1.0, 0.0}, at::kDouble).view({2, 2})));
  // A constant guided estimate stays as it is.
  const at::Tensor flat = at::ones({1, 3}, at::kDouble);
  CHECK(at::allclose(apo::ref::guided(flat, flat * 0.5, 3.0, 1.0), flat * 2.0));
  CHECK(at::allclose(apo::ref::guided(conditional, unconditional, 1.0), conditional));
  CHECK_THROWS_AS(apo::ref::guided(conditional, unconditional.view({4}), 2.0), apo::Error);
  CHECK_THROWS_AS(apo::ref::guided(conditional, unconditional, 2.0, 1.5), apo::Error);
}

TEST_CASE("flow_denoiser follows the rectified-flow formulas", "[sampling]") {
  // An arbitrary velocity model: the wrapper must pass x_t = x/(1+σ), t = σ/(1+σ) and return
  // x_t − t·v.
  const apo::ref::VelocityModel model = [](const at::Tensor& x_t, double t) {
    return x_t * 0.5 + t;
  };
  const apo::ref::Denoiser denoiser = apo::ref::flow_denoiser(model);
  const at::Tensor x = at::tensor({1.0, -2.0, 4.0}, at::kDouble);
  const double sigma = 3.0, t = 0.75;
  const at::Tensor x_t = x / 4.0;
  CHECK(at::allclose(denoiser(x, sigma), x_t - t * (x_t * 0.5 + t)));

  // The oracle velocity of a known x0 gives back that x0.
  const at::Tensor x0 = at::tensor({0.2, 0.4, -0.6}, at::kDouble);
  const at::Tensor eps = at::tensor({1.0, -1.0, 0.5}, at::kDouble);
  const apo::ref::Denoiser oracle =
      apo::ref::flow_denoiser([&](const at::Tensor&, double) { return eps - x0; });
  CHECK(at::allclose(oracle(x0 + sigma * eps, sigma), x0));
}
