// Gradient checks: every training op's backward, and the whole CLIP model's, against
// central finite differences of a scalar loss <output, R> in double precision. Also the
// training graph's float forward against the inference engine.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include <omp.h>

#include <nlohmann/json.hpp>
#include "core/parallel.h"
#include "model/families/clip_vision.h"
#include "test_util.h"
#include "train/families/clip_vision.h"
#include "train/ops.h"
#include "train/trainer.h"

namespace amalgam::train {
namespace {

std::vector<double> random_vector(size_t n, uint64_t seed, double scale = 1.0) {
  std::vector<double> v(n);
  uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (auto& x : v) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x = scale * (static_cast<double>(s >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  }
  return v;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Compares `analytic` with central differences of `loss` in every coordinate of `x`
// (at most `max_checks`, spread evenly).
void check_gradient(std::vector<double>& x, const std::vector<double>& analytic, const std::function<double()>& loss,
                    const std::string& what, size_t max_checks = 400) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const size_t step = std::max<size_t>(1, x.size() / max_checks);
  double worst = 0;
  for (size_t i = 0; i < x.size(); i += step) {
    const double saved = x[i], h = 1e-6;
    x[i] = saved + h;
    const double up = loss();
    x[i] = saved - h;
    const double down = loss();
    x[i] = saved;
    const double numeric = (up - down) / (2 * h);
    const double err = std::abs(numeric - analytic[i]) / std::max(1.0, std::abs(numeric));
    worst = std::max(worst, err);
    EXPECT_LT(err, 1e-6) << what << " coordinate " << i << ": analytic " << analytic[i] << " numeric " << numeric;
  }
  EXPECT_LT(worst, 1e-6) << what;
}

TEST(TrainOpsGradient, Linear) {
  const int64_t rows = 5, in = 7, out = 3;
  auto x = random_vector(rows * in, 1), w = random_vector(out * in, 2), b = random_vector(out, 3),
       r = random_vector(rows * out, 4);
  auto loss = [&] {
    std::vector<double> y(rows * out);
    linear_forward<double>(x.data(), rows, in, w.data(), b.data(), out, y.data());
    return dot(y, r);
  };
  std::vector<double> dx(x.size()), dw(w.size(), 0), db(b.size(), 0);
  linear_backward<double>(x.data(), r.data(), rows, in, w.data(), out, dx.data(), false, dw.data(), db.data());
  check_gradient(x, dx, loss, "dx");
  check_gradient(w, dw, loss, "dW");
  check_gradient(b, db, loss, "db");

  // The residual form against a direct loop, into a separate output and in place.
  const auto residual = random_vector(rows * out, 5);
  std::vector<double> y(rows * out), y_in_place = residual;
  linear_forward<double>(x.data(), rows, in, w.data(), b.data(), out, y.data(), residual.data());
  linear_forward<double>(x.data(), rows, in, w.data(), b.data(), out, y_in_place.data(), y_in_place.data());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double expect = b[o] + residual[i * out + o];
      for (int64_t k = 0; k < in; ++k) expect += x[i * in + k] * w[o * in + k];
      EXPECT_NEAR(y[i * out + o], expect, 1e-12);
      EXPECT_NEAR(y_in_place[i * out + o], expect, 1e-12);
    }
}

TEST(TrainOpsGradient, LayerNorm) {
  const int64_t rows = 4, d = 9;
  auto x = random_vector(rows * d, 5, 2.0), g = random_vector(d, 6), b = random_vector(d, 7),
       r = random_vector(rows * d, 8);
  for (auto& v : g) v += 1.0;
  std::vector<double> xhat(rows * d), rstd(rows), y(rows * d);
  auto loss = [&] {
    layer_norm_forward<double>(x.data(), rows, d, g.data(), b.data(), 1e-5, y.data(), xhat.data(), rstd.data());
    return dot(y, r);
  };
  loss();
  std::vector<double> dx(x.size(), 0.5), dg(d, 0), db(d, 0);
  std::vector<double> base = dx;
  layer_norm_backward<double>(r.data(), xhat.data(), rstd.data(), rows, d, g.data(), dx.data(), true, dg.data(),
                              db.data());
  for (size_t i = 0; i < dx.size(); ++i) dx[i] -= base[i];  // accumulate_dx added to what was there
  check_gradient(x, dx, loss, "dx");
  check_gradient(g, dg, loss, "dgamma");
  check_gradient(b, db, loss, "dbeta");
}

TEST(TrainOpsGradient, Activations) {
  for (Activation act : {Activation::QuickGelu, Activation::Gelu, Activation::GeluTanh, Activation::Silu}) {
    auto x = random_vector(50, 9, 4.0), r = random_vector(50, 10);
    std::vector<double> y(50);
    auto loss = [&] {
      activation_forward<double>(act, x.data(), y.data(), y.size());
      return dot(y, r);
    };
    std::vector<double> dx(50);
    activation_backward<double>(act, x.data(), r.data(), dx.data(), dx.size());
    check_gradient(x, dx, loss, activation_name(act));
  }
}

TEST(TrainOpsGradient, FloatActivationsApproximateTheExactFunctions) {
  // Training and inference share activation_forward; in float it runs the vectorising
  // approximations, which must stay within a few float ulps of the exact functions.
  const double pi = std::acos(-1.0);
  auto exact = [&](Activation act, double x) {
    switch (act) {
      case Activation::QuickGelu:
        return x / (1 + std::exp(-1.702 * x));
      case Activation::Gelu:
        return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
      case Activation::GeluTanh:
        return 0.5 * x * (1 + std::tanh(std::sqrt(2 / pi) * (x + 0.044715 * x * x * x)));
      case Activation::Silu:
        return x / (1 + std::exp(-x));
    }
    return 0.0;
  };
  auto x = random_vector(64, 11, 5.0);
  std::vector<float> xf(x.begin(), x.end()), y(64);
  for (Activation act : {Activation::QuickGelu, Activation::Gelu, Activation::GeluTanh, Activation::Silu}) {
    activation_forward<float>(act, xf.data(), y.data(), y.size());
    for (size_t i = 0; i < xf.size(); ++i)
      EXPECT_NEAR(y[i], exact(act, xf[i]), 2e-6 * std::max(1.0, std::abs(x[i]))) << activation_name(act);
  }
}

TEST(TrainOpsGradient, Attention) {
  const int64_t batch = 2, tokens = 5, width = 6, heads = 2;
  const size_t n = batch * tokens * width;
  auto qkv = random_vector(3 * n, 12), r = random_vector(n, 15);
  std::vector<double> probs(batch * heads * tokens * tokens), ctx(n);
  const double scale = 0.7;
  auto loss = [&] {
    attention_forward<double>(qkv.data(), batch, tokens, width, heads, scale, probs.data(), ctx.data());
    return dot(ctx, r);
  };
  loss();
  std::vector<double> dqkv(3 * n);
  attention_backward<double>(qkv.data(), probs.data(), r.data(), batch, tokens, width, heads, scale, dqkv.data());
  check_gradient(qkv, dqkv, loss, "dqkv");

  // The forward against a direct loop: row t of image b, head h attends over the image's tokens.
  loss();  // check_gradient's last call left a perturbed forward behind
  const int64_t hd = width / heads;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t t = 0; t < tokens; ++t) {
        auto at = [&](int64_t token, int64_t part, int64_t i) {
          return qkv[static_cast<size_t>((b * tokens + token) * 3 * width + part * width + h * hd + i)];
        };
        std::vector<double> weights(static_cast<size_t>(tokens));
        double total = 0;
        for (int64_t u = 0; u < tokens; ++u) {
          double s = 0;
          for (int64_t i = 0; i < hd; ++i) s += at(t, 0, i) * at(u, 1, i);
          weights[static_cast<size_t>(u)] = std::exp(scale * s);
          total += weights[static_cast<size_t>(u)];
        }
        for (int64_t i = 0; i < hd; ++i) {
          double expect = 0;
          for (int64_t u = 0; u < tokens; ++u) expect += weights[static_cast<size_t>(u)] / total * at(u, 2, i);
          EXPECT_NEAR(ctx[static_cast<size_t>((b * tokens + t) * width + h * hd + i)], expect, 1e-12);
        }
      }
}

TEST(TrainOpsGradient, L2NormalizeAndCrossEntropy) {
  const int64_t rows = 3, d = 5;
  auto x = random_vector(rows * d, 16), r = random_vector(rows * d, 17);
  std::vector<double> y(rows * d), norms(rows);
  auto loss = [&] {
    l2_normalize_forward<double>(x.data(), rows, d, y.data(), norms.data());
    return dot(y, r);
  };
  loss();
  std::vector<double> dx(rows * d);
  l2_normalize_backward<double>(y.data(), norms.data(), r.data(), rows, d, dx.data());
  check_gradient(x, dx, loss, "l2 normalize");

  auto logits = random_vector(rows * d, 18, 3.0);
  const std::vector<int64_t> labels = {1, 4, 0};
  auto ce = [&] { return softmax_cross_entropy<double>(logits.data(), rows, d, labels, nullptr); };
  std::vector<double> dlogits(rows * d);
  int64_t correct = -1;
  const double value = softmax_cross_entropy<double>(logits.data(), rows, d, labels, dlogits.data(), &correct);
  // Hand-computed mean cross-entropy.
  double expect = 0;
  for (int64_t i = 0; i < rows; ++i) {
    double z = 0;
    for (int64_t c = 0; c < d; ++c) z += std::exp(logits[i * d + c]);
    expect += std::log(z) - logits[i * d + labels[i]];
  }
  EXPECT_NEAR(value, expect / rows, 1e-12);
  EXPECT_GE(correct, 0);
  check_gradient(logits, dlogits, ce, "cross entropy");
}

TEST(TrainOpsGradient, ContrastiveLoss) {
  const int64_t pairs = 3, d = 4, rows = 2 * pairs;
  const double temperature = 0.5;
  auto z = random_vector(rows * d, 19);
  auto loss = [&] { return contrastive_loss<double>(z.data(), pairs, d, temperature, nullptr); };
  std::vector<double> dz(rows * d);
  int64_t correct = -1;
  const double value = contrastive_loss<double>(z.data(), pairs, d, temperature, dz.data(), &correct);
  // The loss written out: per row, -log of its partner's share of exp(similarity / t) over
  // every other row; and the rows whose most similar other row is the partner.
  double expect = 0;
  int64_t expect_correct = 0;
  auto sim = [&](int64_t i, int64_t j) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) s += z[i * d + c] * z[j * d + c];
    return s;
  };
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t partner = i < pairs ? i + pairs : i - pairs;
    double sum = 0;
    int64_t best = -1;
    for (int64_t j = 0; j < rows; ++j) {
      if (j == i) continue;
      sum += std::exp(sim(i, j) / temperature);
      if (best < 0 || sim(i, j) > sim(i, best)) best = j;
    }
    expect += std::log(sum) - sim(i, partner) / temperature;
    expect_correct += best == partner;
  }
  EXPECT_NEAR(value, expect / rows, 1e-12);
  EXPECT_EQ(correct, expect_correct);
  check_gradient(z, dz, loss, "contrastive loss");

  // Views that equal their partner and differ from every other image score every row.
  std::vector<double> aligned(rows * d, 0.0);
  for (int64_t i = 0; i < rows; ++i) aligned[i * d + i % pairs] = 1.0;
  contrastive_loss<double>(aligned.data(), pairs, d, temperature, nullptr, &correct);
  EXPECT_EQ(correct, rows);
}

ClipVisionConfig small_config(Activation act, int64_t channels) {
  ClipVisionConfig c;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.image_size = 6;
  c.patch_size = 3;
  c.num_channels = channels;
  c.projection_dim = 5;
  c.hidden_act = act;
  return c;
}

TEST(TrainGraphGradient, WholeModelEveryParameter) {
  for (bool projection : {false, true}) {
    const ClipVisionConfig c = small_config(projection ? Activation::Gelu : Activation::QuickGelu, projection ? 3 : 1);
    ClipTrainGraph<double> graph(c, projection);
    const auto flat = flatten_clip_weights(c, random_clip_vision_weights(c, 21, projection));
    std::vector<double> params(flat.begin(), flat.end());
    // Larger LayerNorm/bias perturbations than the initialisation, so no term is negligible.
    auto noise = random_vector(params.size(), 22, 0.3);
    for (size_t i = 0; i < params.size(); ++i) params[i] += noise[i];
    const int64_t batch = 2;
    auto pixels = random_vector(static_cast<size_t>(batch * c.num_channels * 36), 23);
    auto r = random_vector(static_cast<size_t>(batch * graph.feature_dim()), 24);
    std::vector<double> features;
    auto loss = [&] {
      graph.forward(params, pixels, batch, features);
      return dot(features, r);
    };
    loss();
    std::vector<double> grads(params.size(), 0);
    graph.backward(params, r, grads);
    check_gradient(params, grads, loss, projection ? "model with projection" : "model", 3000);
  }
}

// Sharding the batch re-associates a sum: features equal image-by-image forwards, and the
// gradient equals the sum of image-by-image gradients (a reference that shares no code with
// the sharding). A partial last shard is included. In float, the bits do not depend on the
// number of threads.
TEST(TrainGraphShards, EqualImageByImageForwardAndSummedGradients) {
  const ClipVisionConfig c = small_config(Activation::QuickGelu, 1);
  const auto flat = flatten_clip_weights(c, random_clip_vision_weights(c, 41, true));
  const std::vector<double> params(flat.begin(), flat.end());
  const int64_t batch = 5, image = 36;
  const auto pixels = random_vector(static_cast<size_t>(batch * image), 42);
  ShardedClipGraph<double> sharded(c, true, 2);
  ClipTrainGraph<double> single(c, true);
  const int64_t dim = single.feature_dim();
  const auto r = random_vector(static_cast<size_t>(batch * dim), 43);

  std::vector<double> features, grads(params.size(), 0.0);
  sharded.forward(params, pixels, batch, features);
  sharded.backward(params, r, grads);

  std::vector<double> expect_grads(params.size(), 0.0), f;
  ASSERT_EQ(features.size(), static_cast<size_t>(batch * dim));
  for (int64_t b = 0; b < batch; ++b) {
    single.forward(params, std::span(pixels).subspan(static_cast<size_t>(b * image), image), 1, f);
    for (int64_t i = 0; i < dim; ++i)
      EXPECT_NEAR(features[static_cast<size_t>(b * dim + i)], f[static_cast<size_t>(i)], 1e-12);
    single.backward(params, std::span(r).subspan(static_cast<size_t>(b * dim), static_cast<size_t>(dim)), expect_grads);
  }
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_NEAR(grads[i], expect_grads[i], 1e-11 * std::max(1.0, std::abs(expect_grads[i]))) << "parameter " << i;

  // float: one thread and all threads give the same bits.
  const std::vector<float> pf(flat.begin(), flat.end()), xf(pixels.begin(), pixels.end()), rf(r.begin(), r.end());
  auto float_grads = [&] {
    ShardedClipGraph<float> g(c, true, 2);
    std::vector<float> out, grad(pf.size(), 0.0f);
    g.forward(pf, xf, batch, out);
    g.backward(pf, rf, grad);
    return grad;
  };
  const std::vector<float> threaded = float_grads();
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const std::vector<float> serial = float_grads();
  omp_set_num_threads(threads);
  EXPECT_EQ(threaded, serial);
}

TEST(TrainGraphForward, FloatGraphMatchesInferenceEngine) {
  ClipVisionConfig c = small_config(Activation::QuickGelu, 3);
  c.hidden_size = 12;
  c.num_attention_heads = 3;
  const ClipVisionWeights weights = random_clip_vision_weights(c, 31, true);
  const ClipVisionModel model(c, weights);
  ClipTrainGraph<float> graph(c, true);
  const auto params = flatten_clip_weights(c, weights);
  const auto px = random_vector(static_cast<size_t>(3 * 3 * 36), 32);
  const std::vector<float> pixels(px.begin(), px.end());
  std::vector<float> features;
  graph.forward(params, pixels, 3, features);
  const Matrix expect = model.features(pixels, 3);
  ASSERT_EQ(features.size(), expect.data.size());
  for (size_t i = 0; i < features.size(); ++i) EXPECT_NEAR(features[i], expect.data[i], 1e-5);
  // And flatten/unflatten is a round trip.
  const ClipVisionWeights back = unflatten_clip_weights(c, params, true);
  EXPECT_EQ(flatten_clip_weights(c, back), params);
}

}  // namespace
}  // namespace amalgam::train

namespace amalgam::train {
namespace {

// A task a tiny model must learn: the class is which quadrant of the image holds a bright
// square, at a random position within that quadrant, over noise.
struct QuadrantTask {
  Tensor images;
  std::vector<int64_t> labels;
};

QuadrantTask quadrant_task(int64_t n, uint64_t seed) {
  QuadrantTask t;
  t.images = Tensor::zeros(DType::U8, {n, 12, 12, 1});
  auto px = t.images.mutable_data<uint8_t>();
  SplitMix64 rng(seed);
  for (int64_t i = 0; i < n; ++i) {
    const auto label = static_cast<int64_t>(rng.below(4));
    t.labels.push_back(label);
    uint8_t* img = px.data() + i * 144;
    for (int64_t p = 0; p < 144; ++p) img[p] = static_cast<uint8_t>(rng.below(60));
    const int64_t y0 = (label / 2) * 6 + static_cast<int64_t>(rng.below(3)),
                  x0 = (label % 2) * 6 + static_cast<int64_t>(rng.below(3));
    for (int64_t y = y0; y < y0 + 3; ++y)
      for (int64_t x = x0; x < x0 + 3; ++x) img[y * 12 + x] = 250;
  }
  return t;
}

ImageProcessorConfig plain_preprocess() {
  ImageProcessorConfig p;
  p.do_resize = false;
  p.do_center_crop = false;
  p.image_mean = {0.5};
  p.image_std = {0.5};
  return p;
}

ClipVisionConfig quadrant_model() {
  ClipVisionConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.image_size = 12;
  c.patch_size = 3;
  c.num_channels = 1;
  return c;
}

double accuracy(const Model& model, const ClassifierHead& head, const QuadrantTask& t) {
  std::vector<int64_t> idx(t.labels.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(i);
  const auto pixels = preprocess_batch(t.images, idx, plain_preprocess(), 1);
  const Matrix logits = head.logits(model.forward(ModelInput::of_images(pixels, static_cast<int64_t>(idx.size()))));
  int64_t correct = 0;
  for (int64_t r = 0; r < logits.rows; ++r) {
    int64_t best = 0;
    for (int64_t c = 1; c < logits.cols; ++c)
      if (logits(r, c) > logits(r, best)) best = c;
    correct += best == t.labels[static_cast<size_t>(r)];
  }
  return static_cast<double>(correct) / static_cast<double>(logits.rows);
}

TrainOptions quadrant_options() {
  TrainOptions o;
  o.epochs = 6;
  o.batch_size = 32;
  o.learning_rate = 3e-3;
  o.max_shift = 0;
  o.quiet = true;
  return o;
}

TEST(Trainer, LearnsASeparableTaskAndIsDeterministic) {
  const ClipVisionConfig c = quadrant_model();
  const QuadrantTask train = quadrant_task(512, 1), test = quadrant_task(256, 2);
  const TrainOptions o = quadrant_options();
  auto run = [&] {
    std::unique_ptr<Model> model = std::make_unique<ClipVisionModel>(c, random_clip_vision_weights(c, 5, false));
    ClassifierHead head = new_head(4, c.hidden_size, 6);
    const auto report = train_encoder(model, head, true, 512,
                                      classification_batches(train.images, train.labels, plain_preprocess(), 1, 0), o);
    return std::make_tuple(dynamic_cast<const ClipVisionModel&>(*model).weights(), head, report);
  };
  const auto [w, head, report] = run();
  ASSERT_EQ(report.epoch_loss.size(), 6u);
  EXPECT_LT(report.epoch_loss.back(), 0.5 * report.epoch_loss.front());
  const ClipVisionModel model(c, w);
  EXPECT_GT(accuracy(model, head, test), 0.9);
  // Chance is 25%: the untrained model with a fresh head is near it.
  EXPECT_LT(accuracy(ClipVisionModel(c, random_clip_vision_weights(c, 5, false)), new_head(4, c.hidden_size, 6), test),
            0.5);
  const auto [w2, head2, report2] = run();
  EXPECT_EQ(flatten_clip_weights(c, w2), flatten_clip_weights(c, w));
  EXPECT_EQ(head2.weight.data, head.weight.data);
}

TEST(Trainer, ProbeOnFrozenFeaturesAndFrozenHeadFineTune) {
  const ClipVisionConfig c = quadrant_model();
  const QuadrantTask train = quadrant_task(512, 3), test = quadrant_task(256, 4);
  const TrainOptions o = quadrant_options();
  // Contrastive pretraining gives the encoder features; a probe reads the task off them; a
  // fine-tune through the frozen probe improves on it and leaves the head untouched.
  std::unique_ptr<Model> projected = std::make_unique<ClipVisionModel>(c, random_clip_vision_weights(c, 7, true));
  ViewAugmentation views;
  views.max_shift = 1;
  const TrainReport pre =
      pretrain_contrastive(projected, 512, contrastive_views(train.images, plain_preprocess(), 1, views), o, 0.2);
  EXPECT_LT(pre.epoch_loss.back(), pre.epoch_loss.front());
  ClipVisionWeights w = dynamic_cast<const ClipVisionModel&>(*projected).weights();
  w.visual_projection.reset();
  TrainOptions probe_opt = o;
  probe_opt.epochs = 30;
  probe_opt.learning_rate = 1e-2;
  const ClassifierHead probe =
      fit_probe(ClipVisionModel(c, w), train.images, train.labels, 4, plain_preprocess(), probe_opt);
  const double probe_acc = accuracy(ClipVisionModel(c, w), probe, test);
  ClassifierHead frozen = probe;
  std::unique_ptr<Model> tuned = std::make_unique<ClipVisionModel>(c, w);
  const auto report = train_encoder(tuned, frozen, false, 512,
                                    classification_batches(train.images, train.labels, plain_preprocess(), 1, 0), o);
  EXPECT_EQ(frozen.weight.data, probe.weight.data);
  EXPECT_EQ(frozen.bias, probe.bias);
  const double tuned_acc = accuracy(*tuned, probe, test);
  EXPECT_GT(tuned_acc, 0.9);
  EXPECT_GE(tuned_acc, probe_acc);
  EXPECT_LT(report.epoch_loss.back(), report.epoch_loss.front());
}

TEST(Trainer, ContrastiveViewsPairEveryImage) {
  // Two images, one bright pixel each: every view keeps its image's pixel near where it was.
  Tensor img = Tensor::zeros(DType::U8, {2, 12, 12, 1});
  img.mutable_data<uint8_t>()[3 * 12 + 3] = 255;
  img.mutable_data<uint8_t>()[144 + 8 * 12 + 8] = 255;
  ImageProcessorConfig p = plain_preprocess();
  ViewAugmentation none;
  none.min_scale = none.max_scale = 1;
  none.max_shift = none.contrast = none.brightness = none.noise = 0;
  none.cutout = 0;
  SplitMix64 rng(4);
  std::vector<float> pixels;
  std::vector<int64_t> labels = {7};
  const std::vector<int64_t> idx = {1, 0};
  contrastive_views(img, p, 1, none)(idx, rng, pixels, labels);
  ASSERT_EQ(pixels.size(), 4u * 144);
  EXPECT_TRUE(labels.empty());
  const auto reference = preprocess_batch(img, std::vector<int64_t>{1, 0, 1, 0}, p, 1);
  for (size_t i = 0; i < pixels.size(); ++i) ASSERT_NEAR(pixels[i], reference[i], 1e-6) << i;

  ViewAugmentation shifted = none;
  shifted.max_shift = 2;
  for (int trial = 0; trial < 10; ++trial) {
    contrastive_views(img, p, 1, shifted)(idx, rng, pixels, labels);
    for (int64_t v = 0; v < 4; ++v) {
      // The bright pixel's centre of mass moves by at most the shift.
      double mass = 0, cy = 0, cx = 0;
      for (int64_t y = 0; y < 12; ++y)
        for (int64_t x = 0; x < 12; ++x) {
          const double w = std::max(0.0f, pixels[static_cast<size_t>(v * 144 + y * 12 + x)] - pixels[v * 144]);
          mass += w;
          cy += w * y;
          cx += w * x;
        }
      ASSERT_GT(mass, 0) << v;
      const double home = v % 2 == 0 ? 8 : 3;
      EXPECT_LE(std::abs(cy / mass - home), 2.0 + 1e-9) << v;
      EXPECT_LE(std::abs(cx / mass - home), 2.0 + 1e-9) << v;
    }
  }
}

}  // namespace
}  // namespace amalgam::train

namespace amalgam::train {
namespace {

TEST(TrainCli, ProbeThenFineTuneThenEval) {
  testing::TempDir tmp;
  const ClipVisionConfig c = quadrant_model();
  save_clip_vision(tmp / "base", c, random_clip_vision_weights(c, 3, false), DType::F32, false,
                   plain_preprocess().to_json());
  TaskInfo info;
  info.name = "quadrant";
  info.classes = {"tl", "tr", "bl", "br"};
  info.image = {12, 12, 1};
  QuadrantTask train = quadrant_task(512, 11), test = quadrant_task(256, 12);
  std::vector<TaskSplit> splits(2);
  splits[0] = {"train", train.images, train.labels};
  splits[1] = {"test", test.images, test.labels};
  write_task(tmp / "task", info, splits, false);

  const std::string base = (tmp / "base").string(), task = (tmp / "task").string(),
                    head = (tmp / "head.safetensors").string(), tuned = (tmp / "tuned").string();
  auto r =
      testing::run_amalgam("train " + base + " --task " + task + " --probe -o " + head + " --epochs 20 --lr 0.01 -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = testing::run_amalgam("train " + base + " --task " + task + " --head " + head + " -o " + tuned +
                           " --epochs 6 --lr 0.003 --max-shift 0 --batch-size 32 -q");
  ASSERT_EQ(r.code, 0) << r.err;
  auto accuracy_of = [&](const std::string& model) {
    const auto e = testing::run_amalgam("eval " + model + " --task " + task + " --head " + head + " --json -q");
    EXPECT_EQ(e.code, 0) << e.err;
    return nlohmann::json::parse(e.out)["results"][0]["accuracy"].get<double>();
  };
  const double before = accuracy_of(base), after = accuracy_of(tuned);
  EXPECT_GT(after, 0.9);
  EXPECT_GT(after, before);
  // The head was frozen: the file is what the probe wrote.
  EXPECT_EQ(ClassifierHead::load(head).classes(), 4);
  // Refuses to overwrite, and a head of the wrong shape is an input error.
  r = testing::run_amalgam("train " + base + " --task " + task + " --head " + head + " -o " + tuned + " -q");
  EXPECT_EQ(r.code, 2);
  ClassifierHead wrong = new_head(3, c.hidden_size, 1);
  wrong.save(tmp / "wrong.safetensors", false);
  r = testing::run_amalgam("train " + base + " --task " + task + " --head " + (tmp / "wrong.safetensors").string() +
                           " -o " + (tmp / "x").string() + " -q");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("wrong.safetensors"), std::string::npos) << r.err;
}

// A prototype head is, for each class, the mean of the L2-normalized features of the class's
// first `per_class` images in split order, normalized and scaled by the logit scale: here
// recomputed image by image in double from the model's features.
TEST(TrainCli, PrototypeHeadIsTheMeanOfEachClassesNormalizedFeatures) {
  testing::TempDir tmp;
  const ClipVisionConfig c = quadrant_model();
  const ClipVisionWeights w = random_clip_vision_weights(c, 9, false);
  save_clip_vision(tmp / "base", c, w, DType::F32, false, plain_preprocess().to_json());
  TaskInfo info;
  info.name = "quadrant";
  info.classes = {"tl", "tr", "bl", "br"};
  info.image = {12, 12, 1};
  const QuadrantTask train = quadrant_task(64, 21);
  std::vector<TaskSplit> splits(1);
  splits[0] = {"train", train.images, train.labels};
  write_task(tmp / "task", info, splits, false);

  const std::filesystem::path head_file = tmp / "proto.safetensors";
  auto r = testing::run_amalgam("train " + (tmp / "base").string() + " --task " + (tmp / "task").string() +
                                " --prototype-head --per-class 3 --logit-scale 50 -o " + head_file.string() + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const ClassifierHead head = ClassifierHead::load(head_file);
  EXPECT_TRUE(head.normalize_features);
  EXPECT_TRUE(head.bias.empty());
  EXPECT_EQ(head.task, "quadrant");
  ASSERT_EQ(head.classes(), 4);

  const ClipVisionModel model(c, w);
  std::vector<std::vector<double>> sums(4, std::vector<double>(static_cast<size_t>(c.hidden_size), 0.0));
  std::vector<int> taken(4, 0);
  for (size_t i = 0; i < train.labels.size(); ++i) {
    const auto label = static_cast<size_t>(train.labels[i]);
    if (taken[label] == 3) continue;
    ++taken[label];
    const std::vector<int64_t> one{static_cast<int64_t>(i)};
    const Matrix f = model.features(preprocess_batch(train.images, one, plain_preprocess(), 1), 1);
    double norm = 0;
    for (float v : f.data) norm += static_cast<double>(v) * v;
    for (int64_t d = 0; d < c.hidden_size; ++d) sums[label][static_cast<size_t>(d)] += f.data[d] / std::sqrt(norm);
  }
  for (size_t k = 0; k < 4; ++k) {
    ASSERT_EQ(taken[k], 3) << k;
    double norm = 0;
    for (double v : sums[k]) norm += v * v;
    for (int64_t d = 0; d < c.hidden_size; ++d)
      EXPECT_NEAR(head.weight(static_cast<int64_t>(k), d), 50.0 * sums[k][static_cast<size_t>(d)] / std::sqrt(norm),
                  2e-4)
          << k << " " << d;
  }

  // One flag of three, and a class without images is named.
  r = testing::run_amalgam("train " + (tmp / "base").string() + " --task " + (tmp / "task").string() +
                           " --prototype-head --probe -o " + (tmp / "x.safetensors").string() + " -q");
  EXPECT_EQ(r.code, 2);
  splits[0].labels.assign(splits[0].labels.size(), 0);
  write_task(tmp / "one-class", info, splits, false);
  r = testing::run_amalgam("train " + (tmp / "base").string() + " --task " + (tmp / "one-class").string() +
                           " --prototype-head -o " + (tmp / "y.safetensors").string() + " -q");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("class 1 has no image"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace amalgam::train
