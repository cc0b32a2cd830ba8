// RegMean's two costs on a ViT-B/32-shaped model, against the machine's own BLAS peaks.
//
//   regmean [--examples 64] [--tasks 8] [--runs 3]           # in-process timings, one JSON object
//   regmean --write DIR [--tasks 8] [--examples 256]         # checkpoints + tasks for bench/regmean.sh
//
// Statistics: the forward of --examples images with and without the Gram collector (median
// of --runs); the difference is the Gram accumulation, whose SYRK flops give its GFLOP/s,
// set against the best SGEMM of the same shape. Merge: the closed form of every linear
// layer for --tasks candidates (right-hand side GEMMs and the Cholesky solve), timed per
// layer kind, with the solve alone timed apart.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "calibration/gram.h"
#include "calibration/images.h"
#include "calibration/statistics_file.h"
#include "core/random.h"
#include "data/preprocess.h"
#include "data/task.h"
#include "linalg/linalg.h"
#include "merge/regmean.h"
#include "model/families/clip_vision.h"

using namespace amalgam;
using namespace amalgam::bench;

namespace {

template <typename Fn>
double median_seconds(int runs, Fn&& fn) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = Clock::now();
    fn();
    t.push_back(seconds_since(t0));
  }
  return median(t);
}

std::vector<float> random_pixels(int64_t images, const ClipVisionConfig& c, uint64_t seed) {
  std::vector<float> p(static_cast<size_t>(images * c.num_channels * c.image_size * c.image_size));
  SplitMix64 rng(seed);
  for (auto& v : p) v = static_cast<float>(rng.below(2001)) / 1000.0f - 1.0f;
  return p;
}

// A candidate: the base plus a seeded perturbation of 1% of each weight's scale.
ClipVisionWeights fine_tune_of(const ClipVisionConfig& c, const ClipVisionWeights& base, uint64_t seed) {
  ClipVisionWeights w = base;
  const ClipVisionWeights noise = random_clip_vision_weights(c, seed, base.visual_projection.has_value());
  auto tw = clip_parameters(c, w, base.visual_projection.has_value());
  auto tn = clip_parameters(c, const_cast<ClipVisionWeights&>(noise), base.visual_projection.has_value());
  for (size_t i = 0; i < tw.size(); ++i)
    for (int64_t k = 0; k < shape_numel(tw[i].shape); ++k) tw[i].data[k] += 0.1f * tn[i].data[k];
  return w;
}

void write_inputs(const std::filesystem::path& dir, int tasks, int64_t examples) {
  const ClipVisionConfig c;  // ViT-B/32
  const ClipVisionWeights base = random_clip_vision_weights(c, 1, false);
  for (int t = 0; t < tasks; ++t) {
    const auto name = "task" + std::to_string(t);
    save_clip_vision(dir / "models" / name, c, fine_tune_of(c, base, 100 + t), DType::BF16, true);
    TaskInfo info;
    info.name = name;
    info.classes = {"a", "b"};
    info.image = {c.image_size, c.image_size, 3};
    TaskSplit train;
    train.name = "train";
    train.images = Tensor::zeros(DType::U8, {examples, c.image_size, c.image_size, 3});
    SplitMix64 rng(200 + t);
    for (auto& v : train.images.mutable_data<uint8_t>()) v = static_cast<uint8_t>(rng.below(256));
    for (int64_t i = 0; i < examples; ++i) train.labels.push_back(i % 2);
    std::filesystem::remove_all(dir / "tasks" / name);
    write_task(dir / "tasks" / name, info, std::span<const TaskSplit>(&train, 1), false);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int64_t examples = 64;
  int tasks = 8, runs = 3;
  std::string write_dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--examples") examples = std::stoll(argv[i + 1]);
    if (key == "--tasks") tasks = std::stoi(argv[i + 1]);
    if (key == "--runs") runs = std::stoi(argv[i + 1]);
    if (key == "--write") write_dir = argv[i + 1];
  }
  if (!write_dir.empty()) {
    write_inputs(write_dir, tasks, examples);
    return 0;
  }

  const ClipVisionConfig c;  // ViT-B/32
  const ClipVisionModel model(c, random_clip_vision_weights(c, 1, false));
  const std::vector<float> pixels = random_pixels(examples, c, 7);
  const int64_t batch = 32, image_floats = c.num_channels * c.image_size * c.image_size;
  // The collector (1 GB of double accumulators for a ViT-B/32) is built outside the timing,
  // and reset between runs by building a new one, as `amalgam stats` does once.
  auto run = [&](const SiteTap& tap) {
    for (int64_t b = 0; b < examples; b += batch) {
      const int64_t n = std::min(batch, examples - b);
      model.features({pixels.data() + b * image_floats, static_cast<size_t>(n * image_floats)}, n, tap);
    }
  };
  std::vector<double> forward_runs, stats_runs;
  for (int r = 0; r < runs + 1; ++r) {  // the first of each is a warm-up
    auto t0 = Clock::now();
    run({});
    if (r > 0) forward_runs.push_back(seconds_since(t0));
    GramCollector collector(model.all_linear_sites());
    const SiteTap tap = collector.tap();
    t0 = Clock::now();
    run(tap);
    if (r > 0) stats_runs.push_back(seconds_since(t0));
  }
  const double forward = median(forward_runs), with_stats = median(stats_runs);
  const double d = static_cast<double>(c.hidden_size), f = static_cast<double>(c.intermediate_size);
  const double rows = static_cast<double>(examples * c.tokens());
  // SYRK: n * k * (k + 1) flops for k x k from n rows; per block q/k/v (one Gram), out_proj, fc1: k = d; fc2: k = f.
  const double syrk_flops = static_cast<double>(c.num_hidden_layers) * rows * (3 * d * (d + 1) + f * (f + 1));
  const double gram_seconds = with_stats - forward;
  const double peak = sgemm_peak_gflops(batch * c.tokens(), c.intermediate_size, c.hidden_size);

  // The closed form of one block's linears for `tasks` candidates (Grams from the statistics
  // of one batch: realistic conditioning).
  GramCollector collector(model.all_linear_sites());
  model.features({pixels.data(), static_cast<size_t>(batch * image_floats)}, batch, collector.tap());
  const auto grams = collector.means();
  auto gram_of = [&](const std::string& name) {
    for (const auto& [n, g] : grams)
      if (n == name) return std::vector<float>(g.data<float>().begin(), g.data<float>().end());
    throw std::runtime_error("no gram " + name);
  };
  const ClipBlockWeights& block = model.weights().layers[0];
  struct Kind {
    const char* name;
    const LinearParams* weight;
    SiteRole site;
    int count;  // linears of this kind per block
  };
  const Kind kinds[] = {{"q/k/v", &block.q_proj, SiteRole::AttentionInput, 3},
                        {"out_proj", &block.out_proj, SiteRole::AttentionOutput, 1},
                        {"fc1", &block.fc1, SiteRole::MlpInput, 1},
                        {"fc2", &block.fc2, SiteRole::MlpOutput, 1}};
  nlohmann::ordered_json solve_json = nlohmann::ordered_json::object();
  double merge_total = 0, solve_total = 0, audited_total = 0;
  for (const Kind& k : kinds) {
    const std::vector<float> gram = gram_of(clip_gram_name(0, k.site));
    const std::vector<float> w(k.weight->weight.data.begin(), k.weight->weight.data.end());
    std::vector<RegMeanCandidate> cands(static_cast<size_t>(tasks), RegMeanCandidate{w, gram, 1.0});
    const int64_t out = k.weight->weight.rows, in = k.weight->weight.cols;
    const double closed_form =
        median_seconds(runs, [&] { (void)regmean_linear(cands, out, in, 0.95, std::string(k.name)); });
    // With the merge audit's residuals (one more GEMM per candidate).
    const double audited =
        median_seconds(runs, [&] { (void)regmean_linear(cands, out, in, 0.95, std::string(k.name), true); });
    // The system the closed form solves: sum_t G~_t (alpha = 0.95), positive definite.
    std::vector<double> system(gram.size());
    for (int64_t i = 0; i < in; ++i)
      for (int64_t j = 0; j < in; ++j)
        system[static_cast<size_t>(i * in + j)] =
            static_cast<double>(tasks) * gram[static_cast<size_t>(i * in + j)] * (i == j ? 1.0 : 0.95);
    const double solve = median_seconds(runs, [&] {
      std::vector<double> rhs(static_cast<size_t>(in * out), 1.0);
      (void)solve_symmetric(system, in, rhs, out);
    });
    const double layers = static_cast<double>(c.num_hidden_layers * k.count);
    merge_total += closed_form * layers;
    solve_total += solve * layers;
    audited_total += audited * layers;
    solve_json[k.name] = {
        {"closed_form_seconds", closed_form}, {"solve_seconds", solve}, {"closed_form_audited_seconds", audited}};
  }

  nlohmann::ordered_json out = {
      {"model", "ViT-B/32 shape, random weights"},
      {"examples", examples},
      {"runs", runs},
      {"forward_seconds", forward},
      {"stats_seconds", with_stats},
      {"gram_accumulation_seconds", gram_seconds},
      {"gram_share_of_stats", gram_seconds / with_stats},
      {"gram_gflops", syrk_flops / gram_seconds / 1e9},
      {"sgemm_peak_gflops", peak},
      {"gram_fraction_of_sgemm_peak", syrk_flops / gram_seconds / 1e9 / peak},
      {"stats_seconds_per_256_examples", with_stats * 256.0 / static_cast<double>(examples)},
      {"tasks", tasks},
      {"closed_form_per_layer_kind", solve_json},
      {"merge_linears_seconds", merge_total},
      {"solve_share_of_merge", solve_total / merge_total},
      {"merge_linears_audited_seconds", audited_total},
      {"audit_overhead_of_linears", audited_total / merge_total - 1},
  };
  std::cout << out.dump(2) << std::endl;
  return 0;
}
