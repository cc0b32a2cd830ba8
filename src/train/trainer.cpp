#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/lane_sum.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "train/graph.h"
#include "train/ops.h"

namespace amalgam::train {

namespace {

// The sum of squares of v in double: fixed chunks summed on every core (lane_sum), the
// chunks' sums added in order, so the result does not depend on the number of threads. A
// single running sum over a million gradients held the other core idle for a percent of a
// step.
double sum_of_squares(std::span<const float> v) {
  constexpr size_t kChunk = 1 << 15;
  std::vector<double> chunk_sums((v.size() + kChunk - 1) / kChunk);
  parallel_chunks(v.size(), kChunk, [&](size_t begin, size_t end) {
    const float* x = v.data() + begin;
    chunk_sums[begin / kChunk] = lane_sum<double>(static_cast<int64_t>(end - begin),
                                                  [x](int64_t i) { return static_cast<double>(x[i]) * x[i]; });
  });
  double sum = 0;
  for (double s : chunk_sums) sum += s;
  return sum;
}

// One contiguous run of parameters with its gradient and Adam moments.
struct ParamSegment {
  std::span<float> values;
  std::span<float> grads;
  bool decay;
  double lr_scale;
  std::vector<float> m, v;
};

class AdamW {
 public:
  AdamW(double beta1, double beta2, double eps, double weight_decay)
      : b1_(beta1), b2_(beta2), eps_(eps), wd_(weight_decay) {}

  void add(std::span<float> values, std::span<float> grads, bool decay, double lr_scale = 1.0) {
    segments_.push_back(
        {values, grads, decay, lr_scale, std::vector<float>(values.size()), std::vector<float>(values.size())});
  }

  // Rescales the gradients so that their global L2 norm is at most `max_norm`; returns the norm.
  double clip(double max_norm) {
    double sq = 0;
    for (const auto& s : segments_) sq += sum_of_squares(s.grads);
    const double norm = std::sqrt(sq);
    if (max_norm > 0 && norm > max_norm) {
      const auto scale = static_cast<float>(max_norm / norm);
      for (auto& s : segments_)
        for (float& g : s.grads) g *= scale;
    }
    return norm;
  }

  void step(double lr) {
    ++t_;
    const double c1 = 1 - std::pow(b1_, static_cast<double>(t_)), c2 = 1 - std::pow(b2_, static_cast<double>(t_));
    const auto b1 = static_cast<float>(b1_), b2 = static_cast<float>(b2_);
    const auto inv_c2 = static_cast<float>(1 / c2), eps = static_cast<float>(eps_);
    for (auto& s : segments_) {
      const double seg_lr = lr * s.lr_scale;
      const auto step = static_cast<float>(seg_lr / c1);
      const float decay = s.decay ? static_cast<float>(1 - seg_lr * wd_) : 1.0f;
      parallel_chunks(s.values.size(), 1 << 15, [&](size_t begin, size_t end) {
        for (size_t i = begin; i < end; ++i) {
          const float g = s.grads[i];
          s.m[i] = b1 * s.m[i] + (1 - b1) * g;
          s.v[i] = b2 * s.v[i] + (1 - b2) * g * g;
          s.values[i] = s.values[i] * decay - step * s.m[i] / (std::sqrt(s.v[i] * inv_c2) + eps);
        }
      });
    }
  }

 private:
  double b1_, b2_, eps_, wd_;
  int64_t t_ = 0;
  std::vector<ParamSegment> segments_;
};

// Linear warmup to the peak, then cosine decay to zero.
double learning_rate(const TrainOptions& o, int64_t step, int64_t total) {
  const auto warmup = static_cast<int64_t>(o.warmup_fraction * static_cast<double>(total));
  if (step < warmup) return o.learning_rate * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress =
      static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  return o.learning_rate * 0.5 * (1 + std::cos(std::numbers::pi * progress));
}

// Translates each [C, H, W] image by (dy, dx), filling with `fill` (the normalized value of
// a black pixel, the background of the zoo's tasks).
void shift_image(float* image, int64_t channels, int64_t side, int64_t dy, int64_t dx, float fill) {
  std::vector<float> src(image, image + channels * side * side);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t y = 0; y < side; ++y)
      for (int64_t x = 0; x < side; ++x) {
        const int64_t sy = y - dy, sx = x - dx;
        image[(c * side + y) * side + x] =
            sy >= 0 && sy < side && sx >= 0 && sx < side ? src[static_cast<size_t>((c * side + sy) * side + sx)] : fill;
      }
}

float black_value(const ImageProcessorConfig& p, int64_t channel) {
  if (!p.do_normalize) return 0.0f;
  const auto c = static_cast<size_t>(channel);
  const double mean = p.image_mean.size() > c ? p.image_mean[c] : p.image_mean.front();
  const double std = p.image_std.size() > c ? p.image_std[c] : p.image_std.front();
  return static_cast<float>(-mean / std);
}

void augment(std::vector<float>& pixels, int64_t batch, int64_t channels, int64_t side, int64_t max_shift,
             const ImageProcessorConfig& p, SplitMix64& rng) {
  if (max_shift <= 0) return;
  const auto span = static_cast<uint64_t>(2 * max_shift + 1);
  for (int64_t b = 0; b < batch; ++b) {
    const auto dy = static_cast<int64_t>(rng.below(span)) - max_shift;
    const auto dx = static_cast<int64_t>(rng.below(span)) - max_shift;
    shift_image(pixels.data() + b * channels * side * side, channels, side, dy, dx, black_value(p, 0));
  }
}

}  // namespace

namespace {

// Preprocesses images[indices] and shifts them at random; returns the images' side length.
int64_t augmented_batch(const Tensor& images, std::span<const int64_t> indices, const ImageProcessorConfig& preprocess,
                        int64_t channels, int64_t max_shift, SplitMix64& rng, std::vector<float>& pixels) {
  const ImageShape stored{images.dim(1), images.dim(2), images.dim(3)};
  const ImageShape input = preprocessed_shape(preprocess, stored, channels);
  if (input.height != input.width) throw InputError("training needs square model inputs, got " + to_string(input));
  pixels = preprocess_batch(images, indices, preprocess, channels);
  augment(pixels, static_cast<int64_t>(indices.size()), channels, input.height, max_shift, preprocess, rng);
  return input.height;
}

}  // namespace

BatchSource classification_batches(const Tensor& images, std::span<const int64_t> labels,
                                   const ImageProcessorConfig& preprocess, int64_t channels, int64_t max_shift) {
  return [&images, labels, preprocess, channels, max_shift](std::span<const int64_t> indices, SplitMix64& rng,
                                                            std::vector<float>& pixels, std::vector<int64_t>& out) {
    augmented_batch(images, indices, preprocess, channels, max_shift, rng, pixels);
    out.clear();
    for (int64_t i : indices) out.push_back(labels[static_cast<size_t>(i)]);
  };
}

namespace {

// One random view of a preprocessed [C, side, side] image, in place: bilinear zoom and shift
// about the centre, contrast and brightness about the black level, noise, and a cutout.
void random_view(float* image, int64_t channels, int64_t side, float black, const ViewAugmentation& a,
                 SplitMix64& rng) {
  auto uniform = [&rng](double lo, double hi) {
    return lo + (hi - lo) * static_cast<double>(rng.below(1u << 24)) / static_cast<double>(1u << 24);
  };
  const double scale = uniform(a.min_scale, a.max_scale);
  const double dy = uniform(-a.max_shift, a.max_shift), dx = uniform(-a.max_shift, a.max_shift);
  const double contrast = uniform(1 - a.contrast, 1 + a.contrast), brightness = uniform(-a.brightness, a.brightness);
  const double centre = static_cast<double>(side - 1) / 2;
  const size_t plane = static_cast<size_t>(side * side);
  std::vector<float> src(image, image + channels * side * side);
  for (int64_t c = 0; c < channels; ++c) {
    const float* in = src.data() + static_cast<size_t>(c) * plane;
    float* out = image + static_cast<size_t>(c) * plane;
    auto at = [&](int64_t y, int64_t x) { return y >= 0 && y < side && x >= 0 && x < side ? in[y * side + x] : black; };
    for (int64_t y = 0; y < side; ++y)
      for (int64_t x = 0; x < side; ++x) {
        const double sy = (static_cast<double>(y) - centre - dy) / scale + centre;
        const double sx = (static_cast<double>(x) - centre - dx) / scale + centre;
        const auto y0 = static_cast<int64_t>(std::floor(sy)), x0 = static_cast<int64_t>(std::floor(sx));
        const double fy = sy - static_cast<double>(y0), fx = sx - static_cast<double>(x0);
        const double v = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) +
                         fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1));
        out[y * side + x] = static_cast<float>(black + contrast * (v - black) + brightness);
      }
  }
  if (a.noise > 0)
    for (int64_t i = 0; i < channels * side * side; ++i) {
      // Box-Muller from two uniforms in (0, 1].
      const double u1 = uniform(1e-7, 1), u2 = uniform(0, 1);
      image[i] += static_cast<float>(a.noise * std::sqrt(-2 * std::log(u1)) * std::cos(2 * std::numbers::pi * u2));
    }
  if (a.cutout > 0 && rng.below(2) == 1) {
    const int64_t size = std::min(a.cutout, side);
    const auto y0 = static_cast<int64_t>(rng.below(static_cast<uint64_t>(side - size + 1)));
    const auto x0 = static_cast<int64_t>(rng.below(static_cast<uint64_t>(side - size + 1)));
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t y = y0; y < y0 + size; ++y)
        for (int64_t x = x0; x < x0 + size; ++x) image[(c * side + y) * side + x] = black;
  }
}

}  // namespace

BatchSource contrastive_views(const Tensor& images, const ImageProcessorConfig& preprocess, int64_t channels,
                              const ViewAugmentation& augmentation) {
  return [&images, preprocess, channels, augmentation](std::span<const int64_t> indices, SplitMix64& rng,
                                                       std::vector<float>& pixels, std::vector<int64_t>& out) {
    std::vector<int64_t> twice(indices.begin(), indices.end());
    twice.insert(twice.end(), indices.begin(), indices.end());
    const int64_t side = augmented_batch(images, twice, preprocess, channels, 0, rng, pixels);
    const int64_t floats = channels * side * side;
    // A seed per view, drawn in order, so the views can be drawn on every core (per-pixel
    // noise makes them a few percent of a step) and still be the same whatever the threads.
    std::vector<uint64_t> seeds(twice.size());
    for (uint64_t& seed : seeds) seed = rng.next();
    parallel_for(twice.size(), [&](size_t b) {
      SplitMix64 view_rng(seeds[b]);
      random_view(pixels.data() + static_cast<int64_t>(b) * floats, channels, side, black_value(preprocess, 0),
                  augmentation, view_rng);
    });
    out.clear();
  };
}

ClassifierHead new_head(int64_t classes, int64_t dim, uint64_t seed) {
  ClassifierHead head;
  head.weight = Matrix(classes, dim);
  head.bias.assign(static_cast<size_t>(classes), 0.0f);
  head.normalize_features = true;
  SplitMix64 rng(seed);
  // Random rows of norm about 6: on unit features the first logits then differ by order
  // one, so the encoder gets a useful gradient from the first step. (Near-zero rows give
  // near-uniform softmax outputs and stall the encoder until the head has grown.)
  const float scale = 10.0f / std::sqrt(static_cast<float>(dim));
  for (auto& w : head.weight.data) w = static_cast<float>(static_cast<double>(rng.below(2001)) / 1000.0 - 1.0) * scale;
  return head;
}

namespace {

// What one step's loss reports.
struct LossStep {
  double loss = 0;
  int64_t correct = 0;
};

// The head on top of the features: logits, loss, and the gradient back to the features.
LossStep head_forward_backward(ClassifierHead& head, std::span<const float> features, int64_t batch,
                               std::span<const int64_t> labels, std::vector<float>* dfeatures, float* dw, float* db) {
  const int64_t dim = head.dim(), classes = head.classes();
  std::vector<float> normed(features.begin(), features.end()), norms(static_cast<size_t>(batch));
  if (head.normalize_features) l2_normalize_forward<float>(features.data(), batch, dim, normed.data(), norms.data());
  std::vector<float> logits(static_cast<size_t>(batch * classes)), dlogits(logits.size());
  linear_forward<float>(normed.data(), batch, dim, head.weight.data.data(),
                        head.bias.empty() ? nullptr : head.bias.data(), classes, logits.data());
  LossStep s;
  s.loss = softmax_cross_entropy<float>(logits.data(), batch, classes, labels, dlogits.data(), &s.correct);
  std::vector<float> dnormed(normed.size());
  linear_backward<float>(normed.data(), dlogits.data(), batch, dim, head.weight.data.data(), classes,
                         dfeatures ? dnormed.data() : nullptr, false, dw, head.bias.empty() ? nullptr : db);
  if (dfeatures) {
    dfeatures->resize(normed.size());
    if (head.normalize_features)
      l2_normalize_backward<float>(normed.data(), norms.data(), dnormed.data(), batch, dim, dfeatures->data());
    else
      *dfeatures = dnormed;
  }
  return s;
}

// The loss of one batch on the encoder's features [images, dim]: returns it and fills
// dfeatures; parameters it owns (a head) accumulate their own gradients.
using FeatureLoss = std::function<LossStep(std::span<const float> features, int64_t images,
                                           std::span<const int64_t> labels, std::vector<float>& dfeatures)>;

// The training loop shared by every objective: seeded epochs over `examples`, the encoder's
// forward, the loss, backward, clipping and an AdamW step (`adam` may already hold the
// loss's own parameters). Accuracy counts `correct` over the batch's images.
TrainReport run_training(std::unique_ptr<Model>& model, AdamW& adam, int64_t examples, const BatchSource& source,
                         const TrainOptions& options, const FeatureLoss& loss) {
  const std::unique_ptr<TrainGraph<float>> graph = make_train_graph(*model);
  std::vector<float> params = model->parameters();
  if (params.size() != graph->layout().total)
    throw std::logic_error("run_training: the training graph's layout is not the model's");
  std::vector<float> grads(params.size());
  for (const ParameterSlot& s : graph->layout().slots)
    adam.add(std::span(params).subspan(s.offset, s.size), std::span(grads).subspan(s.offset, s.size), s.decay);

  const int64_t bs = std::min(options.batch_size, examples);
  const int64_t per_epoch = examples / bs;  // the last partial batch is dropped: constant batch statistics
  const int64_t total = per_epoch * options.epochs;
  const int64_t image_floats = graph->image_floats();
  SplitMix64 rng(options.seed);
  TrainReport report;
  Progress progress("train", static_cast<uint64_t>(total), 0, options.quiet, "steps");
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> pixels, features, dfeatures;
  std::vector<int64_t> labels;
  int64_t images_seen = 0;
  for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    const auto order = permutation(examples, rng);
    double loss_sum = 0;
    int64_t correct = 0, scored = 0;
    for (int64_t b = 0; b < per_epoch; ++b) {
      check_interrupt();
      source(std::span(order).subspan(static_cast<size_t>(b * bs), static_cast<size_t>(bs)), rng, pixels, labels);
      const auto images = static_cast<int64_t>(pixels.size()) / image_floats;
      graph->forward(params, pixels, images, features);
      const LossStep step = loss(features, images, labels, dfeatures);
      std::fill(grads.begin(), grads.end(), 0.0f);
      graph->backward(params, dfeatures, grads);
      adam.clip(options.grad_clip);
      adam.step(learning_rate(options, report.steps, total));
      ++report.steps;
      loss_sum += step.loss;
      correct += step.correct;
      scored += images;
      progress.advance(1, 0);
    }
    images_seen += scored;
    report.epoch_loss.push_back(per_epoch ? loss_sum / static_cast<double>(per_epoch) : 0.0);
    report.epoch_accuracy.push_back(scored ? static_cast<double>(correct) / static_cast<double>(scored) : 0.0);
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  report.images_per_second = report.seconds > 0 ? static_cast<double>(images_seen) / report.seconds : 0.0;
  model = model->with_parameters(params);
  return report;
}

}  // namespace

TrainReport train_encoder(std::unique_ptr<Model>& model, ClassifierHead& head, bool train_head, int64_t examples,
                          const BatchSource& source, const TrainOptions& options) {
  std::vector<float> head_dw(head.weight.data.size()), head_db(head.bias.size());
  AdamW adam(0.9, 0.999, 1e-8, options.weight_decay);
  if (train_head) {
    adam.add(head.weight.data, head_dw, true, options.head_lr_scale);
    if (!head.bias.empty()) adam.add(head.bias, head_db, false, options.head_lr_scale);
  }
  return run_training(model, adam, examples, source, options,
                      [&](std::span<const float> features, int64_t images, std::span<const int64_t> labels,
                          std::vector<float>& dfeatures) {
                        std::fill(head_dw.begin(), head_dw.end(), 0.0f);
                        std::fill(head_db.begin(), head_db.end(), 0.0f);
                        return head_forward_backward(head, features, images, labels, &dfeatures,
                                                     train_head ? head_dw.data() : nullptr,
                                                     train_head ? head_db.data() : nullptr);
                      });
}

TrainReport pretrain_contrastive(std::unique_ptr<Model>& model, int64_t examples, const BatchSource& views,
                                 const TrainOptions& options, double temperature) {
  AdamW adam(0.9, 0.999, 1e-8, options.weight_decay);
  std::vector<float> z, norms, dz;
  return run_training(
      model, adam, examples, views, options,
      [&](std::span<const float> features, int64_t images, std::span<const int64_t>, std::vector<float>& dfeatures) {
        const int64_t dim = static_cast<int64_t>(features.size()) / images;
        z.resize(features.size());
        norms.resize(static_cast<size_t>(images));
        dz.resize(features.size());
        dfeatures.resize(features.size());
        l2_normalize_forward<float>(features.data(), images, dim, z.data(), norms.data());
        LossStep s;
        s.loss = contrastive_loss<float>(z.data(), images / 2, dim, temperature, dz.data(), &s.correct);
        l2_normalize_backward<float>(z.data(), norms.data(), dz.data(), images, dim, dfeatures.data());
        return s;
      });
}

ClassifierHead fit_probe(const Model& model, const Tensor& images, std::span<const int64_t> labels, int64_t classes,
                         const ImageProcessorConfig& preprocess, const TrainOptions& options) {
  // Features once, then softmax regression on them: the encoder is frozen.
  const int64_t n = static_cast<int64_t>(labels.size()), dim = model.head_width();
  const int64_t channels = image_input_of(model, "fit_probe").channels;
  std::vector<float> features(static_cast<size_t>(n * dim));
  constexpr int64_t kBatch = 256;
  for (int64_t begin = 0; begin < n; begin += kBatch) {
    check_interrupt();
    std::vector<int64_t> idx;
    for (int64_t i = begin; i < std::min(n, begin + kBatch); ++i) idx.push_back(i);
    const auto pixels = preprocess_batch(images, idx, preprocess, channels);
    const Matrix f = model.forward(ModelInput::of_images(pixels, static_cast<int64_t>(idx.size())));
    std::copy(f.data.begin(), f.data.end(), features.begin() + begin * dim);
  }
  ClassifierHead head = new_head(classes, dim, options.seed);
  std::vector<float> dw(head.weight.data.size()), db(head.bias.size());
  AdamW adam(0.9, 0.999, 1e-8, options.weight_decay);
  adam.add(head.weight.data, dw, true, options.head_lr_scale);
  adam.add(head.bias, db, false, options.head_lr_scale);
  const int64_t bs = std::min(options.batch_size, n);
  const int64_t per_epoch = n / bs, total = per_epoch * options.epochs;
  SplitMix64 rng(options.seed);
  int64_t step = 0;
  std::vector<float> batch_features(static_cast<size_t>(bs * dim));
  std::vector<int64_t> batch_labels(static_cast<size_t>(bs));
  for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    const auto order = permutation(n, rng);
    for (int64_t b = 0; b < per_epoch; ++b) {
      for (int64_t i = 0; i < bs; ++i) {
        const int64_t src = order[static_cast<size_t>(b * bs + i)];
        std::copy(features.begin() + src * dim, features.begin() + (src + 1) * dim, batch_features.begin() + i * dim);
        batch_labels[static_cast<size_t>(i)] = labels[static_cast<size_t>(src)];
      }
      std::fill(dw.begin(), dw.end(), 0.0f);
      std::fill(db.begin(), db.end(), 0.0f);
      head_forward_backward(head, batch_features, bs, batch_labels, nullptr, dw.data(), db.data());
      adam.step(learning_rate(options, step++, total));
    }
  }
  return head;
}

}  // namespace amalgam::train
