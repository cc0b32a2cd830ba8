// Forward throughput of the CLIP vision engine against the machine's own SGEMM peak.
//
//   clip_forward [--batch 32] [--runs 5] [--save DIR]
//
// Builds a ViT-B/32-shaped model with random weights, writes it as a Hugging Face
// checkpoint and loads it back (the path a real checkpoint takes), then times the forward
// of one batch (median of --runs) and the best of a few SGEMMs of the model's own shapes.
// With --save, the checkpoint, the pixels and amalgam's features stay in DIR so that
// bench/torch_clip_forward.py can time PyTorch on the same input and compare the outputs.
// Prints one JSON object.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/parallel.h"
#include "linalg/linalg.h"
#include "model/families/clip_vision.h"

using namespace amalgam;
using namespace amalgam::bench;

int main(int argc, char** argv) {
  int64_t batch = 32;
  int runs = 5;
  std::filesystem::path save;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--batch" && i + 1 < argc)
      batch = std::stoll(argv[++i]);
    else if (arg == "--runs" && i + 1 < argc)
      runs = std::stoi(argv[++i]);
    else if (arg == "--save" && i + 1 < argc)
      save = argv[++i];
    else {
      std::cerr << "usage: clip_forward [--batch N] [--runs N] [--save DIR]\n";
      return 2;
    }
  }
  const ClipVisionConfig config;  // CLIPVisionConfig's defaults: ViT-B/32
  const bool keep = !save.empty();
  const std::filesystem::path dir = keep ? save : std::filesystem::temp_directory_path() / "amalgam-clip-forward";
  const std::filesystem::path ckpt = dir / "checkpoint";
  std::filesystem::remove_all(ckpt);
  save_clip_vision(ckpt, config, random_clip_vision_weights(config, 1, true), DType::F32, true);
  const auto t_load = Clock::now();
  const ClipVisionModel model = ClipVisionModel::load(ckpt);
  const double load_s = seconds_since(t_load);

  std::vector<float> pixels(static_cast<size_t>(batch * config.num_channels * config.image_size * config.image_size));
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<float>((i * 2654435761u) % 1000) / 500.0f - 1.0f;

  Matrix features = model.features(pixels, batch);  // warm-up: buffers, page faults, BLAS threads
  std::vector<double> times;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = Clock::now();
    features = model.features(pixels, batch);
    times.push_back(seconds_since(t0));
  }
  const double t = median(times);
  const double flops = forward_flops(config, batch, true);
  const double peak = sgemm_peak_gflops(batch * config.tokens(), config.intermediate_size, config.hidden_size);

  if (keep) {
    std::ofstream(dir / "pixels.f32", std::ios::binary)
        .write(reinterpret_cast<const char*>(pixels.data()), static_cast<std::streamsize>(pixels.size() * 4));
    std::ofstream(dir / "features.f32", std::ios::binary)
        .write(reinterpret_cast<const char*>(features.data.data()),
               static_cast<std::streamsize>(features.data.size() * 4));
  } else {
    std::filesystem::remove_all(dir);
  }
  nlohmann::json out = {{"model", "ViT-B/32 shape, random weights, F32"},
                        {"batch", batch},
                        {"threads", num_threads()},
                        {"runs", runs},
                        {"load_seconds", load_s},
                        {"forward_seconds_median", t},
                        {"forward_seconds_all", times},
                        {"images_per_second", static_cast<double>(batch) / t},
                        {"forward_gflops", flops / t / 1e9},
                        {"sgemm_peak_gflops", peak},
                        {"fraction_of_sgemm_peak", flops / t / 1e9 / peak}};
  std::cout << out.dump(2) << "\n";
  return 0;
}
