#include "apo/ref/sampling.hpp"

#include <cmath>
#include <cstdint>
#include <numeric>
#include <optional>
#include <utility>

#include <ATen/ATen.h>
#include <fmt/ranges.h>

#include "apo/core/error.hpp"
#include "apo/monitor/trace.hpp"

namespace apo::ref {

namespace {

double flow_time(double sigma) {
  return sigma / (1.0 + sigma);
}

/// k-diffusion's get_ancestral_step: the deterministic target σ_down and the fresh noise σ_up,
/// with σ_down² + σ_up² = σ'² so that x keeps the marginal's variance.
std::pair<double, double> ancestral_step(double sigma, double sigma_next, double eta) {
  if (eta == 0.0 || sigma_next == 0.0) return {sigma_next, 0.0};
  const double up = std::min(
      sigma_next, eta * std::sqrt(sigma_next * sigma_next *
                                  (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma)));
  return {std::sqrt(sigma_next * sigma_next - up * up), up};
}

void check_schedule(std::span<const double> sigmas) {
  if (sigmas.empty()) fail(ErrorCode::InvalidArgument, "sample: the σ schedule is empty");
  for (std::size_t i = 0; i < sigmas.size(); ++i) {
    if (!std::isfinite(sigmas[i]) || sigmas[i] < 0.0)
      fail(ErrorCode::InvalidArgument, "sample: σ[{}] = {} is not a finite value ≥ 0", i,
           sigmas[i]);
    if (i > 0 && !(sigmas[i] < sigmas[i - 1]))
      fail(ErrorCode::InvalidArgument, "sample: σ[{}] = {} does not decrease from σ[{}] = {}", i,
           sigmas[i], i - 1, sigmas[i - 1]);
  }
}

}  // namespace

Denoiser flow_denoiser(VelocityModel model) {
  return [model = std::move(model)](const at::Tensor& x, double sigma) {
    const double t = flow_time(sigma);
    const at::Tensor x_t = x / (1.0 + sigma);
    return x_t - t * model(x_t, t);
  };
}

std::vector<double> sigmas(const ScheduleOptions& options) {
  const int steps = options.steps;
  const double lo = options.sigma_min, hi = options.sigma_max;
  if (steps < 1) fail(ErrorCode::InvalidArgument, "sigmas: steps {} must be at least 1", steps);
  if (!(lo > 0.0) || !std::isfinite(hi) || (steps > 1 ? !(lo < hi) : !(lo <= hi)))
    fail(ErrorCode::InvalidArgument,
         "sigmas: need 0 < sigma_min < sigma_max; got sigma_min {} and sigma_max {}", lo, hi);
  if (!(options.shift > 0.0) || !std::isfinite(options.shift))
    fail(ErrorCode::InvalidArgument, "sigmas: shift {} must be positive", options.shift);

  // Each schedule interpolates uniformly in its own coordinate u(σ) from u(σ_max) to u(σ_min).
  auto interpolate = [&](auto to_u, auto from_u) {
    std::vector<double> values(static_cast<std::size_t>(steps) + 1, 0.0);
    const double u_hi = to_u(hi), u_lo = to_u(lo);
    for (int i = 0; i < steps; ++i) {
      const double w = steps == 1 ? 0.0 : static_cast<double>(i) / (steps - 1);
      values[static_cast<std::size_t>(i)] = options.shift * from_u(u_hi + w * (u_lo - u_hi));
    }
    values[0] = options.shift * hi;  // exact, not a round trip through u
    if (steps > 1) values[static_cast<std::size_t>(steps) - 1] = options.shift * lo;
    return values;
  };
  switch (options.schedule) {
    case NoiseSchedule::linear:
      return interpolate(flow_time, [](double t) { return t / (1.0 - t); });
    case NoiseSchedule::karras: {
      constexpr double rho = 7.0;
      return interpolate([](double s) { return std::pow(s, 1.0 / rho); },
                         [](double u) { return std::pow(u, rho); });
    }
    case NoiseSchedule::exponential:
      return interpolate([](double s) { return std::log(s); },
                         [](double u) { return std::exp(u); });
    case NoiseSchedule::cosine:
      return interpolate([](double s) { return std::atan(s); },
                         [](double u) { return std::tan(u); });
  }
  fail(ErrorCode::InvalidArgument, "sigmas: unknown noise schedule {}",
       static_cast<int>(options.schedule));
}

std::vector<double> sigmas_for_strength(std::span<const double> sigmas, double strength) {
  if (sigmas.empty())
    fail(ErrorCode::InvalidArgument, "sigmas_for_strength: the schedule is empty");
  if (!(strength >= 0.0 && strength <= 1.0))
    fail(ErrorCode::InvalidArgument, "sigmas_for_strength: strength {} is outside [0, 1]",
         strength);
  const auto steps = static_cast<std::int64_t>(sigmas.size()) - 1;
  // diffusers: int(steps * strength) steps; the epsilon keeps 0.7 × 30 at 21.
  const auto kept = std::min(steps, static_cast<std::int64_t>(std::floor(steps * strength + 1e-9)));
  return {sigmas.begin() + (steps - kept), sigmas.end()};
}

at::Tensor sample(const Denoiser& denoiser, const at::Tensor& x_start,
                  std::span<const double> sigmas, const SamplerOptions& options) {
  const Sampler sampler = options.sampler;
  switch (sampler) {
    case Sampler::euler:
    case Sampler::euler_ancestral:
    case Sampler::ddim:
    case Sampler::dpm_solver_multistep:
    case Sampler::dpmpp_2m:
    case Sampler::flow_match_euler:
      break;
    default:
      fail(ErrorCode::Unsupported,
           "sample: sampler \"{}\" is not supported here (euler, euler_ancestral, ddim, "
           "dpm_solver_multistep, dpmpp_2m and flow_match_euler are)",
           to_string(sampler));
  }
  if (!denoiser) fail(ErrorCode::InvalidArgument, "sample: the denoiser is empty");
  if (!x_start.defined() || !at::isFloatingType(x_start.scalar_type()))
    fail(ErrorCode::InvalidArgument, "sample: x must be a defined floating-point tensor");
  check_schedule(sigmas);
  const double eta = options.eta.value_or(sampler == Sampler::euler_ancestral ? 1.0 : 0.0);
  if (!(eta >= 0.0 && eta <= 1.0))
    fail(ErrorCode::InvalidArgument, "sample: eta {} is outside [0, 1]", eta);

  std::optional<at::Generator> generator;
  if (options.generator.defined()) generator = options.generator;
  if (!options.item_generators.empty() &&
      static_cast<std::int64_t>(options.item_generators.size()) != x_start.size(0))
    fail(ErrorCode::InvalidArgument, "sample: {} item generators for a batch of {}",
         options.item_generators.size(), x_start.size(0));
  auto noise_like = [&](const at::Tensor& x) {
    if (options.item_generators.empty()) return at::randn(x.sizes(), generator, x.options());
    std::vector<at::Tensor> items;
    for (const at::Generator& item : options.item_generators) {
      items.push_back(at::randn(x.sizes().slice(1), item, x.options()));
    }
    return at::stack(items);
  };
  auto denoise = [&](const at::Tensor& x, double sigma) {
    at::Tensor x0 = denoiser(x, sigma);
    if (!x0.defined() || x0.sizes() != x.sizes())
      fail(ErrorCode::InvalidArgument, "sample: the denoiser returned {} for x of shape [{}]",
           x0.defined() ? fmt::format("shape [{}]", fmt::join(x0.sizes(), ", ")) : "nothing",
           fmt::join(x.sizes(), ", "));
    return x0;
  };

  const int steps = static_cast<int>(sigmas.size()) - 1;
  at::Tensor x = x_start;
  at::Tensor previous_x0;  // DPM-Solver++(2M)'s history
  for (int i = 0; i < steps; ++i) {
    const double sigma = sigmas[static_cast<std::size_t>(i)];
    const double next = sigmas[static_cast<std::size_t>(i) + 1];
    monitor::Span step_span("denoising step", "sampling");
    step_span.arg("step", i + 1).arg("sigma", sigma);
    const at::Tensor x0 = denoise(x, sigma);
    switch (sampler) {
      case Sampler::euler:
        x = x + (x - x0) * ((next - sigma) / sigma);
        break;
      case Sampler::euler_ancestral: {
        const auto [down, up] = ancestral_step(sigma, next, eta);
        x = x + (x - x0) * ((down - sigma) / sigma);
        if (up > 0.0) x = x + noise_like(x) * up;
        break;
      }
      case Sampler::ddim: {
        // DDIM's own form: x' = x0̂ + σ_down·ε̂ + σ_up·z, ε̂ = (x − x0̂)/σ.
        const auto [down, up] = ancestral_step(sigma, next, eta);
        x = x0 + (x - x0) * (down / sigma);
        if (up > 0.0) x = x + noise_like(x) * up;
        break;
      }
      case Sampler::dpm_solver_multistep:
      case Sampler::dpmpp_2m: {
        if (next == 0.0) {
          x = x0;  // the first-order step to σ = 0 lands on the estimate
        } else {
          // In λ = −log σ, with h the step: x' = (σ'/σ)·x − expm1(−h)·D, D from two estimates.
          const double h = std::log(sigma) - std::log(next);
          at::Tensor estimate = x0;
          if (previous_x0.defined()) {
            const double previous = sigmas[static_cast<std::size_t>(i) - 1];
            const double r = (std::log(previous) - std::log(sigma)) / h;
            estimate = x0 * (1.0 + 1.0 / (2.0 * r)) - previous_x0 * (1.0 / (2.0 * r));
          }
          x = x * (next / sigma) - estimate * std::expm1(-h);
        }
        previous_x0 = x0;
        break;
      }
      case Sampler::flow_match_euler: {
        const double t = flow_time(sigma), t_next = flow_time(next);
        const at::Tensor x_t = x / (1.0 + sigma);
        const at::Tensor velocity = (x_t - x0) / t;
        x = (x_t + velocity * (t_next - t)) * (1.0 + next);
        break;
      }
      default:
        break;  // rejected above
    }
    if (options.after_step) x = options.after_step(x, next);
    if (options.on_step) options.on_step(i + 1, steps);
  }
  return x;
}

at::Tensor guided(const at::Tensor& conditional, const at::Tensor& unconditional, double scale,
                  double rescale) {
  if (!conditional.defined() || !unconditional.defined() ||
      conditional.sizes() != unconditional.sizes())
    fail(ErrorCode::InvalidArgument,
         "guided: the conditional and unconditional estimates must have one shape");
  if (!(rescale >= 0.0 && rescale <= 1.0))
    fail(ErrorCode::InvalidArgument, "guided: rescale {} is outside [0, 1]", rescale);
  const at::Tensor cfg = unconditional + (conditional - unconditional) * scale;
  // [B] alone has one element per sample: nothing to rescale (and no dimension to reduce).
  if (rescale == 0.0 || conditional.dim() < 2) return cfg;
  std::vector<std::int64_t> dims(static_cast<std::size_t>(conditional.dim()) - 1);
  std::iota(dims.begin(), dims.end(), 1);
  // The correction cancels in the ratio; 0 keeps one-element samples defined.
  const at::Tensor std_cond = conditional.std(dims, /*correction=*/0, /*keepdim=*/true);
  const at::Tensor std_cfg = cfg.std(dims, /*correction=*/0, /*keepdim=*/true);
  // A constant guided estimate has nothing to rescale.
  const at::Tensor factor =
      at::where(std_cfg > 0, std_cond / std_cfg.clamp_min(1e-30), at::ones_like(std_cfg));
  return cfg * factor * rescale + cfg * (1.0 - rescale);
}

}  // namespace apo::ref
