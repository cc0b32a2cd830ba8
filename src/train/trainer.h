// Training a vision encoder (any family with a training graph, train/graph.h) with a
// classification head: fine-tuning with the head
// frozen (as the task-vector literature does with CLIP's zero-shot heads), self-supervised
// contrastive pretraining (SimCLR), and linear probes on frozen features.
//
// AdamW with decoupled weight decay on matrices only, linear warmup then cosine decay,
// global gradient-norm clipping, seeded shuffling and random-shift augmentation. Same data,
// options and seed (and thread count): same bits.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "data/preprocess.h"
#include "data/task.h"
#include "model/classifier_head.h"
#include "model/model.h"

namespace amalgam::train {

struct TrainOptions {
  int64_t epochs = 2;
  int64_t batch_size = 64;
  double learning_rate = 1e-3;
  // The head's learning rate over the encoder's. On L2-normalized features the logits are
  // bounded by the head's row norms, which must grow to about 10 for confident predictions;
  // at the encoder's rate that alone would take thousands of steps.
  double head_lr_scale = 10.0;
  double weight_decay = 0.05;
  double warmup_fraction = 0.1;
  double grad_clip = 1.0;
  int64_t max_shift = 2;  // augmentation: random translation by up to this many pixels
  uint64_t seed = 0;
  bool quiet = false;
};

struct TrainReport {
  int64_t steps = 0;
  double seconds = 0;
  double images_per_second = 0;
  std::vector<double> epoch_loss;      // mean training loss per epoch
  std::vector<double> epoch_accuracy;  // training accuracy per epoch (augmented batches)
};

// Fills `pixels` ([batch, C, H, W], the model's input) and `labels` for examples `indices`.
using BatchSource = std::function<void(std::span<const int64_t> indices, SplitMix64& rng, std::vector<float>& pixels,
                                       std::vector<int64_t>& labels)>;

// Labelled images (U8 [N, H, W, C]) preprocessed for a model with `channels` inputs, shifted
// at random by up to `max_shift` pixels (0: no augmentation).
BatchSource classification_batches(const Tensor& images, std::span<const int64_t> labels,
                                   const ImageProcessorConfig& preprocess, int64_t channels, int64_t max_shift);
// How two views of one image differ in contrastive pretraining. Geometry and photometry
// only, no rotation or flip: orientation is what some tasks are about.
struct ViewAugmentation {
  double min_scale = 0.8, max_scale = 1.2;  // zoom about the centre
  double max_shift = 3;                     // translation in pixels
  double contrast = 0.4;                    // contrast scaled by 1 +- this
  double brightness = 0.3;                  // added, in normalized units
  double noise = 0.2;                       // standard deviation of added Gaussian noise
  int64_t cutout = 8;                       // side of a square blanked with probability 1/2 (0: none)
};

// Unlabelled images in pairs of augmented views: for a batch of B indices, B first views
// then B second views, and no labels. The source of contrastive pretraining.
BatchSource contrastive_views(const Tensor& images, const ImageProcessorConfig& preprocess, int64_t channels,
                              const ViewAugmentation& augmentation);

// Trains the encoder `model` on `examples` examples from `source`, through `head` (updated
// too when `train_head`); `model` is replaced by the trained one.
TrainReport train_encoder(std::unique_ptr<Model>& model, ClassifierHead& head, bool train_head, int64_t examples,
                          const BatchSource& source, const TrainOptions& options);

// Self-supervised pretraining with the SimCLR loss (contrastive_loss) on the encoder's
// features (a projection after the pooled output, when the model has one, is SimCLR's
// projection head, dropped afterwards); `model` is replaced by the trained one. Accuracy is
// the share of views whose nearest other view is their partner.
TrainReport pretrain_contrastive(std::unique_ptr<Model>& model, int64_t examples, const BatchSource& views,
                                 const TrainOptions& options, double temperature);

// A linear probe: a head fitted (softmax regression, AdamW) on the frozen encoder's
// L2-normalized features of the images.
ClassifierHead fit_probe(const Model& model, const Tensor& images, std::span<const int64_t> labels, int64_t classes,
                         const ImageProcessorConfig& preprocess, const TrainOptions& options);

// A zero-initialised head for `classes` classes on `dim` features (normalized features).
ClassifierHead new_head(int64_t classes, int64_t dim, uint64_t seed);

}  // namespace amalgam::train
