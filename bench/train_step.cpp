// Training throughput of the zoo's model: fine-tuning steps (frozen head, cross-entropy) and
// contrastive pretraining steps (two views per image), against the machine's SGEMM peak.
//
//   train_step [--steps 30] [--runs 5]
//
// The model is the full zoo preset's (ZooBuildOptions::preset), with random weights and
// seeded random images, so nothing needs to be built first. Each run times --steps steps
// of each objective after one warm-up run; the figures are medians over the runs. The two
// objectives alternate, so drift of the machine's speed lands on both. Prints one JSON object.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/parallel.h"
#include "train/trainer.h"
#include "zoo/build.h"

using namespace amalgam;
using namespace amalgam::bench;

namespace {

Tensor random_images(int64_t n, uint64_t seed) {
  Tensor images = Tensor::uninitialized(DType::U8, {n, 28, 28, 1});
  SplitMix64 rng(seed);
  for (uint8_t& v : images.mutable_data<uint8_t>()) v = static_cast<uint8_t>(rng.below(256));
  return images;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t steps = 30;
  int runs = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--steps" && i + 1 < argc)
      steps = std::stoll(argv[++i]);
    else if (arg == "--runs" && i + 1 < argc)
      runs = std::stoi(argv[++i]);
    else {
      std::cerr << "usage: train_step [--steps N] [--runs N]\n";
      return 2;
    }
  }
  const ZooBuildOptions zoo = ZooBuildOptions::preset(false);
  const ClipVisionConfig config = ClipVisionConfig::from_json(zoo.model, "zoo preset");
  const ImageProcessorConfig preprocess = zoo_preprocess();

  // Fine-tuning: the zoo's options, one epoch of `steps` batches.
  train::TrainOptions ft = zoo.finetune;
  ft.epochs = 1;
  ft.quiet = true;
  const int64_t ft_images = steps * ft.batch_size;
  const Tensor images = random_images(ft_images, 7);
  std::vector<int64_t> labels(static_cast<size_t>(ft_images));
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int64_t>(i % 10);
  const ClipVisionModel base(config, random_clip_vision_weights(config, 1, false));
  const train::BatchSource batches = train::classification_batches(images, labels, preprocess, 1, ft.max_shift);
  auto finetune = [&] {
    std::unique_ptr<Model> model = std::make_unique<ClipVisionModel>(base);
    ClassifierHead head = train::new_head(10, config.hidden_size, 2);
    return train::train_encoder(model, head, false, ft_images, batches, ft);
  };

  // Pretraining: the zoo's options and views; each step sees two views of a batch.
  train::TrainOptions pre = zoo.pretrain;
  pre.epochs = 1;
  pre.quiet = true;
  const int64_t pre_images = steps * pre.batch_size;
  const Tensor pool = random_images(pre_images, 8);
  const ClipVisionModel base_projected(config, random_clip_vision_weights(config, 1, true));
  const train::BatchSource views = train::contrastive_views(pool, preprocess, 1, zoo.views);
  auto pretrain = [&] {
    std::unique_ptr<Model> model = std::make_unique<ClipVisionModel>(base_projected);
    return train::pretrain_contrastive(model, pre_images, views, pre, zoo.temperature);
  };

  finetune();  // warm-up: page faults, BLAS buffers, thread pool
  pretrain();
  std::vector<double> ft_rates, pre_rates;
  for (int r = 0; r < runs; ++r) {
    ft_rates.push_back(finetune().images_per_second);
    pre_rates.push_back(pretrain().images_per_second);  // counts both views: the encoder's images
  }
  // A backward is twice a forward's work (the gradients of the inputs and of the weights).
  const double per_image = 3 * forward_flops(config, 1, false);
  const double peak = sgemm_peak_gflops(32 * config.tokens(), config.intermediate_size, config.hidden_size);
  auto summary = [&](const std::vector<double>& rates, int64_t batch) {
    const double rate = median(rates);
    return nlohmann::json{{"batch", batch},
                          {"images_per_second_median", rate},
                          {"images_per_second_all", rates},
                          {"gflops", rate * per_image / 1e9},
                          {"fraction_of_sgemm_peak", rate * per_image / 1e9 / peak}};
  };
  nlohmann::json out = {{"model", "zoo preset, random weights and images"},
                        {"threads", num_threads()},
                        {"steps_per_run", steps},
                        {"runs", runs},
                        {"train_gflop_per_image", per_image / 1e9},
                        {"sgemm_peak_gflops", peak},
                        {"finetune", summary(ft_rates, ft.batch_size)},
                        {"pretrain_encoder_images", summary(pre_rates, 2 * pre.batch_size)}};
  std::cout << out.dump(2) << "\n";
  return 0;
}
