#include "merge/statistics.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "data/task.h"
#include "io/atomic_output.h"
#include "linalg/linalg.h"

namespace amalgam {

namespace fs = std::filesystem;

GramAccumulator::GramAccumulator(int64_t dim) : dim_(dim), sum_(static_cast<size_t>(dim * dim), 0.0) {}

void GramAccumulator::add(const float* rows, int64_t count, int64_t ld) {
  if (count == 0) return;
  // One batch in float through SYRK (its error is that of a count-term float sum), then
  // added into the double total.
  thread_local std::vector<float> batch;
  batch.resize(static_cast<size_t>(dim_ * dim_));
  syrk_upper(count, dim_, 1.0f, rows, ld, 0.0f, batch.data(), dim_);
  const float* values = batch.data();
  parallel_chunks(static_cast<size_t>(dim_), 16, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      double* s = sum_.data() + i * static_cast<size_t>(dim_);
      const float* b = values + i * static_cast<size_t>(dim_);
      for (size_t j = i; j < static_cast<size_t>(dim_); ++j) s[j] += b[j];
    }
  });
  rows_ += count;
}

Tensor GramAccumulator::mean() const {
  Tensor out = Tensor::uninitialized(DType::F32, {dim_, dim_});
  float* g = out.mutable_data<float>().data();
  const double scale = rows_ > 0 ? 1.0 / static_cast<double>(rows_) : 0.0;
  for (int64_t i = 0; i < dim_; ++i)
    for (int64_t j = i; j < dim_; ++j)
      g[i * dim_ + j] = g[j * dim_ + i] = static_cast<float>(sum_[static_cast<size_t>(i * dim_ + j)] * scale);
  return out;
}

CalibrationImages load_calibration_images(const std::vector<fs::path>& task_dirs,
                                          const ImageProcessorConfig& preprocess, const ClipVisionConfig& config,
                                          const CalibrationOptions& options) {
  if (task_dirs.empty()) throw InputError("calibration needs at least one task directory");
  if (options.examples < 1) throw InputError("calibration needs at least one example");
  preprocess.check_channels(config.num_channels);
  CalibrationImages out;
  const int64_t tasks = static_cast<int64_t>(task_dirs.size());
  for (int64_t t = 0; t < tasks; ++t) {
    const fs::path& dir = task_dirs[static_cast<size_t>(t)];
    const TaskInfo info = read_task_info(dir);
    const ImageShape shape = preprocessed_shape(preprocess, info.image, config.num_channels);
    if (shape.height != config.image_size || shape.width != config.image_size)
      throw InputError(dir, "preprocessing gives " + std::to_string(shape.height) + "x" + std::to_string(shape.width) +
                                " images, the model takes " + std::to_string(config.image_size) + "x" +
                                std::to_string(config.image_size));
    const TaskSplit split = load_split(dir, info, "train");
    const int64_t share = options.examples / tasks + (t < options.examples % tasks ? 1 : 0);
    if (share > split.size())
      throw InputError(dir, "calibration wants " + std::to_string(share) + " training examples, the task has " +
                                std::to_string(split.size()));
    const std::vector<int64_t> indices = sample_indices(split.size(), share, options.seed);
    const std::vector<float> pixels = preprocess_batch(split.images, indices, preprocess, config.num_channels);
    out.pixels.insert(out.pixels.end(), pixels.begin(), pixels.end());
    out.count += share;
    out.tasks.push_back(info.name);
  }
  return out;
}

GramCollector::GramCollector(std::vector<LinearSiteSpec> sites) : sites_(std::move(sites)) {
  for (size_t i = 0; i < sites_.size(); ++i) {
    if (!index_.emplace(std::pair{sites_[i].layer, sites_[i].site}, i).second)
      throw std::logic_error("GramCollector: site listed twice: " + sites_[i].gram);
    accumulators_.emplace_back(sites_[i].width);
  }
}

void GramCollector::add(int64_t layer, int site, const float* rows, int64_t count, int64_t ld) {
  const auto it = index_.find({layer, site});
  if (it == index_.end()) throw std::logic_error("GramCollector: a tap from a site the table does not list");
  accumulators_[it->second].add(rows, count, ld);
}

GramStatistics GramCollector::finish(int64_t examples, std::vector<std::string> tasks, std::string model) const {
  GramStatistics s;
  for (size_t i = 0; i < sites_.size(); ++i) {
    s.grams.emplace_back(sites_[i].gram, accumulators_[i].mean());
    for (const auto& w : sites_[i].weights) s.weight_grams[w] = sites_[i].gram;
  }
  s.rows = accumulators_.empty() ? 0 : accumulators_.front().rows();
  s.examples = examples;
  s.tasks = std::move(tasks);
  s.model = std::move(model);
  return s;
}

GramStatistics measure_statistics(const ClipVisionModel& model, const CalibrationImages& images,
                                  const CalibrationOptions& options, const std::string& model_name) {
  const auto& c = model.config();
  GramCollector collector(clip_linear_sites(c, model.weights().visual_projection.has_value()));
  const LinearTap tap = [&](const LinearInput& in) {
    collector.add(in.layer, static_cast<int>(in.site), in.data, in.rows, in.width);
  };
  const int64_t image_floats = c.num_channels * c.image_size * c.image_size;
  const int64_t bs = std::max<int64_t>(1, options.batch_size);
  Progress progress("stats", static_cast<uint64_t>(images.count), 0, options.quiet, "images");
  for (int64_t begin = 0; begin < images.count; begin += bs) {
    check_interrupt();
    const int64_t n = std::min(bs, images.count - begin);
    model.features({images.pixels.data() + begin * image_floats, static_cast<size_t>(n * image_floats)}, n, tap);
    progress.advance(static_cast<uint64_t>(n), 0);
  }
  GramStatistics stats = collector.finish(images.count, images.tasks, model_name);
  // A NaN weight or an overflowing activation would reach every later Gram and then every
  // merged weight; the first Gram in model order names where it starts.
  for (const auto& [name, gram] : stats.grams) {
    const auto values = gram.data<float>();
    if (!all_finite(values.data(), values.size()))
      throw InputError(model_name, name,
                       "not finite: the model's weights or its activations on the calibration images hold NaN or Inf");
  }
  return stats;
}

Metadata statistics_metadata(const GramStatistics& s) {
  nlohmann::json weights = nlohmann::json::object();
  for (const auto& [w, g] : s.weight_grams) weights[w] = g;
  return {{"format", "amalgam-stats"},
          {"rows", std::to_string(s.rows)},
          {"examples", std::to_string(s.examples)},
          {"tasks", nlohmann::json(s.tasks).dump()},
          {"weights", weights.dump()},
          {"model", s.model}};
}

namespace {

int64_t parse_count(const Metadata& meta, const std::string& key, const fs::path& file) {
  const auto it = meta.find(key);
  if (it == meta.end()) throw InputError(file, "statistics metadata lacks '" + key + "'");
  try {
    size_t pos = 0;
    const long long v = std::stoll(it->second, &pos);
    if (pos != it->second.size() || v < 0) throw std::invalid_argument(key);
    return v;
  } catch (const std::exception&) {
    throw InputError(file, "statistics metadata '" + key + "' is not a count: '" + it->second + "'");
  }
}

}  // namespace

void save_statistics(const fs::path& path, const GramStatistics& stats, bool force) {
  AtomicOutput output(path, force, AtomicOutput::Kind::File);
  save_safetensors(output.staging(), stats.grams, statistics_metadata(stats));
  output.commit();
}

StatisticsFile::StatisticsFile(const fs::path& path) : reader_(path) {
  const Metadata& meta = reader_.metadata();
  const auto format = meta.find("format");
  if (format == meta.end() || format->second != "amalgam-stats")
    throw InputError(path,
                     "not an amalgam statistics file (metadata format is not 'amalgam-stats'; make one with "
                     "`amalgam stats`)");
  rows_ = parse_count(meta, "rows", path);
  examples_ = parse_count(meta, "examples", path);
  try {
    const auto tasks = meta.find("tasks");
    if (tasks != meta.end()) tasks_ = nlohmann::json::parse(tasks->second).get<std::vector<std::string>>();
    const auto weights = meta.find("weights");
    if (weights == meta.end()) throw InputError(path, "statistics metadata lacks 'weights'");
    weight_grams_ = nlohmann::json::parse(weights->second).get<std::map<std::string, std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path, std::string("statistics metadata is not valid: ") + e.what());
  }
  for (const auto& t : reader_.tensors()) {
    if (t.dtype != DType::F32 || t.shape.size() != 2 || t.shape[0] != t.shape[1])
      throw InputError(path, t.name,
                       "a Gram must be a square F32 matrix, got " + std::string(dtype_name(t.dtype)) + " " +
                           shape_to_string(t.shape));
    gram_names_.push_back(t.name);
  }
  for (const auto& [w, g] : weight_grams_)
    if (!reader_.contains(g)) throw InputError(path, g, "named for weight '" + w + "' but not in the file");
}

std::optional<Tensor> StatisticsFile::gram_for_weight(const std::string& weight_name) const {
  const auto it = weight_grams_.find(weight_name);
  if (it == weight_grams_.end()) return std::nullopt;
  return gram(it->second);
}

Shape StatisticsFile::gram_shape(const std::string& gram_name) const {
  const TensorInfo* info = reader_.find(gram_name);
  if (!info) throw InputError(path(), gram_name, "no such Gram");
  return info->shape;
}

// Checked on every read: a NaN in a Gram would otherwise surface as a solve that "produced
// NaN or Inf from finite inputs", naming the merged layer instead of this file.
Tensor StatisticsFile::gram(const std::string& gram_name) const {
  if (!reader_.contains(gram_name)) throw InputError(path(), gram_name, "no such Gram");
  Tensor g = reader_.tensor(gram_name);
  const Tensor values = g.to(DType::F32);  // a view when the mapped bytes are aligned
  if (!all_finite(values.data<float>().data(), static_cast<size_t>(values.numel())))
    throw InputError(path(), gram_name, "the Gram contains NaN or Inf");
  return g;
}

void write_combined_statistics(const fs::path& file, const std::vector<const StatisticsFile*>& inputs,
                               const std::function<double(size_t, const std::string&)>& factor) {
  if (inputs.empty()) throw InputError("combining statistics needs at least one file");
  const StatisticsFile& first = *inputs.front();
  GramStatistics header;  // everything but the Grams
  header.weight_grams = first.weight_grams();
  header.model = "combined";
  for (const StatisticsFile* s : inputs) {
    if (s->gram_names() != first.gram_names() || s->weight_grams() != first.weight_grams())
      throw InputError(s->path(), "covers different Grams than " + first.path().string());
    header.rows += s->rows();
    header.examples += s->examples();
    for (const auto& t : s->tasks())
      if (std::find(header.tasks.begin(), header.tasks.end(), t) == header.tasks.end()) header.tasks.push_back(t);
  }
  std::vector<TensorSpec> plan;
  for (const auto& name : first.gram_names()) plan.push_back({name, DType::F32, first.gram_shape(name)});
  SafetensorsWriter writer(file, plan, statistics_metadata(header));
  for (const auto& spec : plan) {
    const size_t n = static_cast<size_t>(shape_numel(spec.shape));
    std::vector<double> sum(n, 0.0);
    std::vector<float> values(n);
    double total = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Tensor g = inputs[i]->gram(spec.name);
      if (g.shape() != spec.shape)
        throw InputError(inputs[i]->path(), spec.name,
                         "shape " + shape_to_string(g.shape()) + " differs from " + shape_to_string(spec.shape) +
                             " in " + first.path().string());
      const double a = factor(i, spec.name);
      total += a;
      g.read_bytes(0, std::as_writable_bytes(std::span(values)));
      parallel_chunks(n, 1 << 16, [&](size_t b, size_t e) {
        for (size_t k = b; k < e; ++k) sum[k] += a * values[k];
      });
    }
    if (!(total > 0)) throw InputError(first.path(), spec.name, "the combined statistics have zero total weight");
    Tensor out = Tensor::uninitialized(DType::F32, spec.shape);
    std::transform(sum.begin(), sum.end(), out.mutable_data<float>().begin(),
                   [total](double v) { return static_cast<float>(v / total); });
    writer.write(spec.name, out);
  }
  writer.finish();
}

void pool_statistics(const std::vector<fs::path>& files, const fs::path& output, bool force) {
  std::vector<std::unique_ptr<StatisticsFile>> in;
  std::vector<const StatisticsFile*> views;
  for (const auto& f : files) {
    in.push_back(std::make_unique<StatisticsFile>(f));
    views.push_back(in.back().get());
  }
  AtomicOutput out(output, force, AtomicOutput::Kind::File);
  write_combined_statistics(out.staging(), views,
                            [&](size_t i, const std::string&) { return static_cast<double>(views[i]->rows()); });
  out.commit();
}

}  // namespace amalgam
