#pragma once

/// @file
/// @brief Training the reference models from a fixed seed: the text encoder, the image VAE, the
/// image and video DiTs and their lightning LoRAs, on scenes the procedural world renders.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace apo::ref {

/// @brief Where training stands, reported as it goes.
struct TrainProgress {
  std::string stage;  ///< "vae", "image_dit", "video_dit", "image_lightning", ...
  int step = 0;
  int steps = 0;
  double loss = 0.0;
  double elapsed_s = 0.0;  ///< since the stage began
};

struct TrainOptions {
  std::filesystem::path output_dir;  ///< the model files and training.json are written here
  std::uint64_t seed = 0;
  /// Fraction of the full schedule's steps and data (1: the committed models; tests use a tiny
  /// fraction for a smoke run).
  double scale = 1.0;
  /// Intra-op threads (0: torch's default).
  int threads = 0;
  std::function<void(const TrainProgress&)> on_progress;
};

/// @brief What one stage did.
struct TrainStageReport {
  std::string stage;
  int steps = 0;
  double final_loss = 0.0;
  double seconds = 0.0;
};

struct TrainReport {
  std::vector<TrainStageReport> stages;
  std::vector<std::filesystem::path> files;  ///< the files written
  double seconds = 0.0;
};

/// @brief Trains every reference model and writes them (safetensors, with the configuration
/// and how they were made in the metadata) and training.json to options.output_dir.
/// @throws apo::Error InvalidArgument (a bad option), Io (the directory cannot be written)
TrainReport train_reference(const TrainOptions& options);

}  // namespace apo::ref
