// regmean_plusplus (RegMean++, Nguyen et al., 2025): RegMean's closed form, with each
// block's Grams measured on the merged model's own stream (methods.md, "RegMean++"), for any
// model family (model/model.h):
//
//   tensors outside the blocks (embeddings, norms, heads): the weighted mean
//   H_t = the merged model's embedding of task t's calibration examples
//   for each block l: run candidate t's block l on H_t, measuring the Grams of its linear
//     sites; merge block l (linear weights by the closed form, the rest by the mean);
//     H_t <- merged block l applied to H_t
//   sites after the blocks (CLIP's visual_projection): the closed form on each candidate's
//     own head input on the merged stream (its own post_layernorm of the CLS token)
//
// The final norm is the weighted mean (the reference code leaves CLIP's post_layernorm at
// the base's value, an accident amalgam does not copy). The merged model lives in a scratch
// checkpoint in the output's staging directory: the averaged tensors outside the blocks, so
// that its embedding is the merged one, and each merged block, written as it is solved and
// read back as the family reads any block. The results merge() hands out are views of those
// files (unlinked at the end of prepare(), mapped until the engine has written them), so
// memory holds one block's results, never the model's. The whole merge happens in prepare(), holding the
// candidates' current block, its Grams and every task's hidden states (in memory, or in a
// scratch file past half of --max-memory); merge() hands out the result. The Grams it
// measured are written to stats.safetensors (their weighted mean) for audit.
#include <filesystem>
#include <memory>
#include <set>

#include "calibration/gram.h"
#include "calibration/hidden_states.h"
#include "calibration/images.h"
#include "calibration/measure.h"
#include "calibration/statistics_file.h"
#include "calibration/texts.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/progress.h"
#include "data/preprocess.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "merge/audit.h"
#include "merge/config.h"
#include "merge/plan.h"
#include "merge/regmean.h"
#include "model/model.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;

// sum_t a_t x_t / sum_t a_t, elementwise.
void weighted_average(const std::vector<std::span<const float>>& inputs, const std::vector<double>& factors,
                      std::span<float> out) {
  double total = 0;
  for (double a : factors) total += a;
  if (!(total > 0)) throw InputError("regmean_plusplus: the models' weights must sum to a positive number");
  for (size_t i = 0; i < out.size(); ++i) {
    double v = 0;
    for (size_t t = 0; t < inputs.size(); ++t) v += factors[t] * inputs[t][i];
    out[i] = static_cast<float>(v / total);
  }
}

class RegMeanPlusPlus final : public MergeMethod {
 public:
  static constexpr const char* kName = "regmean_plusplus";

  const MethodSpec& spec() const override {
    static const MethodSpec s{kName,
                              "RegMean++: RegMean with each block's statistics measured on the merged model's own "
                              "stream (needs per-model data)",
                              regmean_params(),
                              /*needs_base=*/false,
                              1,
                              std::numeric_limits<size_t>::max(),
                              /*data_aware=*/true};
    return s;
  }

  void prepare(const MergeContext& ctx) override {
    check_embeddings_source(ctx);
    open_candidates(ctx);
    write_merged_prefix(ctx);
    auto tasks = embed_calibration(ctx);
    StatisticsOutput stats(ctx, *merged_, tasks);
    Progress progress("regmean++", static_cast<uint64_t>(merged_->num_layers()), 0, ctx.quiet, "layers");
    for (int64_t l = 0; l < merged_->num_layers(); ++l) {
      check_interrupt();
      merge_block(ctx, l, tasks, stats);
      progress.advance(1, 0);
    }
    if (!merged_->linear_sites(-1).empty()) merge_head(ctx, tasks, stats);
    stats.finish();
    merged_.reset();
    readers_.clear();
    own_stats_.clear();
    std::error_code ec;
    fs::remove_all(scratch_, ec);
  }

  Tensor merge(const TensorJob& job) const override {
    const auto it = results_.find(job.name());
    if (it == results_.end()) return weighted_mean(job);  // what the model does not read (a CLIP text tower)
    if (const auto audit = audits_.find(job.name()); audit != audits_.end() && job.audit())
      for (const auto& [key, value] : audit->second.items()) job.audit()->set(key, value);
    return it->second;
  }

 private:
  // Every task's hidden states after the merged prefix, with its calibration metadata.
  struct TaskState {
    HiddenStates hidden;
    int64_t examples = 0;
    std::vector<std::string> tasks;
  };

  // The Grams measured block by block, combined over tasks (weighted as the merge weighs
  // them) and written as the merge goes, so nothing is kept.
  class StatisticsOutput {
   public:
    StatisticsOutput(const MergeContext& ctx, const Model& model, const std::vector<TaskState>& tasks) {
      GramStatistics header;
      header.model = "regmean_plusplus (Grams on the merged stream)";
      for (const auto& s : tasks) {
        header.rows += s.hidden.rows();
        header.examples += s.examples;
        header.tasks.insert(header.tasks.end(), s.tasks.begin(), s.tasks.end());
      }
      const std::vector<TensorSpec> plan = statistics_plan(model, header);  // fills the header's weight map
      writer_ = std::make_unique<SafetensorsWriter>(ctx.staging / "stats.safetensors", plan,
                                                    statistics_metadata(header), WriteOrder::Plan);
    }
    void write(const std::string& gram, const std::vector<const Tensor*>& per_task,
               const std::vector<double>& factors) {
      std::vector<std::span<const float>> inputs;
      for (const Tensor* g : per_task) inputs.push_back(g->data<float>());
      Tensor out = Tensor::uninitialized(DType::F32, per_task.front()->shape());
      weighted_average(inputs, factors, out.mutable_data<float>());
      writer_->write(gram, out);
    }
    void finish() { writer_->finish(); }

   private:
    std::unique_ptr<SafetensorsWriter> writer_;
  };

  void open_candidates(const MergeContext& ctx) {
    for (size_t t = 0; t < ctx.candidates.size(); ++t) {
      if (ctx.entries[t]->data.empty())
        throw InputError(ctx.config.source, "models: '" + ctx.entries[t]->model + "': " + std::string(kName) +
                                                " needs `data:` (it measures its statistics on the merged model, so "
                                                "precomputed `stats` cannot stand in)");
      readers_.push_back(std::make_unique<CheckpointReader>(ctx.candidates[t]));
      if (ctx.audit && ctx.entries[t]->stats) {
        own_stats_.resize(ctx.candidates.size());
        own_stats_[t] = std::make_unique<StatisticsFile>(*ctx.entries[t]->stats);
      }
    }
  }

  std::vector<double> factors_for(const MergeContext& ctx, const std::string& tensor) const {
    std::vector<double> f;
    for (size_t t = 0; t < readers_.size(); ++t) f.push_back(ctx.param("weight", t, tensor));
    return f;
  }

  // The candidates' weighted mean of one tensor, in F32, converted a chunk at a time from
  // the mapped inputs: a decoder's embeddings are the largest tensors of the model (a
  // Llama-3.2-1B's are 1 GB in F32), and n F32 copies of them were the merge's peak.
  Tensor average_tensor(const MergeContext& ctx, const std::string& name) const {
    std::vector<Tensor> mapped;
    for (const auto& r : readers_) {
      mapped.push_back(r->tensor(name));
      if (mapped.back().shape() != mapped.front().shape())
        throw InputError(r->path(), name, "has another shape than in " + readers_.front()->path().string());
    }
    Tensor out = Tensor::uninitialized(DType::F32, mapped.front().shape());
    const std::span<float> values = out.mutable_data<float>();
    const std::vector<double> factors = factors_for(ctx, name);
    constexpr size_t kChunk = size_t{1} << 20;
    std::vector<std::vector<float>> chunks(mapped.size(), std::vector<float>(std::min(kChunk, values.size())));
    std::vector<std::byte> raw(std::min(kChunk, values.size()) * sizeof(double));
    for (size_t begin = 0; begin < values.size(); begin += kChunk) {
      const size_t n = std::min(kChunk, values.size() - begin);
      std::vector<std::span<const float>> inputs;
      for (size_t t = 0; t < mapped.size(); ++t) {
        const size_t width = dtype_size(mapped[t].dtype());
        mapped[t].read_bytes(begin * width, std::span(raw).first(n * width));
        convert_to_f32(mapped[t].dtype(), raw.data(), chunks[t].data(), n);
        inputs.emplace_back(chunks[t].data(), n);
      }
      weighted_average(inputs, factors, values.subspan(begin, n));
    }
    return out;
  }

  // The merged model's checkpoint before any block is merged: every floating tensor outside
  // the blocks averaged (its results too), the blocks as the first candidate has them (they
  // are only there to be a complete checkpoint; each is replaced before it is run).
  void write_merged_prefix(const MergeContext& ctx) {
    const CheckpointReader& first = *readers_.front();
    const std::unique_ptr<Model> shape = open_model(first.dir());
    std::set<std::string> in_blocks;
    for (int64_t l = 0; l < shape->num_layers(); ++l)
      for (auto& n : shape->block_tensor_names(l)) in_blocks.insert(std::move(n));
    scratch_ = ctx.staging / ".regmean_plusplus";
    fs::create_directories(scratch_);
    std::vector<TensorSpec> plan;
    for (const auto& name : first.names()) {
      const TensorInfo& info = first.info(name);
      const bool averaged = !in_blocks.contains(name) && is_floating(info.dtype);
      plan.push_back({name, averaged ? DType::F32 : info.dtype, info.shape});
    }
    SafetensorsWriter writer(scratch_ / "model.safetensors", plan, {{"format", "pt"}}, WriteOrder::Plan);
    for (const auto& spec : plan) {
      if (in_blocks.contains(spec.name) || !is_floating(first.info(spec.name).dtype)) {
        writer.write(spec.name, first.tensor(spec.name));
        continue;
      }
      if (ctx.param("embeddings", std::nullopt, spec.name) == 1 && embedding_or_head(spec.name))
        writer.write(spec.name, CheckpointReader(*ctx.base).tensor(spec.name).to(DType::F32));
      else
        writer.write(spec.name, average_tensor(ctx, spec.name));
    }
    writer.finish();
    // The results are the file's tensors (mapped views, which keep the file mapped however
    // long the engine needs them), not copies in memory.
    const CheckpointReader written(scratch_ / "model.safetensors");
    for (const auto& spec : plan)
      if (spec.dtype == DType::F32 && !in_blocks.contains(spec.name) && is_floating(first.info(spec.name).dtype))
        results_.insert_or_assign(spec.name, written.tensor(spec.name));
    for (const auto& f : first.auxiliary_files())
      if (f.filename() == "config.json") fs::copy_file(f, scratch_ / "config.json");
    merged_ = open_model(scratch_);
  }

  // Each task's calibration examples (images or texts, as the model reads), embedded by the
  // merged model.
  std::vector<TaskState> embed_calibration(const MergeContext& ctx) {
    const auto [image_options, text_options] = regmean_calibration_options(ctx);
    std::vector<std::unique_ptr<Calibration>> data;
    std::vector<Stream> firsts;  // each task's first batch, embedded once
    uint64_t hidden_bytes = 0;
    for (size_t t = 0; t < readers_.size(); ++t) {
      data.push_back(load_calibration(*merged_, readers_[t]->dir(), ctx.entries[t]->data, image_options, text_options));
      // The first batch's rows per example give the whole task's, for images and texts alike
      // (texts: an estimate).
      const CalibrationBatches& batches = data.back()->batches;
      firsts.push_back(merged_->embed(batches.batches.front()));
      hidden_bytes +=
          static_cast<uint64_t>(static_cast<double>(firsts.back().data.size()) * 4.0 *
                                static_cast<double>(batches.examples) / static_cast<double>(firsts.back().sequences()));
    }
    const std::optional<fs::path> spill = spill_dir_for(hidden_bytes, ctx.max_memory, ctx.staging);
    if (spill) {
      if (!ctx.quiet)
        warn("regmean_plusplus: the hidden states (" + std::to_string(hidden_bytes >> 20) +
             " MiB) exceed half of --max-memory; they stay in a scratch file beside the output");
    }
    std::vector<TaskState> tasks;
    for (size_t t = 0; t < data.size(); ++t) {
      const CalibrationBatches& batches = data[t]->batches;
      TaskState s{HiddenStates(spill), batches.examples, batches.tasks};
      s.hidden.append(firsts[t]);
      for (size_t b = 1; b < batches.batches.size(); ++b) s.hidden.append(merged_->embed(batches.batches[b]));
      tasks.push_back(std::move(s));
    }
    return tasks;
  }

  // The Grams of one block (its sites, in table order) of candidate t on task t's stream.
  std::vector<Tensor> measure_block(const BlockWeights& block, int64_t l, TaskState& task) const {
    GramCollector grams(merged_->linear_sites(l));
    task.hidden.for_each(/*write_back=*/false,
                         [&](Stream& batch) { merged_->run_block(l, block, batch, grams.tap()); });
    std::vector<Tensor> means;
    for (auto& [name, gram] : grams.means()) means.push_back(std::move(gram));
    return means;
  }

  // A linear weight of candidate t as [out, in] F32 (a weight stored [in, out] transposed).
  std::vector<float> candidate_weight(size_t t, const std::string& name, bool stored_transposed) const {
    const Tensor w = readers_[t]->tensor(name).to(DType::F32);
    if (!stored_transposed) return {w.data<float>().begin(), w.data<float>().end()};
    return transpose_matrix(w.data<float>(), w.shape()[0], w.shape()[1]);
  }

  // Solves every weight of `sites` from per-task Grams (grams[t][site index]) into results_.
  void solve_sites(const MergeContext& ctx, const std::vector<LinearSiteSpec>& sites,
                   const std::vector<std::vector<Tensor>>& grams) {
    for (size_t s = 0; s < sites.size(); ++s)
      for (const std::string& name : sites[s].weights) {
        const Shape shape = readers_.front()->info(name).shape;
        const bool tr = sites[s].stored_transposed;
        const int64_t out = shape[tr ? 1 : 0], in = shape[tr ? 0 : 1];
        const std::vector<double> factors = factors_for(ctx, name);
        std::vector<std::vector<float>> weights;
        std::vector<RegMeanCandidate> candidates;
        for (size_t t = 0; t < readers_.size(); ++t) weights.push_back(candidate_weight(t, name, tr));
        for (size_t t = 0; t < readers_.size(); ++t)
          candidates.push_back({weights[t], grams[t][s].data<float>(), factors[t]});
        const RegMeanLinear solved =
            regmean_linear(candidates, out, in, ctx.param("alpha", std::nullopt, name), name, ctx.audit);
        if (ctx.audit) record_audit(name, solved, grams, s);
        results_.insert_or_assign(
            name, Tensor::from_f32(shape, tr ? transpose_matrix(solved.weight, out, in) : solved.weight));
      }
  }

  void merge_block(const MergeContext& ctx, int64_t l, std::vector<TaskState>& tasks, StatisticsOutput& stats) {
    const std::vector<LinearSiteSpec> sites = merged_->linear_sites(l);
    std::vector<std::vector<Tensor>> grams;  // [task][site]
    for (size_t t = 0; t < readers_.size(); ++t)
      grams.push_back(measure_block(*merged_->read_block(*readers_[t], l), l, tasks[t]));
    solve_sites(ctx, sites, grams);
    for (size_t s = 0; s < sites.size(); ++s) {
      std::vector<const Tensor*> per_task;
      for (const auto& g : grams) per_task.push_back(&g[s]);
      stats.write(sites[s].gram, per_task, factors_for(ctx, sites[s].weights.front()));
    }
    // The block's other tensors (biases, norms) averaged; then the merged block, written
    // and read back as the family reads a block, runs on every task's stream.
    std::set<std::string> solved;
    for (const auto& site : sites) solved.insert(site.weights.begin(), site.weights.end());
    std::vector<std::pair<std::string, Tensor>> block;
    for (const std::string& name : merged_->block_tensor_names(l)) {
      if (!solved.contains(name)) results_.insert_or_assign(name, average_tensor(ctx, name));
      block.emplace_back(name, results_.at(name));
    }
    const fs::path file = scratch_ / ("block-" + std::to_string(l) + ".safetensors");
    save_safetensors(file, block);
    block.clear();
    const CheckpointReader reader(file);
    const auto merged_block = merged_->read_block(reader, l);
    for (auto& task : tasks)
      task.hidden.for_each(/*write_back=*/true, [&](Stream& batch) { merged_->run_block(l, *merged_block, batch); });
    // From here on the block's results are the file's mapped tensors: memory holds one block.
    for (const std::string& name : merged_->block_tensor_names(l)) results_.insert_or_assign(name, reader.tensor(name));
  }

  // Sites after the blocks (CLIP's projection) read each candidate's own head input: its own
  // post-LayerNorm of the merged stream, as the blocks' sites read its own blocks.
  void merge_head(const MergeContext& ctx, std::vector<TaskState>& tasks, StatisticsOutput& stats) {
    const std::vector<LinearSiteSpec> sites = merged_->linear_sites(-1);
    std::vector<std::vector<Tensor>> grams;
    for (size_t t = 0; t < readers_.size(); ++t) {
      const std::unique_ptr<Model> own = open_model(ctx.candidates[t]);
      GramCollector collector(sites);
      tasks[t].hidden.for_each(false, [&](Stream& batch) { (void)own->head(batch, collector.tap()); });
      grams.emplace_back();
      for (auto& [name, gram] : collector.means()) grams.back().push_back(std::move(gram));
    }
    solve_sites(ctx, sites, grams);
    for (size_t s = 0; s < sites.size(); ++s) {
      std::vector<const Tensor*> per_task;
      for (const auto& g : grams) per_task.push_back(&g[s]);
      stats.write(sites[s].gram, per_task, factors_for(ctx, sites[s].weights.front()));
    }
  }

  // A solved layer's audit fields, handed to the engine's report in merge(). With candidates'
  // own-stream statistics (`stats:` from amalgam stats beside `data:`), also how far the
  // merged stream moved each layer's input: ||G_merged - G_own||_F / ||G_own||_F per task.
  void record_audit(const std::string& name, const RegMeanLinear& solved, const std::vector<std::vector<Tensor>>& grams,
                    size_t site) {
    TensorAudit fields(solved.relative_residuals.size(), 0);
    record_regmean_audit(fields, solved);
    nlohmann::json json = fields.fields();
    if (!own_stats_.empty()) {
      std::vector<double> shift;
      for (size_t t = 0; t < own_stats_.size(); ++t) {
        const auto own = own_stats_[t] ? own_stats_[t]->gram_for_weight(name) : std::nullopt;
        shift.push_back(own ? relative_distance(grams[t][site], own->to(DType::F32)) : -1.0);
      }
      json["input_shift"] = shift;
    }
    audits_[name] = std::move(json);
  }

  static double relative_distance(const Tensor& a, const Tensor& b) {
    const auto x = a.data<float>(), y = b.data<float>();
    if (x.size() != y.size()) return -1.0;
    double diff = 0, norm = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      diff += (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
      norm += static_cast<double>(y[i]) * y[i];
    }
    return norm > 0 ? std::sqrt(diff / norm) : 0.0;
  }

  std::vector<std::unique_ptr<CheckpointReader>> readers_;
  std::vector<std::unique_ptr<StatisticsFile>> own_stats_;  // optional, for the audit's input shift
  std::map<std::string, nlohmann::json> audits_;
  fs::path scratch_;               // the merged model's checkpoint, in the staging directory
  std::unique_ptr<Model> merged_;  // opened on it
  std::map<std::string, Tensor> results_;
};

AMALGAM_REGISTER_METHOD(RegMeanPlusPlus);

}  // namespace
}  // namespace amalgam
