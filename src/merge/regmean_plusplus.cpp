// regmean_plusplus (RegMean++, Nguyen et al., 2025): RegMean's closed form, with each
// block's Grams measured on the merged model's own stream (methods.md, "RegMean++"):
//
//   embeddings and pre-LayerNorm: the weighted mean; H_t = merged embedding of task t's images
//   for each block l: run candidate t's block l on H_t, measuring the Grams of its linear
//     inputs; merge block l (linear weights by the closed form, the rest by the mean);
//     H_t <- merged block l applied to H_t
//   post_layernorm: the weighted mean (the reference code leaves it at the base's value, an
//     accident amalgam does not copy); visual_projection (when present) by the closed form
//     on each candidate's own post-LayerNorm of the merged stream's CLS token.
//
// CLIP vision models only (a CLIPModel's text tower, which no image reaches, is averaged).
// The whole merge happens in prepare(), block by block, holding the candidates' current
// block, that block's Grams and every task's hidden states; merge() hands out the result.
// The Grams it measured are written to stats.safetensors (their weighted mean) for audit.
#include <filesystem>
#include <memory>

#include "calibration/gram.h"
#include "calibration/images.h"
#include "calibration/statistics_file.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/progress.h"
#include "data/preprocess.h"
#include "io/checkpoint.h"
#include "io/scratch_file.h"
#include "merge/audit.h"
#include "merge/config.h"
#include "merge/regmean.h"
#include "model/families/clip_vision.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;

constexpr SiteRole kBlockSites[] = {SiteRole::AttentionInput, SiteRole::AttentionOutput, SiteRole::MlpInput,
                                    SiteRole::MlpOutput};

// One task's hidden states after the merged prefix, [images * tokens, width]: in memory, or
// in a scratch file (read and written a batch at a time) when they do not fit the budget.
class TaskStream {
 public:
  TaskStream(int64_t images, int64_t tokens, int64_t width, const std::optional<fs::path>& spill_dir)
      : images_(images), image_floats_(static_cast<size_t>(tokens * width)), tokens_(tokens), width_(width) {
    if (spill_dir)
      file_.emplace(*spill_dir);
    else
      memory_.resize(static_cast<size_t>(images) * image_floats_);
  }
  int64_t images() const { return images_; }
  int64_t rows() const { return images_ * tokens_; }

  void read(int64_t first, int64_t count, Stream& out) const {
    out.set_uniform(count, tokens_, width_);
    if (file_)
      file_->read(offset(first), std::as_writable_bytes(std::span(out.data)));
    else
      std::copy_n(memory_.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(first) * image_floats_),
                  out.data.size(), out.data.begin());
  }
  void write(int64_t first, const Stream& in) {
    if (file_)
      file_->write(offset(first), std::as_bytes(std::span(in.data)));
    else
      std::copy(in.data.begin(), in.data.end(),
                memory_.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(first) * image_floats_));
  }

 private:
  uint64_t offset(int64_t first) const { return static_cast<uint64_t>(first) * image_floats_ * sizeof(float); }

  int64_t images_;
  size_t image_floats_;
  int64_t tokens_, width_;
  std::vector<float> memory_;
  std::optional<ScratchFile> file_;
};

// Runs `fn` on consecutive batches of a stream's images (written back when `write_back`):
// a candidate's block must not disturb the merged stream, and batches keep the scratch
// buffers small.
void for_each_batch(TaskStream& stream, int64_t batch_size, bool write_back, const std::function<void(Stream&)>& fn) {
  Stream batch;
  for (int64_t b = 0; b < stream.images(); b += batch_size) {
    check_interrupt();
    stream.read(b, std::min(batch_size, stream.images() - b), batch);
    fn(batch);
    if (write_back) stream.write(b, batch);
  }
}

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
                              "stream (CLIP vision models; needs per-model data)",
                              regmean_params(),
                              /*needs_base=*/false,
                              1,
                              std::numeric_limits<size_t>::max(),
                              /*data_aware=*/true};
    return s;
  }

  void prepare(const MergeContext& ctx) override {
    open_candidates(ctx);
    average_outside_blocks(ctx);
    auto streams = embed_calibration_images(ctx);
    StatisticsOutput stats(ctx, config_, merged_->weights().visual_projection.has_value(), streams);
    Progress progress("regmean++", static_cast<uint64_t>(config_.num_hidden_layers), 0, ctx.quiet, "layers");
    for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
      check_interrupt();
      merge_block(ctx, l, streams, stats);
      progress.advance(1, 0);
    }
    if (merged_->weights().visual_projection) merge_projection(ctx, streams, stats);
    stats.finish();
    for (const auto& p :
         clip_parameters(config_, merged_->mutable_weights(), merged_->weights().visual_projection.has_value()))
      results_.emplace(p.name, p);
    readers_.clear();
    own_stats_.clear();
  }

  Tensor merge(const TensorJob& job) const override {
    const auto it = results_.find(job.name());
    if (it == results_.end()) return weighted_mean(job);  // outside the vision tower
    if (const auto audit = audits_.find(job.name()); audit != audits_.end() && job.audit())
      for (const auto& [key, value] : audit->second.items()) job.audit()->set(key, value);
    const ClipParameter& p = it->second;
    return Tensor::from_f32(p.shape, {p.data, static_cast<size_t>(shape_numel(p.shape))});
  }

 private:
  // Every task's hidden states after the merged prefix, with its calibration metadata.
  struct TaskState {
    TaskStream hidden;
    int64_t examples = 0;
    std::vector<std::string> tasks;
  };

  // The Grams measured block by block, combined over tasks (weighted as the merge weighs
  // them) and written as the merge goes, so nothing is kept.
  class StatisticsOutput {
   public:
    StatisticsOutput(const MergeContext& ctx, const ClipVisionConfig& c, bool projection,
                     const std::vector<TaskState>& streams) {
      GramStatistics header;
      header.model = "regmean_plusplus (Grams on the merged stream)";
      for (const auto& s : streams) {
        header.rows += s.hidden.rows();
        header.examples += s.examples;
        header.tasks.insert(header.tasks.end(), s.tasks.begin(), s.tasks.end());
      }
      std::vector<TensorSpec> plan;
      for (const LinearSiteSpec& site : clip_linear_sites(c, projection)) {
        plan.push_back({site.gram, DType::F32, {site.width, site.width}});
        for (const auto& w : site.weights) header.weight_grams[w] = site.gram;
      }
      writer_ =
          std::make_unique<SafetensorsWriter>(ctx.staging / "stats.safetensors", plan, statistics_metadata(header));
    }
    void write(const std::string& gram, const std::vector<Tensor>& per_task, const std::vector<double>& factors) {
      std::vector<std::span<const float>> inputs;
      for (const auto& g : per_task) inputs.push_back(g.data<float>());
      Tensor out = Tensor::uninitialized(DType::F32, per_task.front().shape());
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
                                                " needs `data: TASK_DIR` (it measures its statistics on the merged "
                                                "model, so precomputed `stats` cannot stand in)");
      readers_.push_back(std::make_unique<CheckpointReader>(ctx.candidates[t]));
      if (ctx.audit && ctx.entries[t]->stats) {
        own_stats_.resize(ctx.candidates.size());
        own_stats_[t] = std::make_unique<StatisticsFile>(*ctx.entries[t]->stats);
      }
    }
    const CheckpointReader& first = *readers_.front();
    if (!first.config())
      throw InputError(first.path(), "no config.json (RegMean++ runs the model, it needs its config)");
    config_ = ClipVisionConfig::from_json(*first.config(), (first.dir() / "config.json").string());
    ClipVisionWeights weights;
    clip_parameters(config_, weights, first.contains("visual_projection.weight"));
    merged_ = std::make_unique<ClipVisionModel>(config_, std::move(weights));
  }

  std::vector<double> factors_for(const MergeContext& ctx, const std::string& tensor) const {
    std::vector<double> f;
    for (size_t t = 0; t < readers_.size(); ++t) f.push_back(ctx.param("weight", t, tensor));
    return f;
  }

  // Averages one tensor of the candidates into `out`.
  void average_tensor(const MergeContext& ctx, const std::string& name, std::span<float> out) const {
    std::vector<Tensor> values;
    std::vector<std::span<const float>> inputs;
    for (const auto& r : readers_) {
      values.push_back(r->tensor(name).to(DType::F32));
      inputs.push_back(values.back().data<float>());
      if (inputs.back().size() != out.size()) throw InputError(r->path(), name, "has the wrong size");
    }
    weighted_average(inputs, factors_for(ctx, name), out);
  }

  // Embeddings, pre_layrnorm and post_layernorm: the weighted mean.
  void average_outside_blocks(const MergeContext& ctx) {
    ClipVisionWeights& w = merged_->mutable_weights();
    for (const auto& p : clip_parameters(config_, w, w.visual_projection.has_value()))
      if (!p.name.starts_with("vision_model.encoder.layers.") && p.name != "visual_projection.weight")
        average_tensor(ctx, p.name, {p.data, static_cast<size_t>(shape_numel(p.shape))});
  }

  std::vector<TaskState> embed_calibration_images(const MergeContext& ctx) {
    CalibrationOptions options;
    options.examples = static_cast<int64_t>(ctx.param("examples", std::nullopt, ""));
    batch_size_ = options.batch_size = static_cast<int64_t>(ctx.param("batch_size", std::nullopt, ""));
    options.seed = ctx.seed;
    options.quiet = ctx.quiet;
    std::vector<CalibrationImages> images;
    uint64_t hidden_bytes = 0;
    for (size_t t = 0; t < readers_.size(); ++t) {
      images.push_back(load_calibration_images(ctx.entries[t]->data, load_image_processor_config(readers_[t]->dir()),
                                               *merged_->image_input(), options));
      hidden_bytes += static_cast<uint64_t>(images.back().count * config_.tokens() * config_.hidden_size) * 4;
    }
    // Half the budget for the hidden states; the rest holds the blocks, Grams and buffers.
    std::optional<fs::path> spill;
    if (hidden_bytes > ctx.max_memory / 2) {
      spill = ctx.staging;
      if (!ctx.quiet)
        warn("regmean_plusplus: the hidden states (" + std::to_string(hidden_bytes >> 20) +
             " MiB) exceed half of --max-memory; they stay in a scratch file beside the output");
    }
    std::vector<TaskState> streams;
    const int64_t image_floats = config_.num_channels * config_.image_size * config_.image_size;
    for (const CalibrationImages& im : images) {
      TaskState s{TaskStream(im.count, config_.tokens(), config_.hidden_size, spill), im.count, im.tasks};
      for (int64_t b = 0; b < im.count; b += batch_size_) {
        const int64_t n = std::min(batch_size_, im.count - b);
        s.hidden.write(b,
                       merged_->embed({im.pixels.data() + b * image_floats, static_cast<size_t>(n * image_floats)}, n));
      }
      streams.push_back(std::move(s));
    }
    return streams;
  }

  // The Grams of candidate t's block l on stream t, one per site (in kBlockSites order).
  std::vector<Tensor> measure_block(const ClipBlockWeights& block, int64_t l, TaskState& stream) const {
    std::vector<GramAccumulator> grams;
    for (SiteRole site : kBlockSites)
      grams.emplace_back(site == SiteRole::MlpOutput ? config_.intermediate_size : config_.hidden_size);
    const SiteTap tap = [&](const SiteInput& in) {
      grams[static_cast<size_t>(in.role)].add(in.data, in.rows, in.width);
    };
    for_each_batch(stream.hidden, batch_size_, /*write_back=*/false,
                   [&](Stream& batch) { run_clip_block(config_, block, l, batch, tap); });
    std::vector<Tensor> means;
    for (const auto& g : grams) means.push_back(g.mean());
    return means;
  }

  void merge_block(const MergeContext& ctx, int64_t l, std::vector<TaskState>& streams, StatisticsOutput& stats) {
    const size_t tasks = readers_.size();
    std::vector<ClipBlockWeights> blocks;
    std::vector<std::vector<Tensor>> grams;  // [task][site]
    for (size_t t = 0; t < tasks; ++t) {
      blocks.push_back(load_clip_block(*readers_[t], config_, l));
      grams.push_back(measure_block(blocks.back(), l, streams[t]));
    }
    ClipBlockWeights& merged = merged_->mutable_weights().layers[static_cast<size_t>(l)];
    const auto table = clip_block_parameters(config_, merged, l);
    std::vector<std::vector<ClipParameter>> candidate_tables;
    for (auto& b : blocks) candidate_tables.push_back(clip_block_parameters(config_, b, l));
    for (size_t i = 0; i < table.size(); ++i) {
      const ClipParameter& p = table[i];
      const size_t numel = static_cast<size_t>(shape_numel(p.shape));
      const std::vector<double> factors = factors_for(ctx, p.name);
      const auto site = site_of(p.name, l);
      if (!site) {  // biases and LayerNorms
        std::vector<std::span<const float>> inputs;
        for (const auto& ct : candidate_tables) inputs.push_back({ct[i].data, numel});
        weighted_average(inputs, factors, {p.data, numel});
        continue;
      }
      std::vector<RegMeanCandidate> candidates;
      for (size_t t = 0; t < tasks; ++t)
        candidates.push_back(
            {{candidate_tables[t][i].data, numel}, grams[t][static_cast<size_t>(*site)].data<float>(), factors[t]});
      const RegMeanLinear solved = regmean_linear(candidates, p.shape[0], p.shape[1],
                                                  ctx.param("alpha", std::nullopt, p.name), p.name, ctx.audit);
      std::copy(solved.weight.begin(), solved.weight.end(), p.data);
      if (ctx.audit) record_audit(p.name, solved, grams, static_cast<size_t>(*site));
    }
    for (SiteRole site : kBlockSites) {
      std::vector<Tensor> per_task;
      for (size_t t = 0; t < tasks; ++t) per_task.push_back(grams[t][static_cast<size_t>(site)]);
      stats.write(clip_gram_name(l, site), per_task, factors_for(ctx, linear_site_weights(l, site).front()));
    }
    for (auto& s : streams)
      for_each_batch(s.hidden, batch_size_, /*write_back=*/true,
                     [&](Stream& batch) { run_clip_block(config_, merged, l, batch); });
  }

  // Which linear site a block tensor's weight belongs to (nullopt for biases, LayerNorms).
  static std::optional<SiteRole> site_of(const std::string& name, int64_t l) {
    for (SiteRole site : kBlockSites)
      for (const auto& w : linear_site_weights(l, site))
        if (w == name) return site;
    return std::nullopt;
  }

  // The projection reads post_layernorm(CLS): candidate t's own post-LayerNorm of the
  // merged stream, as inside the blocks.
  void merge_projection(const MergeContext& ctx, std::vector<TaskState>& streams, StatisticsOutput& stats) {
    ClipVisionWeights& w = merged_->mutable_weights();
    const LayerNormParams merged_norm = w.post_layernorm;
    const std::string name = "visual_projection.weight";
    std::vector<Tensor> grams, projections;
    for (size_t t = 0; t < readers_.size(); ++t) {
      for (auto [field, suffix] : {std::pair{&w.post_layernorm.weight, ".weight"}, {&w.post_layernorm.bias, ".bias"}}) {
        const Tensor v = readers_[t]->tensor(std::string("vision_model.post_layernorm") + suffix).to(DType::F32);
        field->assign(v.data<float>().begin(), v.data<float>().end());
      }
      GramAccumulator gram(config_.hidden_size);
      const SiteTap tap = [&](const SiteInput& in) {
        if (in.role == SiteRole::Head) gram.add(in.data, in.rows, in.width);
      };
      for_each_batch(streams[t].hidden, batch_size_, false, [&](Stream& batch) { merged_->pool(batch, tap); });
      grams.push_back(gram.mean());
      projections.push_back(readers_[t]->tensor(name).to(DType::F32));
    }
    w.post_layernorm = merged_norm;
    const std::vector<double> factors = factors_for(ctx, name);
    std::vector<RegMeanCandidate> candidates;
    for (size_t t = 0; t < readers_.size(); ++t)
      candidates.push_back({projections[t].data<float>(), grams[t].data<float>(), factors[t]});
    const RegMeanLinear solved = regmean_linear(candidates, config_.projection_dim, config_.hidden_size,
                                                ctx.param("alpha", std::nullopt, name), name, ctx.audit);
    std::copy(solved.weight.begin(), solved.weight.end(), w.visual_projection->data.begin());
    if (ctx.audit) {
      std::vector<std::vector<Tensor>> per_task;
      for (auto& g : grams) per_task.push_back({g});
      record_audit(name, solved, per_task, 0);
    }
    stats.write(clip_gram_name(-1, SiteRole::Head), grams, factors);
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
  ClipVisionConfig config_;
  std::unique_ptr<ClipVisionModel> merged_;
  int64_t batch_size_ = 32;
  std::map<std::string, ClipParameter> results_;
};

AMALGAM_REGISTER_METHOD(RegMeanPlusPlus);

}  // namespace
}  // namespace amalgam
