// `amalgam zoo build`: the embedded benchmark's models, made the way the merging papers make
// theirs, from the zoo's eight tasks (zoo/tasks.h):
//
//   1. data      the eight tasks, written under zoo/data/<task>/
//   2. base      a CLIP-style ViT (CLIPVisionModel layout) pretrained without any task label:
//                contrastive learning (SimCLR: two augmented views of each image, told
//                apart from the batch's other images) on an unlabeled pool of train-split
//                and generated images, through a projection that is then discarded
//   3. heads     one head per task on the base's frozen features, zoo/heads/<task>.safetensors:
//                class prototypes (zero-shot-like, as CLIP's text heads: not fit to the
//                features) or linear probes, as `heads` says; the probes are written to
//                zoo/probes/<task>.safetensors either way (the base's linear-probe ceiling)
//   4. finetuned one fine-tune per task from the base through its frozen head,
//                zoo/finetuned/<task>/
//   5. zoo.json  the options, every accuracy measured (base + head and fine-tuned, on val
//                and test), the regime figures (zoo/regime.h: the gap, what simple
//                averaging recovers, weight disentanglement) and the time of each stage
//
// Deterministic (same options, same bits on the same machine and thread count) and cached:
// a zoo whose zoo.json records the same options is not rebuilt.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/model.h"
#include "train/prototype_head.h"
#include "train/trainer.h"
#include "zoo/tasks.h"

namespace amalgam {

// The heads the fine-tunes are trained through and the base is scored with.
enum class ZooHeads { Prototype, Probe };
const char* zoo_heads_name(ZooHeads heads);

struct ZooBuildOptions {
  bool small = false;
  ZooHeads heads = ZooHeads::Probe;
  train::PrototypeOptions prototype;
  ZooDataOptions data;
  // The encoder's config.json: the model the zoo makes (model/model.h's random_model) and
  // trains. It has a projection, through which the contrastive pretraining trains and which
  // is then dropped.
  nlohmann::json model;
  ZooPoolOptions pool;
  train::TrainOptions pretrain, probe, finetune;
  train::ViewAugmentation views;  // the contrastive pretraining's augmentation
  double temperature = 0.2;       // of the contrastive loss
  // Supervised pretraining after the contrastive one, on labels that are not any task's
  // classes: which source each pool image came from (a task's train split, or the generated
  // extras). 0 epochs: none (and no key in the options, so zoos from before it stay cached).
  train::TrainOptions domain;
  int64_t finetune_examples = 60000;  // train images per task used for fine-tuning and probes
  // Each fine-tune sees at least this many images: a small task gets more epochs, as the
  // task-vector papers fine-tune every data set for about the same number of steps.
  int64_t finetune_min_images = 0;
  bool quiet = false;
  // Not an option of the result: a zoo built with the same data, model and pretraining options
  // whose data and base are copied instead of made again (the same bits, minutes sooner).
  // InputError naming the first option that differs.
  std::filesystem::path reuse_base_from;

  // The full zoo (about 1.2M parameters, builds in minutes) or the small one for tests.
  static ZooBuildOptions preset(bool small);
  // Everything that changes the result, for the cache check and zoo.json.
  nlohmann::ordered_json to_json() const;
};

// The zoo's image preprocessing (28x28 gray in, normalized to [-1, 1]), as written into every
// checkpoint's preprocessor_config.json.
ImageProcessorConfig zoo_preprocess();

// Builds the zoo in `dir` (atomically), or returns at once when `dir` already holds a zoo built
// with the same options. A zoo with other options is replaced only with `force`. Returns
// zoo.json's content.
nlohmann::ordered_json build_zoo(const std::filesystem::path& dir, const ZooBuildOptions& options, bool force);

}  // namespace amalgam
