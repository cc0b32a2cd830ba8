#include "calibration/statistics_file.h"

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

Metadata statistics_metadata(const GramStatistics& s) {
  nlohmann::json weights = nlohmann::json::object();
  for (const auto& [w, g] : s.weight_grams) weights[w] = g;
  Metadata meta = {{"format", "amalgam-stats"},
                   {"rows", std::to_string(s.rows)},
                   {"examples", std::to_string(s.examples)},
                   {"tasks", nlohmann::json(s.tasks).dump()},
                   {"weights", weights.dump()},
                   {"model", s.model}};
  if (!s.transposed.empty()) meta["transposed"] = nlohmann::json(s.transposed).dump();
  return meta;
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
    if (const auto transposed = meta.find("transposed"); transposed != meta.end())
      transposed_ = nlohmann::json::parse(transposed->second).get<std::set<std::string>>();
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
  header.transposed = first.transposed();
  header.model = "combined";
  for (const StatisticsFile* s : inputs) {
    if (s->gram_names() != first.gram_names() || s->weight_grams() != first.weight_grams() ||
        s->transposed() != first.transposed())
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
