// A zero-shot-like head: no training on the encoder's features. For each class, the mean of
// the frozen encoder's L2-normalized features over a few of its images, normalized and
// scaled like CLIP's logit scale (100), applied to normalized features, no bias.
//
// CLIP's zero-shot heads are text embeddings of the class names: fixed before any image of
// the task is fit, and much weaker than a probe on the same features (ViT-B/32 over the
// merging papers' eight tasks: 48.2% zero-shot against about 80% for probes). A prototype of
// 16 images per class plays that part here: it says which features a class has, not how to
// weigh them, so the base sits far below its fine-tunes, as CLIP's zero-shot model does.
#pragma once

#include <cstdint>
#include <span>

#include "core/tensor.h"
#include "data/preprocess.h"
#include "model/classifier_head.h"
#include "model/model.h"

namespace amalgam::train {

struct PrototypeOptions {
  int64_t per_class = 16;      // images averaged per class: the first ones of each class in split order
  double logit_scale = 100.0;  // CLIP's learned logit scale saturates at 100
};

// `images` U8 [N, H, W, C] with `labels`; every class must have at least one image (InputError
// naming the class otherwise, with `where` naming the task).
ClassifierHead prototype_head(const Model& model, const Tensor& images, std::span<const int64_t> labels,
                              int64_t classes, const ImageProcessorConfig& preprocess, const PrototypeOptions& options,
                              const std::string& where);

}  // namespace amalgam::train
