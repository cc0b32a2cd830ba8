// Fuzzes a CLIP checkpoint's config.json: each input is the config.json of a directory whose
// model.safetensors holds a tiny CLIP vision model (2 blocks, width 12). Loading must either
// fail with an InputError or give a model that runs; a config that disagrees with the
// weights must never make amalgam size buffers from the config alone.
#include <vector>

#include "clip_fixtures.h"
#include "fuzz_util.h"
#include "model/families/clip_vision.h"

namespace {

using namespace amalgam;
namespace fs = std::filesystem;

const fs::path& model_dir() {
  static const fs::path dir = [] {
    const fs::path d = fuzz::work_dir() / "clip";
    const ClipVisionConfig c = amalgam::testing::tiny_clip_config();
    save_clip_vision(d, c, random_clip_vision_weights(c, 1, true), DType::F32, true);
    return d;
  }();
  return dir;
}

void load_and_run(const fs::path& dir) {
  const ClipVisionModel model = ClipVisionModel::load(dir);
  const auto& c = model.config();
  const std::vector<float> pixels(static_cast<size_t>(c.num_channels * c.image_size * c.image_size), 0.5f);
  (void)model.features(pixels, 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path dir = model_dir();
  fuzz::write_bytes(dir / "config.json", fuzz::as_text(data, size));
  fuzz::accept_input_errors([&] { load_and_run(dir); });
  return 0;
}
