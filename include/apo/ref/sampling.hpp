#pragma once

/// @file
/// @brief Samplers for the reference models, k-diffusion style: every model is seen as a
/// denoiser in "VE space", x = x0 + σ·ε, that returns its estimate of x0 for (x, σ). Schedules
/// are lists of σ; classifier-free guidance works on x0 estimates.
///
/// How the samplers relate:
/// - euler: the Euler step of the probability-flow ODE dx/dσ = (x − x0̂)/σ.
/// - ddim: deterministic DDIM (eta 0) is exactly that Euler step — x' = x0̂ + σ'·ε̂ with
///   ε̂ = (x − x0̂)/σ is x + (σ' − σ)(x − x0̂)/σ. DDIM with eta > 0 is exactly euler_ancestral with
///   the same eta (DDIM's σ_t(η), moved to VE space, is k-diffusion's σ_up).
/// - euler_ancestral: steps deterministically to σ_down, then adds fresh noise of std σ_up
///   (σ_up = min(σ', η·σ'·√(σ² − σ'²)/σ), σ_down = √(σ'² − σ_up²)).
/// - dpm_solver_multistep and dpmpp_2m: DPM-Solver++(2M) (Lu et al. 2022), second order from the
///   previous x0 estimate, first order on the first and the final step.
/// - flow_match_euler: Euler in the rectified-flow coordinates, x_t += v·(t' − t) with
///   t = σ/(1+σ), x_t = x/(1+σ), v = (x_t − x0̂)/t. In exact arithmetic this is the same update as
///   euler (both move to x0̂ + σ'·ε̂, the first-order step is invariant under the rescaling), so
///   the two differ only by rounding and by the schedule one pairs them with.

#include <functional>
#include <optional>
#include <span>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "apo/core/settings.hpp"

namespace apo::ref {

/// @brief A model as a denoiser: (x, σ) → its estimate of x0, shaped like x.
using Denoiser = std::function<at::Tensor(const at::Tensor& x, double sigma)>;

/// @brief A rectified-flow model: x_t = (1 − t)·x0 + t·ε, and it predicts v = ε − x0.
/// In VE space σ = t/(1 − t) and x = x_t/(1 − t).
using VelocityModel = std::function<at::Tensor(const at::Tensor& x_t, double t)>;

/// @brief A velocity model as a denoiser: t = σ/(1+σ), x_t = x/(1+σ), x0̂ = x_t − t·v.
Denoiser flow_denoiser(VelocityModel model);

/// @brief A noise schedule: `steps` σ values from σ_max down to σ_min, then 0.
struct ScheduleOptions {
  int steps = 30;
  /// linear: uniform in the flow time t = σ/(1+σ) (a rectified-flow model's own schedule);
  /// karras: Karras et al. 2022 with ρ = 7; exponential: uniform in log σ; cosine: uniform in
  /// atan σ (the iDDPM cosine schedule, ᾱ = cos², in VE space).
  NoiseSchedule schedule = NoiseSchedule::linear;
  double sigma_min = 0.002;  ///< t ≈ 0.002 for a flow model
  double sigma_max = 80.0;   ///< t ≈ 0.988 for a flow model
  /// The flow time shift of SD3/Flux, t' = shift·t / (1 + (shift − 1)·t), which in VE space
  /// multiplies every σ by `shift`: the schedule then spans shift·[σ_min, σ_max]. 1 = none.
  double shift = 1.0;
};

/// @brief steps + 1 values, strictly decreasing, the last 0.
/// @throws apo::Error InvalidArgument: steps < 1, σ bounds not 0 < σ_min < σ_max (σ_min ≤ σ_max
/// for one step), shift ≤ 0
std::vector<double> sigmas(const ScheduleOptions& options);

/// @brief For img2img and inpainting: the tail of `sigmas` that starts `strength` of the way in
/// (diffusers' rule: the last floor(steps·strength) steps). 1 = the whole schedule, 0 = only the
/// final 0 (no steps). The caller starts from x = x0 + tail[0]·noise.
/// @throws apo::Error InvalidArgument: strength outside [0, 1], an empty schedule
std::vector<double> sigmas_for_strength(std::span<const double> sigmas, double strength);

/// @brief How sample() steps.
struct SamplerOptions {
  /// euler, euler_ancestral, ddim, dpm_solver_multistep, dpmpp_2m, flow_match_euler; the others
  /// throw apo::Error Unsupported.
  Sampler sampler = Sampler::euler;
  /// Fresh noise per step: 0 deterministic, 1 the full ancestral amount. Unset: the sampler's
  /// default — 1 for euler_ancestral, 0 for ddim (as diffusers' DDIMScheduler); ignored by the
  /// other samplers.
  std::optional<double> eta;
  /// The noise of ancestral steps; undefined = the default CPU generator. Seed it for
  /// reproducible samples.
  at::Generator generator = {};
  /// One generator per batch item (x's first dimension), for the noise of ancestral steps: each
  /// item's sample then depends on its own seed only, not on the batch it runs in. Takes
  /// precedence over `generator` when given.
  std::vector<at::Generator> item_generators;
  /// Called after each step with (steps done, steps): progress, and a cancellation point (it may
  /// throw, and the exception leaves sample()).
  std::function<void(int step, int steps)> on_step;
  /// Called after each step with the x reached and its σ; returns the x to continue with
  /// (inpainting: put back the known region noised to σ; first-frame replacement).
  std::function<at::Tensor(const at::Tensor& x, double sigma)> after_step;
};

/// @brief Integrates from x at sigmas[0] down the schedule and returns x at its last σ (0: the
/// sample). x is noise·sigmas[0] for text-to-image, x0 + noise·sigmas[0] for img2img. Any shape
/// ([B, C, H, W], [B, T, C, H, W]) and batch size; floating x.
/// @throws apo::Error Unsupported (a sampler listed above as not supported), InvalidArgument
/// (σ not decreasing or negative, an empty schedule, x not floating, eta outside [0, 1], a
/// denoiser returning the wrong shape)
at::Tensor sample(const Denoiser& denoiser, const at::Tensor& x, std::span<const double> sigmas,
                  const SamplerOptions& options = {});

/// @brief Classifier-free guidance on x0 estimates, u + scale·(c − u), with CFG rescale
/// (Lin et al. 2023): the guided estimate is rescaled so that each sample's standard deviation
/// (over all but the batch dimension) is the conditional one's, and blended with the plain one
/// by `rescale` (0 = plain CFG, 1 = fully rescaled).
/// @throws apo::Error InvalidArgument: shapes differ, rescale outside [0, 1]
at::Tensor guided(const at::Tensor& conditional, const at::Tensor& unconditional, double scale,
                  double rescale = 0.0);

}  // namespace apo::ref
