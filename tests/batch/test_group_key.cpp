// The grouping key holds everything that must agree inside one batch, and nothing else.

#include "apo_catch.hpp"

#include <ATen/ATen.h>

#include "apo/batch/batch.hpp"
#include "apo/core/error.hpp"

using apo::Request;
using apo::batch::GroupKeyHash;
using apo::batch::GroupKeyView;

namespace {

Request base() {
  Request r;
  r.workflow = "qwen_edit";
  r.prompt = "a lamp";
  r.width = 1024;
  r.height = 1024;
  r.steps = 30;
  r.guidance = 7.5;
  r.sampler = apo::Sampler::euler;
  return r;
}

bool same_key(const Request& a, const Request& b) {
  const bool equal = GroupKeyView(a) == GroupKeyView(b);
  if (equal) CHECK(GroupKeyHash{}(GroupKeyView(a)) == GroupKeyHash{}(GroupKeyView(b)));
  return equal;
}

}  // namespace

TEST_CASE("requests batch together only when model, LoRAs, shape, sampling and inputs agree",
          "[batch][key]") {
  const Request a = base();
  // What may differ inside a batch: prompts, seeds, priorities, deadlines, input pixels.
  Request b = base();
  b.prompt = "a chair";
  b.seed = 99;
  b.priority = 7;
  CHECK(same_key(a, b));

  const auto differs = [&](auto change) {
    Request c = base();
    change(c);
    return !same_key(a, c);
  };
  CHECK(differs([](Request& r) { r.workflow = "qwen_relight"; }));
  CHECK(differs([](Request& r) { r.model = "other.safetensors"; }));
  CHECK(differs([](Request& r) { r.loras = {{"lightning.safetensors", 1.0}}; }));
  CHECK(differs([](Request& r) { r.width = 832; }));
  CHECK(differs([](Request& r) { r.frames = 61; }));
  CHECK(differs([](Request& r) { r.steps = 4; }));
  CHECK(differs([](Request& r) { r.guidance = 1.0; }));
  CHECK(differs([](Request& r) { r.sampler = apo::Sampler::ddim; }));
  CHECK(differs([](Request& r) { r.strength = 0.6; }));
  CHECK(differs([](Request& r) { r.image = at::zeros({3, 1024, 1024}); }));
  CHECK(differs([](Request& r) { r.quality = apo::QualityLevel::speed_first; }));

  // LoRA sets agree by path and strength, in order.
  Request l1 = base();
  Request l2 = base();
  l1.loras = {{"a.safetensors", 0.5}};
  l2.loras = {{"a.safetensors", 0.5}};
  CHECK(same_key(l1, l2));
  l2.loras[0].strength = 0.75;
  CHECK_FALSE(same_key(l1, l2));
  // An owned key looks up as its view.
  const auto owned = apo::batch::group_key(l1);
  CHECK(GroupKeyView(owned) == GroupKeyView(l1));
}

TEST_CASE("validation names the first field no workflow could accept", "[batch][request]") {
  const auto message = [](Request r) -> std::string {
    try {
      apo::validate(r);
    } catch (const apo::Error& e) {
      CHECK(e.code() == apo::ErrorCode::InvalidArgument);
      return e.message();
    }
    return "";
  };
  CHECK(message(base()).empty());
  Request r = base();
  r.image = at::rand({3, 64, 64});
  r.mask = at::rand({64, 64});
  r.first_frame = at::rand({4, 32, 32});
  CHECK(message(r).empty());
  r.strength = 1.5;
  CHECK(message(r).find("strength") != std::string::npos);
  r = base();
  r.image = at::zeros({64, 64});
  CHECK(message(r).find("[channels, height, width]") != std::string::npos);
  r.image = at::zeros({3, 8, 8}, at::kInt);
  CHECK(message(r).find("floating-point") != std::string::npos);
  r.image = at::full({3, 8, 8}, INFINITY);
  CHECK(message(r).find("NaN or infinity") != std::string::npos);
  r = base();
  r.mask = at::zeros({2, 8, 8});
  CHECK(message(r).find("mask") != std::string::npos);
  r = base();
  r.steps = 0;
  CHECK(message(r).find("steps") != std::string::npos);
  r = base();
  r.loras.resize(17, {"a.safetensors", 1.0});
  CHECK(message(r).find("LoRAs") != std::string::npos);
  r = base();
  r.prompt.assign(apo::kMaxPromptBytes + 1, 'x');
  CHECK(message(r).find("prompts") != std::string::npos);
}
