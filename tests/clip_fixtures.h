// Small CLIP vision models and tensor readers shared by the tests that build checkpoints.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "data/preprocess.h"
#include "io/checkpoint.h"
#include "model/families/clip_vision.h"

namespace amalgam::testing {

// A 2-block ViT on 8x8 gray images, patch 4 (5 tokens), width 12, with a projection to 5.
inline ClipVisionConfig tiny_clip_config() {
  ClipVisionConfig c;
  c.hidden_size = 12;
  c.intermediate_size = 20;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 3;
  c.image_size = 8;
  c.patch_size = 4;
  c.num_channels = 1;
  c.projection_dim = 5;
  return c;
}

// Feeds 8x8 task images to the model unchanged but normalized.
inline ImageProcessorConfig identity_preprocess() {
  ImageProcessorConfig p;
  p.do_resize = false;
  p.do_center_crop = false;
  p.image_mean = {0.5};
  p.image_std = {0.25};
  return p;
}

inline std::vector<double> tensor_values(const std::filesystem::path& checkpoint, const std::string& name) {
  const Tensor t = CheckpointReader(checkpoint).tensor(name).to(DType::F64);
  return {t.data<double>().begin(), t.data<double>().end()};
}

inline std::vector<float> tensor_floats(const std::filesystem::path& checkpoint, const std::string& name) {
  const Tensor t = CheckpointReader(checkpoint).tensor(name).to(DType::F32);
  return {t.data<float>().begin(), t.data<float>().end()};
}

}  // namespace amalgam::testing
