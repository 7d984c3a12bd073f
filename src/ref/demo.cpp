// The main job: the eight reference workflows through the engine on a mixed trace, the pictures
// written, and a report of cost and quality per workflow.

#include "apo/ref/demo.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <mutex>

#include "apo/core/error.hpp"
#include "apo/core/machine.hpp"
#include "apo/engine/any_engine.hpp"
#include "apo/ref/image_io.hpp"
#include "apo/ref/judge.hpp"
#include "apo/ref/models.hpp"
#include "apo/ref/workflows.hpp"
#include "apo/ref/world.hpp"
#include "apo/tune/presets.hpp"

namespace apo::ref {

namespace {

// Colours an edit may turn a shape into: ones the world tells apart under every light.
constexpr std::array<Colour, 6> kEditColours{Colour::red,   Colour::blue,   Colour::yellow,
                                             Colour::green, Colour::purple, Colour::white};

// The first scene from `seed` on with at least `shapes` shapes.
Scene scene_with_shapes(std::uint64_t& seed, std::size_t shapes, bool clip = false) {
  for (;;) {
    Scene scene = sample_scene(seed++, clip);
    if (scene.shapes.size() >= shapes) return scene;
  }
}

// The scene with its first shape in a colour no other part of it has.
Scene recoloured(Scene scene) {
  for (Colour colour : kEditColours) {
    const bool taken = colour == scene.background ||
                       std::any_of(scene.shapes.begin(), scene.shapes.end(),
                                   [&](const ShapeSpec& s) { return s.colour == colour; });
    if (!taken) {
      scene.shapes.front().colour = colour;
      return scene;
    }
  }
  return scene;
}

Lighting other_light(Lighting light) {
  switch (light) {
    case Lighting::warm:
      return Lighting::cool;
    case Lighting::cool:
      return Lighting::warm;
    case Lighting::dim:
      return Lighting::bright;
    default:
      return Lighting::dim;
  }
}

double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// The picture a result holds: its video, else its image.
at::Tensor picture_of(const engine::Result& result) {
  const auto video = result.outputs.find("video");
  if (video != result.outputs.end()) return video->second;
  return result.outputs.at("image");
}

struct Pass {
  std::vector<engine::Result> results;
  double wall_seconds = 0.0;
};

Pass run_pass(const Config& config, const std::filesystem::path& models_dir,
              const std::vector<DemoRequest>& trace, const std::string& name,
              const std::function<void(const DemoProgress&)>& on_progress) {
  engine::AnyEngine engine(config);
  ReferenceWorkflowOptions options;
  options.models_dir = models_dir;
  options.config = config;
  for (auto& workflow : make_reference_workflows(options)) engine.add_workflow(workflow);

  const auto start = std::chrono::steady_clock::now();
  std::atomic<int> done{0};
  std::mutex progress_mutex;
  const int total = static_cast<int>(trace.size());
  if (on_progress) on_progress({0, total, name});
  std::vector<engine::Ticket> tickets;
  for (const DemoRequest& item : trace) {
    engine::Callbacks callbacks;
    callbacks.on_result = [&](const engine::Result&) {
      const int now = ++done;
      if (on_progress) {
        std::lock_guard lock(progress_mutex);
        on_progress({now, total, name});
      }
    };
    tickets.push_back(engine.submit(item.request, std::move(callbacks)));
  }
  Pass pass;
  for (const engine::Ticket& ticket : tickets) pass.results.push_back(ticket.wait());
  pass.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  engine.shutdown();
  return pass;
}

void write_picture(const std::filesystem::path& path, const at::Tensor& picture) {
  if (picture.dim() == 4) {
    write_gif(path, picture, /*frame_delay_ms=*/150, /*upscale=*/4);
  } else {
    write_png(path, picture);
  }
}

}  // namespace

std::vector<DemoRequest> demo_trace(const std::filesystem::path& models_dir, std::uint64_t seed,
                                    int per_workflow) {
  if (per_workflow < 1) {
    throw Error(ErrorCode::InvalidArgument,
                fmt::format("{} requests per workflow: expected at least 1", per_workflow), "demo");
  }
  const DitConfig image = read_dit_config(models_dir / files::image_dit);
  const DitConfig video = read_dit_config(models_dir / files::video_dit);
  const int image_side = image.latent_size * kVaeDownsampling;
  const int video_side = video.latent_size * kVaeDownsampling;

  std::vector<DemoRequest> trace;
  std::uint64_t next = seed * 1000;
  for (int k = 0; k < per_workflow; ++k) {
    for (std::string_view workflow : kWorkflowNames) {
      Request r;
      r.workflow = std::string(workflow);
      r.seed = seed * 100 + static_cast<std::uint64_t>(k);
      r.priority = k % 2;
      r.width = r.height = image_side;
      if (workflow == "hunyuan_t2v" || workflow == "hunyuan_i2v") {
        const Scene scene = scene_with_shapes(next, 1, true);
        r.width = r.height = video_side;
        r.frames = video.frames;
        r.prompt = caption(scene);
        if (workflow == "hunyuan_i2v") {
          r.first_frame = render_clip(scene, video.frames, video_side)[0].contiguous();
        }
      } else if (workflow == "wan_inpaint") {
        const Scene scene = scene_with_shapes(next, 1);
        const Scene target = recoloured(scene);
        r.image = render_image(scene, image_side);
        // Repaint the first shape and a margin around it.
        const at::Tensor shape = shape_masks(scene, image_side)[0].unsqueeze(0);
        r.mask =
            at::max_pool2d(shape.unsqueeze(0), {9, 9}, {1, 1}, {4, 4})[0].gt(0.01).to(at::kFloat);
        r.prompt = caption(target);
      } else if (workflow == "qwen_edit") {
        const Scene scene = scene_with_shapes(next, 1);
        r.image = render_image(scene, image_side);
        r.prompt = caption(recoloured(scene));
        r.strength = 0.75;
      } else if (workflow == "qwen_relight") {
        const Scene scene = scene_with_shapes(next, 1);
        r.image = render_image(scene, image_side);
        r.prompt = caption(with_lighting(scene, other_light(scene.lighting)));
      } else if (workflow == "qwen_layered") {
        r.prompt = caption(scene_with_shapes(next, 2));
      } else {
        r.prompt = caption(scene_with_shapes(next, 1));
      }
      trace.push_back({std::move(r), fmt::format("{}-{}", workflow, k + 1)});
    }
  }
  return trace;
}

DemoReport run_demo(const DemoOptions& options) {
  const std::filesystem::path models_dir =
      options.models_dir.empty() ? default_models_dir() : options.models_dir;
  DemoReport report;
  Config config;
  if (options.config) {
    config = *options.config;
    report.reasons.push_back("the configuration given");
  } else {
    const tune::Recommendation recommendation = tune::recommend(probe_machine());
    config = recommendation.loaded.config;
    report.reasons = recommendation.reasons;
  }
  report.configuration =
      fmt::format("{} weights{}, attention slicing {}, {} batches up to {}, {} queue",
                  to_string(config.performance.model_precision),
                  config.performance.enable_quantization ? " (quantization on)" : "",
                  config.attention.enable_attention_slicing ? "on" : "off",
                  to_string(config.scheduling.batch_policy), config.performance.max_batch_size,
                  to_string(config.scheduling.queue_policy));

  std::error_code error;
  std::filesystem::create_directories(options.output_dir, error);
  if (error) {
    throw Error(ErrorCode::Io,
                fmt::format("cannot create {}: {}", options.output_dir.string(), error.message()),
                "demo");
  }

  const std::vector<DemoRequest> trace = demo_trace(models_dir, options.seed, options.per_workflow);
  const Pass main = run_pass(config, models_dir, trace, "trace", options.on_progress);
  report.wall_seconds = main.wall_seconds;

  std::optional<Pass> full;
  if (options.compare_full_precision) {
    Config reference = config;
    reference.performance.model_precision = Precision::fp32;
    reference.performance.enable_quantization = false;
    full = run_pass(reference, models_dir, trace, "full precision", options.on_progress);
    report.full_precision_seconds = full->wall_seconds;
  }

  nlohmann::ordered_json requests = nlohmann::ordered_json::array();
  std::map<std::string, DemoWorkflowReport> by_workflow;
  std::map<std::string, std::vector<double>> ssims, psnrs;
  for (std::size_t i = 0; i < trace.size(); ++i) {
    const DemoRequest& item = trace[i];
    const engine::Result& result = main.results[i];
    DemoWorkflowReport& w = by_workflow[item.request.workflow];
    w.workflow = item.request.workflow;
    ++w.requests;
    nlohmann::ordered_json entry{{"label", item.label},
                                 {"workflow", item.request.workflow},
                                 {"prompt", item.request.prompt},
                                 {"status", to_string(result.status)}};
    if (!result.ok()) {
      ++w.failed;
      report.failures.push_back(fmt::format("{}: {}", item.label, result.message));
      entry["message"] = result.message;
      requests.push_back(entry);
      continue;
    }
    const auto& t = result.timings;
    w.mean_seconds += seconds(t.total);
    w.mean_compute_seconds += seconds(t.encode + t.denoise + t.decode);
    w.peak_memory_bytes = std::max(w.peak_memory_bytes, result.peak_memory_bytes);
    report.peak_memory_bytes = std::max(report.peak_memory_bytes, result.peak_memory_bytes);
    w.judge_score += result.quality.value_or(0.0);
    if (w.decisions.empty()) w.decisions = result.decisions.reasons;

    const at::Tensor picture = picture_of(result);
    const std::string name = item.label + (picture.dim() == 4 ? ".gif" : ".png");
    write_picture(options.output_dir / name, picture);
    w.files.push_back(name);
    for (const auto& [input, tensor] : {std::pair{"input", item.request.image},
                                        std::pair{"first-frame", item.request.first_frame},
                                        std::pair{"mask", item.request.mask}}) {
      if (!tensor.defined()) continue;
      const std::string input_name = fmt::format("{}-{}.png", item.label, input);
      write_png(options.output_dir / input_name, tensor.dim() == 2 ? tensor.unsqueeze(0) : tensor);
      w.files.push_back(input_name);
    }
    entry["file"] = name;
    entry["seconds"] = seconds(t.total);
    entry["peak_memory_bytes"] = result.peak_memory_bytes;
    entry["judge_score"] = result.quality.value_or(0.0);
    entry["batch_size"] = result.decisions.batch_size;
    if (full && full->results[i].ok()) {
      const at::Tensor reference = picture_of(full->results[i]);
      const double s = ssim(picture, reference);
      const double p = psnr(picture, reference);
      ssims[w.workflow].push_back(s);
      psnrs[w.workflow].push_back(p);
      entry["ssim_vs_fp32"] = s;
      entry["psnr_vs_fp32_db"] = p;
    }
    requests.push_back(entry);
  }

  nlohmann::ordered_json workflows = nlohmann::ordered_json::array();
  for (std::string_view name : kWorkflowNames) {
    auto it = by_workflow.find(std::string(name));
    if (it == by_workflow.end()) continue;
    DemoWorkflowReport& w = it->second;
    const int ok = w.requests - w.failed;
    if (ok > 0) {
      w.mean_seconds /= ok;
      w.mean_compute_seconds /= ok;
      w.judge_score /= ok;
    }
    auto mean = [](const std::vector<double>& v) {
      double sum = 0;
      for (double x : v) sum += x;
      return sum / static_cast<double>(v.size());
    };
    if (!ssims[w.workflow].empty()) {
      w.ssim = mean(ssims[w.workflow]);
      w.psnr_db = mean(psnrs[w.workflow]);
    }
    workflows.push_back(
        {{"workflow", w.workflow},
         {"requests", w.requests},
         {"failed", w.failed},
         {"mean_seconds", w.mean_seconds},
         {"mean_compute_seconds", w.mean_compute_seconds},
         {"peak_memory_bytes", w.peak_memory_bytes},
         {"judge_score", w.judge_score},
         {"ssim_vs_fp32", w.ssim ? nlohmann::ordered_json(*w.ssim) : nullptr},
         {"psnr_vs_fp32_db", w.psnr_db ? nlohmann::ordered_json(*w.psnr_db) : nullptr},
         {"decisions", w.decisions}});
    report.workflows.push_back(w);
  }

  nlohmann::ordered_json out{{"configuration", report.configuration},
                             {"reasons", report.reasons},
                             {"wall_seconds", report.wall_seconds},
                             {"full_precision_seconds", report.full_precision_seconds},
                             {"peak_memory_bytes", report.peak_memory_bytes},
                             {"workflows", workflows},
                             {"requests", requests}};
  report.report_file = options.output_dir / "report.json";
  std::ofstream file(report.report_file);
  file << out.dump(2) << "\n";
  if (!file) {
    throw Error(ErrorCode::Io, fmt::format("cannot write {}", report.report_file.string()), "demo");
  }
  return report;
}

}  // namespace apo::ref
