// Evaluation: heads (file round trip, normalization, errors) and evaluate()/`amalgam eval`
// against a direct computation: every image alone through the model, logits and softmax
// cross-entropy by a naive double loop, accuracy and per-class counts by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "clip_fixtures.h"
#include "core/error.h"
#include "data/preprocess.h"
#include "data/task.h"
#include "eval/evaluate.h"
#include "io/safetensors.h"
#include "model/classifier_head.h"
#include "model/families/clip_vision.h"
#include "test_util.h"

namespace amalgam {
namespace {

using testing::TempDir;

struct Fixture {
  TempDir tmp;
  std::filesystem::path model_dir = tmp / "model", task_dir = tmp / "task", head_path = tmp / "head.safetensors";
  ClipVisionConfig config = testing::tiny_clip_config();
  ClassifierHead head;
  TaskInfo info;

  Fixture() {
    save_clip_vision(model_dir, config, random_clip_vision_weights(config, 3, true), DType::F32, false,
                     testing::identity_preprocess().to_json());
    info.name = "toy";
    info.classes = {"a", "b", "c", "d"};
    info.image = {8, 8, 1};
    TaskSplit test;
    test.name = "test";
    const int64_t n = 37;  // not a multiple of the batch size
    test.images = Tensor::zeros(DType::U8, {n, 8, 8, 1});
    auto px = test.images.mutable_data<uint8_t>();
    SplitMix64 rng(11);
    for (auto& v : px) v = static_cast<uint8_t>(rng.below(256));
    for (int64_t i = 0; i < n; ++i) test.labels.push_back(static_cast<int64_t>(rng.below(4)));
    write_task(task_dir, info, std::span<const TaskSplit>(&test, 1), false);
    head.weight = Matrix(4, 5);
    for (auto& w : head.weight.data) w = static_cast<float>(static_cast<double>(rng.below(2001)) / 1000.0 - 1.0);
    head.bias = {0.1f, -0.2f, 0.05f, 0.0f};
    head.normalize_features = true;
    head.task = "toy";
    head.class_names = info.classes;
    head.save(head_path, false);
  }
};

TEST(ClassifierHeadTest, RoundTripAndLogitsByHand) {
  Fixture f;
  const ClassifierHead h = ClassifierHead::load(f.head_path);
  EXPECT_EQ(h.weight.data, f.head.weight.data);
  EXPECT_EQ(h.bias, f.head.bias);
  EXPECT_TRUE(h.normalize_features);
  EXPECT_EQ(h.task, "toy");
  EXPECT_EQ(h.class_names, f.info.classes);
  Matrix features(1, 5);
  features.data = {3, 0, 4, 0, 0};  // norm 5
  const Matrix logits = h.logits(features);
  for (int64_t c = 0; c < 4; ++c) {
    const double expect = 0.6 * h.weight(c, 0) + 0.8 * h.weight(c, 2) + h.bias[static_cast<size_t>(c)];
    EXPECT_NEAR(logits(0, c), expect, 1e-6);
  }
}

TEST(ClassifierHeadTest, Errors) {
  TempDir tmp;
  const auto path = tmp / "h.safetensors";
  save_safetensors(path, {{"bias", Tensor::from_f32({3}, std::vector<float>{1, 2, 3})}});
  EXPECT_THROW(ClassifierHead::load(path), InputError);
  save_safetensors(path, {{"weight", Tensor::from_f32({2, 2}, std::vector<float>{1, 2, 3, 4})},
                          {"bias", Tensor::from_f32({3}, std::vector<float>{1, 2, 3})}});
  try {
    ClassifierHead::load(path);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'bias'"), std::string::npos) << e.what();
  }
  save_safetensors(path, {{"weight", Tensor::from_f32({2}, std::vector<float>{1, 2})}});
  EXPECT_THROW(ClassifierHead::load(path), InputError);
  save_safetensors(path, {{"weight", Tensor::from_f32({1, 2}, std::vector<float>{1, NAN})}});
  EXPECT_THROW(ClassifierHead::load(path), InputError);
}

// The independent computation: each image alone, logits and loss in double.
struct Expected {
  int64_t correct = 0;
  double loss = 0;
  std::vector<int64_t> class_examples, class_correct;
};

Expected expected_scores(const Fixture& f, const TaskSplit& split) {
  const ClipVisionModel model = ClipVisionModel::load(f.model_dir);
  Expected e;
  e.class_examples.assign(4, 0);
  e.class_correct.assign(4, 0);
  for (int64_t i = 0; i < split.size(); ++i) {
    const auto img = split.image(i);
    std::vector<float> pixels(64);
    for (size_t p = 0; p < 64; ++p) pixels[p] = static_cast<float>((img[p] / 255.0 - 0.5) / 0.25);
    const Matrix feat = model.features(pixels, 1);
    double norm = 0;
    for (float v : feat.data) norm += static_cast<double>(v) * v;
    norm = std::sqrt(norm);
    std::vector<double> logits(4);
    for (int64_t c = 0; c < 4; ++c) {
      logits[static_cast<size_t>(c)] = f.head.bias[static_cast<size_t>(c)];
      for (int64_t d = 0; d < 5; ++d) logits[static_cast<size_t>(c)] += f.head.weight(c, d) * feat.data[d] / norm;
    }
    int64_t best = 0;
    for (int64_t c = 1; c < 4; ++c)
      if (logits[static_cast<size_t>(c)] > logits[static_cast<size_t>(best)]) best = c;
    double z = 0;
    for (double l : logits) z += std::exp(l);
    const int64_t y = split.labels[static_cast<size_t>(i)];
    e.loss += std::log(z) - logits[static_cast<size_t>(y)];
    ++e.class_examples[static_cast<size_t>(y)];
    if (best == y) {
      ++e.correct;
      ++e.class_correct[static_cast<size_t>(y)];
    }
  }
  e.loss /= static_cast<double>(split.size());
  return e;
}

TEST(EvaluateTest, MatchesImageByImageComputation) {
  Fixture f;
  const TaskInfo info = read_task_info(f.task_dir);
  const TaskSplit split = load_split(f.task_dir, info, "test");
  const Expected e = expected_scores(f, split);
  EvalOptions opt;
  opt.batch_size = 8;
  opt.quiet = true;
  const EvalResult r = evaluate(ClipVisionModel::load(f.model_dir), load_image_processor_config(f.model_dir), info,
                                split, ClassifierHead::load(f.head_path), opt);
  EXPECT_EQ(r.examples, 37);
  EXPECT_EQ(r.correct, e.correct);
  EXPECT_DOUBLE_EQ(r.accuracy, static_cast<double>(e.correct) / 37.0);
  EXPECT_NEAR(r.loss, e.loss, 1e-5);
  EXPECT_EQ(r.class_examples, e.class_examples);
  for (size_t c = 0; c < 4; ++c)
    EXPECT_DOUBLE_EQ(
        r.class_accuracy[c],
        e.class_examples[c] ? static_cast<double>(e.class_correct[c]) / static_cast<double>(e.class_examples[c]) : 0.0);
  // A random head on random images: the test would pass vacuously at 0% or 100%.
  EXPECT_GT(e.correct, 0);
  EXPECT_LT(e.correct, 37);
}

TEST(EvaluateTest, IncompatiblePartsAreInputErrors) {
  Fixture f;
  const TaskInfo info = read_task_info(f.task_dir);
  const TaskSplit split = load_split(f.task_dir, info, "test");
  const ClipVisionModel model = ClipVisionModel::load(f.model_dir);
  ClassifierHead wrong_classes = f.head;
  wrong_classes.weight = Matrix(3, 5);
  EXPECT_THROW(evaluate(model, testing::identity_preprocess(), info, split, wrong_classes, {}), InputError);
  ClassifierHead wrong_dim = f.head;
  wrong_dim.weight = Matrix(4, 12);
  EXPECT_THROW(evaluate(model, testing::identity_preprocess(), info, split, wrong_dim, {}), InputError);
  ImageProcessorConfig clip_defaults;  // 224x224 crops for an 8x8 model, 3-channel mean
  EXPECT_THROW(evaluate(model, clip_defaults, info, split, f.head, {}), InputError);
}

TEST(EvalCli, JsonReportsTheSameAccuracy) {
  Fixture f;
  const TaskInfo info = read_task_info(f.task_dir);
  const Expected e = expected_scores(f, load_split(f.task_dir, info, "test"));
  const std::string args = "eval " + f.model_dir.string() + " --task " + f.task_dir.string() + " --head " +
                           f.head_path.string() + " --batch-size 5 --json --quiet";
  const auto r = testing::run_amalgam(args);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["results"].size(), 1u);
  EXPECT_EQ(j["results"][0]["correct"].get<int64_t>(), e.correct);
  EXPECT_EQ(j["results"][0]["examples"].get<int64_t>(), 37);

  const auto bad = testing::run_amalgam("eval " + f.model_dir.string() + " --task " + f.task_dir.string() + " --head " +
                                        f.head_path.string() + " --split val --quiet");
  EXPECT_EQ(bad.code, 2) << bad.err;
  const auto missing = testing::run_amalgam("eval " + f.model_dir.string() + " --task " + f.task_dir.string() +
                                            " --head " + (f.tmp / "nope.safetensors").string());
  EXPECT_EQ(missing.code, 2);
  EXPECT_NE(missing.err.find("nope.safetensors"), std::string::npos) << missing.err;
}

}  // namespace
}  // namespace amalgam
