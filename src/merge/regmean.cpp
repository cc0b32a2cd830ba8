// regmean (Jin et al., ICLR 2023): every linear weight is the closed-form solution of
//   min_W sum_t || X_t W^T - X_t W_t^T ||^2,
// from each candidate's Gram of that layer's input (its statistics: `stats: FILE`, or
// measured on `data: TASK_DIR` before the merge); every other parameter is the weighted
// mean. The output carries the candidates' weighted mean statistics (stats.safetensors),
// so a later merge can add tasks to this one exactly (sequential merging: give the merged
// model a weight equal to the weight it holds, e.g. 2 for two tasks).
#include <filesystem>
#include <memory>

#include "calibration/measure.h"
#include "calibration/statistics_file.h"
#include "core/error.h"
#include "data/preprocess.h"
#include "merge/config.h"
#include "merge/plan.h"
#include "merge/regmean.h"
#include "model/model.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;

class RegMean final : public MergeMethod {
 public:
  static constexpr const char* kName = "regmean";

  const MethodSpec& spec() const override {
    static const MethodSpec s{kName,
                              "RegMean: each linear layer solves the least-squares fit to every model's outputs on its "
                              "own inputs (needs per-model stats or data)",
                              regmean_params(),
                              /*needs_base=*/false,
                              1,
                              std::numeric_limits<size_t>::max(),
                              /*data_aware=*/true};
    return s;
  }

  void prepare(const MergeContext& ctx) override {
    check_embeddings_source(ctx);
    for (size_t i = 0; i < ctx.candidates.size(); ++i) stats_.push_back(open_or_measure(ctx, i));
  }

  Tensor merge(const TensorJob& job) const override {
    std::vector<std::optional<Tensor>> grams;
    size_t found = 0;
    for (const auto& s : stats_) {
      grams.push_back(s->gram_for_weight(job.name()));
      found += grams.back().has_value();
    }
    if (found == 0 && job.param("embeddings") == 1 && embedding_or_head(job.name())) return job.base_f32();
    if (found == 0) return weighted_mean(job);
    for (size_t t = 0; t < grams.size(); ++t)
      if (!grams[t])
        throw InputError(stats_[t]->path(), job.name(),
                         "no Gram for this weight, while other models' statistics have one");
    if (job.shape().size() != 2) throw InputError(stats_[0]->path(), job.name(), "has a Gram but is not a matrix");
    // A weight stored [in, out] (GPT-2's Conv1D) is solved as its transpose [out, in] and
    // written back as stored; every model's statistics must say so alike.
    const bool transposed = stats_[0]->transposed().contains(job.name());
    for (const auto& st : stats_)
      if (st->transposed().contains(job.name()) != transposed)
        throw InputError(st->path(), job.name(), "is stored [in, out] in one model's statistics and not in another's");
    const int64_t out = job.shape()[transposed ? 1 : 0], in = job.shape()[transposed ? 0 : 1];
    std::vector<std::vector<float>> weights, gram_values;
    std::vector<RegMeanCandidate> candidates;
    for (size_t t = 0; t < grams.size(); ++t) {
      if (grams[t]->shape() != Shape{in, in})
        throw InputError(stats_[t]->path(), job.name(),
                         "Gram " + shape_to_string(grams[t]->shape()) + " does not fit a weight of shape " +
                             shape_to_string(job.shape()));
      const Tensor w = job.model_f32(t);
      weights.push_back(transposed ? transpose_matrix(w.data<float>(), in, out)
                                   : std::vector<float>(w.data<float>().begin(), w.data<float>().end()));
      gram_values.emplace_back(static_cast<size_t>(in * in));
      grams[t]->read_bytes(0, std::as_writable_bytes(std::span(gram_values.back())));
    }
    for (size_t t = 0; t < grams.size(); ++t)
      candidates.push_back({weights[t], gram_values[t], job.param("weight", t)});
    const RegMeanLinear merged = regmean_linear(candidates, out, in, job.param("alpha"), job.name(), job.audit());
    if (job.audit()) record_regmean_audit(*job.audit(), merged);
    return Tensor::from_f32(job.shape(), transposed ? transpose_matrix(merged.weight, out, in) : merged.weight);
  }

  void finish(const MergeContext& ctx) override {
    std::vector<const StatisticsFile*> views;
    for (const auto& s : stats_) views.push_back(s.get());
    // A Gram's weight in the combination is the model's weight for the first tensor reading it.
    std::map<std::string, std::string> first_weight;
    for (const auto& [w, g] : views.front()->weight_grams()) first_weight.emplace(g, w);
    write_combined_statistics(ctx.staging / "stats.safetensors", views, [&](size_t t, const std::string& gram) {
      return ctx.param("weight", t, first_weight.at(gram));
    });
    stats_.clear();  // unmaps the measured files before they are removed
    std::error_code ec;
    fs::remove_all(ctx.staging / ".calibration", ec);
  }

 private:
  static std::unique_ptr<StatisticsFile> open_or_measure(const MergeContext& ctx, size_t i) {
    const ModelEntry& entry = *ctx.entries[i];
    if (entry.stats) return std::make_unique<StatisticsFile>(*entry.stats);
    if (entry.data.empty())
      throw InputError(ctx.config.source, "models: '" + entry.model + "': " + std::string(kName) +
                                              " needs `stats: FILE` (from amalgam stats) or `data:` (task directories "
                                              "for a vision model, JSONL texts for a language model)");
    // `data:` is what the model reads: task directories for a vision model, JSONL text files
    // for a language model (tokenized by the candidate's own tokenizer).
    const std::unique_ptr<Model> model = open_model(ctx.candidates[i]);
    const auto [images, texts] = regmean_calibration_options(ctx);
    const auto calibration = load_calibration(*model, ctx.candidates[i], entry.data, images, texts);
    const fs::path file = ctx.staging / ".calibration" / ("model-" + std::to_string(i) + ".safetensors");
    fs::create_directories(file.parent_path());
    write_statistics(*model, calibration->batches, entry.model, file, ctx.quiet, ctx.max_memory);
    return std::make_unique<StatisticsFile>(file);
  }

  std::vector<std::unique_ptr<StatisticsFile>> stats_;
};

AMALGAM_REGISTER_METHOD(RegMean);

}  // namespace
}  // namespace amalgam
