#include "apo_catch.hpp"

#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apo/core/error.hpp"
#include "apo/models/lora.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/ref/models.hpp"
#include "apo/ref/training.hpp"
#include "apo/ref/world.hpp"

namespace training_test {

namespace fs = std::filesystem;
using namespace apo::ref;

struct TempDir {
  fs::path path =
      fs::temp_directory_path() / fmt::format("apo_training_{}", std::random_device{}());
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::set<std::string> tensor_names(const fs::path& path) {
  std::set<std::string> names;
  const auto file = apo::models::SafetensorsFile::open(path);
  for (const auto& entry : file.tensors()) {
    names.insert(entry.name);
  }
  return names;
}

TEST_CASE("training smoke run: every file written, loadable, with its configuration",
          "[training]") {
  TempDir dir;
  TrainOptions options;
  options.output_dir = dir.path;
  options.seed = 3;
  options.scale = 0.0005;
  options.threads = 1;
  std::set<std::string> stages_seen;
  options.on_progress = [&](const TrainProgress& p) {
    stages_seen.insert(p.stage);
    CHECK(p.step >= 1);
    CHECK(p.step <= p.steps);
  };
  const TrainReport report = train_reference(options);
  CHECK(stages_seen == std::set<std::string>{"vae", "encode", "image_dit", "video_dit",
                                             "image_lightning", "video_lightning"});
  CHECK(report.files.size() == 7);
  CHECK(report.seconds < 20.0);

  const TextEncoderConfig text = read_text_encoder_config(dir.path / files::text_encoder);
  CHECK(text.vocab_size == static_cast<int>(vocabulary().size()));
  const VaeConfig vae = read_vae_config(dir.path / files::vae);
  CHECK(vae.scale_factor > 0.0);
  const DitConfig image = read_dit_config(dir.path / files::image_dit);
  const DitConfig video = read_dit_config(dir.path / files::video_dit);
  CHECK(image.frames == 0);
  CHECK(video.frames == 8);

  // Expected names, and nothing else: the initialisers define the models.
  const auto expect_names = [&](std::string_view file,
                                const std::map<std::string, at::Tensor>& params) {
    std::set<std::string> expected;
    for (const auto& [name, tensor] : params) expected.insert(name);
    CHECK(tensor_names(dir.path / file) == expected);
  };
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  expect_names(files::text_encoder, init_text_encoder(text, gen));
  expect_names(files::vae, init_vae(vae, gen));
  expect_names(files::image_dit, init_dit(image, gen));
  expect_names(files::video_dit, init_dit(video, gen));

  for (const auto& [lora, dit] : {std::pair{files::image_lightning, files::image_dit},
                                  std::pair{files::video_lightning, files::video_dit}}) {
    const auto adapter = apo::models::LoraAdapter::load(dir.path / lora);
    const auto names = tensor_names(dir.path / dit);
    CHECK(adapter.bind({names.begin(), names.end()}).unmatched.empty());
  }
  const auto metadata = apo::models::SafetensorsFile::open(dir.path / files::image_dit).metadata();
  const auto made = nlohmann::json::parse(metadata.at(std::string(kTrainingMetadataKey)));
  CHECK(made.at("seed") == 3);
  CHECK(made.at("stage").at("stage") == "image_dit");

  std::ifstream in(dir.path / "training.json");
  const auto record = nlohmann::json::parse(in);
  CHECK(record.at("stages").size() == 6);
  CHECK(record.at("files").size() == 6);
}

TEST_CASE("training rejects bad options", "[training]") {
  TrainOptions options;
  options.output_dir = fs::temp_directory_path() / "apo_training_never_written";
  options.scale = 0.0;
  CHECK_THROWS_AS(train_reference(options), apo::Error);
  options.scale = 1.5;
  CHECK_THROWS_AS(train_reference(options), apo::Error);
  options.scale = 0.5;
  options.threads = -1;
  CHECK_THROWS_AS(train_reference(options), apo::Error);
  options.threads = 0;
  options.output_dir.clear();
  CHECK_THROWS_AS(train_reference(options), apo::Error);
}

}  // namespace training_test
