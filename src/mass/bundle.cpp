#include "mass/bundle.h"

#include <cctype>
#include <chrono>
#include <cmath>
#include <memory>
#include <set>
#include <variant>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "io/atomic_output.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "mass/factors.h"
#include "merge/audit.h"
#include "model/classifier_head.h"
#include "model/model.h"

namespace amalgam::mass {

namespace fs = std::filesystem;

nlohmann::ordered_json BundleSizes::to_json() const {
  return {{"base", base},   {"factors", factors}, {"first_pass", first_pass},
          {"heads", heads}, {"bundle", bundle()}, {"all_finetunes", all_finetunes}};
}

fs::path BundleInfo::factors_path(size_t task) const {
  return dir / "factors" / (tasks.at(task) + ".safetensors");
}

fs::path BundleInfo::head_path(size_t task) const {
  return dir / "heads" / (tasks.at(task) + ".safetensors");
}

// ---------------------------------------------------------------------------------------
// Reading bundle.json

namespace {

uint64_t size_field(const nlohmann::json& sizes, const char* key, const fs::path& file) {
  if (!sizes.contains(key) || !sizes[key].is_number_unsigned())
    throw InputError(file, std::string("sizes.") + key + ": expected a non-negative integer");
  return sizes[key].get<uint64_t>();
}

BundleSizes read_sizes(const nlohmann::json& j, const fs::path& file) {
  if (!j.contains("sizes") || !j["sizes"].is_object()) throw InputError(file, "sizes: missing");
  const auto& s = j["sizes"];
  return {size_field(s, "base", file), size_field(s, "factors", file), size_field(s, "first_pass", file),
          size_field(s, "heads", file), size_field(s, "all_finetunes", file)};
}

}  // namespace

BundleInfo BundleInfo::read(const fs::path& dir) {
  const fs::path file = dir / kBundleFile;
  if (!fs::exists(file))
    throw InputError(dir, "not a MASS bundle (no bundle.json; build one with `amalgam mass build`)");
  const nlohmann::json j = read_json_file(file);
  if (!j.is_object() || !j.contains("format") || j["format"] != kBundleFormat)
    throw InputError(file, "format: not an amalgam-mass bundle");
  if (!j.contains("version") || j["version"] != kBundleVersion)
    throw InputError(file, "version: expected " + std::to_string(kBundleVersion));
  BundleInfo info;
  info.dir = dir;
  if (!j.contains("base") || !j["base"].is_string())
    throw InputError(file, "base: expected the base checkpoint's path");
  info.base = j["base"].get<std::string>();
  if (!j.contains("tasks") || !j["tasks"].is_array() || j["tasks"].empty())
    throw InputError(file, "tasks: expected a non-empty list");
  for (const auto& t : j["tasks"]) {
    if (!t.is_object() || !t.contains("name") || !t["name"].is_string())
      throw InputError(file, "tasks: every entry needs a name");
    info.tasks.push_back(t["name"].get<std::string>());
  }
  if (j.contains("rank_fraction")) {
    if (!j["rank_fraction"].is_number()) throw InputError(file, "rank_fraction: expected a number");
    info.rank_fraction = j["rank_fraction"].get<double>();
  }
  if (j.contains("ranks") && j["ranks"].is_object())
    for (const auto& [name, k] : j["ranks"].items()) {
      if (!k.is_number_integer()) throw InputError(file, "ranks." + name + ": expected an integer");
      info.ranks[name] = k.get<int64_t>();
    }
  info.sizes = read_sizes(j, file);
  if (j.contains("similarity_threshold") && j["similarity_threshold"].is_number())
    info.similarity_threshold = j["similarity_threshold"].get<double>();
  if (j.contains("filtered") && j["filtered"].is_array())
    for (const auto& f : j["filtered"]) {
      const auto is_string = [&](const char* key) { return f.contains(key) && f[key].is_string(); };
      if (!f.is_object() || !is_string("tensor") || !is_string("task") || !is_string("like") || !f.contains("cosine") ||
          !f["cosine"].is_number())
        throw InputError(file, "filtered: every entry needs tensor, task, like and cosine");
      info.filtered.push_back({f["tensor"].get<std::string>(), f["task"].get<std::string>(),
                               f["like"].get<std::string>(), f["cosine"].get<double>()});
    }
  info.router = RouterConfig::from_json(read_json_file(dir / kRouterFile), dir / kRouterFile);
  if (info.router.tasks != info.tasks) throw InputError(dir / kRouterFile, "tasks: differ from bundle.json's");
  return info;
}

// ---------------------------------------------------------------------------------------
// Building

namespace {

// Task names become file names inside the bundle.
bool is_safe_name(const std::string& name) {
  if (name.empty() || name.front() == '.' || name.size() > 200) return false;
  for (unsigned char c : name)
    if (!std::isalnum(c) && c != '-' && c != '_' && c != '.') return false;
  return true;
}

std::string task_name(const MassModelEntry& m, const ClassifierHead& head) {
  if (m.name) return *m.name;
  if (!head.task.empty()) return head.task;
  return fs::absolute(m.path).lexically_normal().filename().string();
}

// Everything the build reads, opened and checked before anything is written.
struct Inputs {
  std::unique_ptr<CheckpointReader> base;
  std::vector<std::unique_ptr<CheckpointReader>> models;
  std::vector<std::string> names;
  int64_t routing_layer = 0;
  std::string routed_weight;  // the routing block's MLP input weight, whose subspaces route
};

void check_heads(const MassConfig& config, int64_t feature_dim, std::vector<std::string>& names) {
  std::set<std::string> seen;
  for (size_t t = 0; t < config.models.size(); ++t) {
    const std::string where = "models[" + std::to_string(t) + "]";
    const ClassifierHead head = ClassifierHead::load(config.models[t].head);
    if (head.dim() != feature_dim)
      throw InputError(config.models[t].head, "weight",
                       "takes features of width " + std::to_string(head.dim()) + ", the base model gives " +
                           std::to_string(feature_dim));
    const std::string name = task_name(config.models[t], head);
    if (!is_safe_name(name))
      throw InputError(config.source, where + ".name: '" + name +
                                          "' is not a usable task name (letters, digits, '-', '_', '.'; give name:)");
    if (!seen.insert(name).second)
      throw InputError(config.source, where + ".name: task '" + name + "' appears twice (give each model a name:)");
    names.push_back(name);
  }
}

// Every candidate has every base tensor, with its shape, and floating where the base is.
void check_candidate(const CheckpointReader& base, const CheckpointReader& model) {
  for (const std::string& name : base.names()) {
    const TensorInfo& b = base.info(name);
    if (!model.contains(name)) throw InputError(model.path(), name, "missing (the base has it)");
    const TensorInfo& m = model.info(name);
    if (m.shape != b.shape)
      throw InputError(model.path(), name,
                       "has shape " + shape_to_string(m.shape) + ", the base has " + shape_to_string(b.shape));
    if (is_floating(m.dtype) != is_floating(b.dtype))
      throw InputError(model.path(), name,
                       "dtype " + std::string(dtype_name(m.dtype)) + " does not match the base's " +
                           std::string(dtype_name(b.dtype)));
  }
}

Inputs open_inputs(const MassConfig& config) {
  Inputs in;
  in.base = std::make_unique<CheckpointReader>(config.base_path);
  // The base as a model for its shape (blocks, sites, feature width), let go before the build.
  const std::unique_ptr<Model> model = open_model(config.base_path);
  image_input_of(*model, config.base_path);
  const int64_t layers = model->num_layers(), feature_dim = model->head_width();
  const int64_t asked = config.parameters.routing_layer;
  if (asked >= layers)
    throw InputError(config.source, "parameters.routing_layer: " + std::to_string(asked) +
                                        " is not a block (the model has " + std::to_string(layers) + ")");
  in.routing_layer = asked >= 0 ? asked : default_routing_layer(layers);
  in.routed_weight = routed_weight(*model, in.routing_layer);
  if (!in.base->contains(in.routed_weight) || in.base->info(in.routed_weight).shape.size() != 2)
    throw InputError(in.base->path(), in.routed_weight, "missing: the router reads this MLP weight's subspaces");
  check_heads(config, feature_dim, in.names);
  for (const auto& m : config.models) {
    in.models.push_back(std::make_unique<CheckpointReader>(m.path));
    check_candidate(*in.base, *in.models.back());
  }
  return in;
}

// What one task keeps of one tensor.
using TaskPart = std::variant<LowRankFactors, std::vector<float>>;

struct Plans {
  std::vector<TensorSpec> factors;     // the same for every task
  std::vector<TensorSpec> first_pass;  // the base's tensors, in the base's dtypes
  std::map<std::string, int64_t> ranks;
};

Plans make_plans(const CheckpointReader& base, int64_t tasks, double rank_fraction) {
  Plans p;
  for (const std::string& name : base.names()) {
    const TensorInfo& info = base.info(name);
    p.first_pass.push_back({name, info.dtype, info.shape});
    if (!is_floating(info.dtype)) continue;
    if (info.shape.size() == 2) {
      const int64_t k = factor_rank(info.shape[0], info.shape[1], tasks, rank_fraction);
      p.ranks[name] = k;
      // The base's dtype: a half-precision base gets half-precision factors, so the bundle's
      // size against the base is what it would be in F32 too.
      p.factors.push_back({name + kFactorU, info.dtype, {info.shape[0], k}});
      p.factors.push_back({name + kFactorS, info.dtype, {k}});
      p.factors.push_back({name + kFactorVt, info.dtype, {k, info.shape[1]}});
    } else {
      p.factors.push_back({name + kFactorDelta, info.dtype, info.shape});
    }
  }
  return p;
}

bool all_finite(std::span<const float> v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// One task's delta of one tensor against the base.
std::vector<float> task_delta(const CheckpointReader& model, const std::string& name, std::span<const float> base) {
  const Tensor tuned = model.tensor(name).to(DType::F32);
  const auto w = tuned.data<float>();
  std::vector<float> delta(base.size());
  for (size_t i = 0; i < delta.size(); ++i) delta[i] = w[i] - base[i];
  model.release(name);
  if (!all_finite(delta)) throw InputError(model.path(), name, "contains NaN or Inf");
  return delta;
}

// What a task keeps of a delta: its rank-k truncated SVD when 2-D, else the whole delta.
TaskPart decompose(std::vector<float> delta, const Shape& shape, int64_t rank) {
  if (shape.size() != 2) return delta;
  Matrix m(shape[0], shape[1]);
  m.data = std::move(delta);
  return truncated_svd(m, rank);
}

void write_part(SafetensorsWriter& out, const std::string& name, const Shape& shape, DType dtype,
                const TaskPart& part) {
  if (const auto* delta = std::get_if<std::vector<float>>(&part)) {
    out.write(name + kFactorDelta, Tensor::from_f32(shape, *delta).to(dtype));
    return;
  }
  const auto& f = std::get<LowRankFactors>(part);
  out.write(name + kFactorU, Tensor::from_f32({f.u.rows, f.u.cols}, f.u.data).to(dtype));
  out.write(name + kFactorS, Tensor::from_f32({f.rank()}, f.s).to(dtype));
  out.write(name + kFactorVt, Tensor::from_f32({f.vt.rows, f.vt.cols}, f.vt.data).to(dtype));
}

double cosine(std::span<const float> a, std::span<const float> b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return aa > 0 && bb > 0 ? ab / std::sqrt(aa * bb) : 0.0;
}

// The redundancy filter: tasks in bundle order, each accepted unless its delta's cosine with
// an accepted one's exceeds the threshold (then recorded against the most similar one).
// Without a threshold every task is accepted.
std::vector<size_t> accepted_tasks(const std::string& name, const std::vector<std::vector<float>>& deltas,
                                   const std::vector<std::string>& names, std::optional<double> threshold,
                                   std::vector<FilteredDelta>& filtered) {
  std::vector<size_t> accepted;
  for (size_t t = 0; t < deltas.size(); ++t) {
    std::optional<FilteredDelta> worst;
    if (threshold)
      for (size_t a : accepted) {
        const double c = cosine(deltas[t], deltas[a]);
        if (c > *threshold && (!worst || c > worst->cosine)) worst = FilteredDelta{name, names[t], names[a], c};
      }
    if (worst)
      filtered.push_back(*worst);
    else
      accepted.push_back(t);
  }
  return accepted;
}

// W0 + TSV-M (alpha 1) of the accepted tasks, in F32, from the parts just computed: what the
// `tsv` merge method computes from the same task vectors.
std::vector<float> first_pass_values(const TensorInfo& info, std::vector<float> merged,
                                     const std::vector<TaskPart>& parts, std::span<const size_t> accepted) {
  if (info.shape.size() == 2) {
    std::vector<FactorView> views;
    for (size_t t : accepted) views.push_back(factor_view(std::get<LowRankFactors>(parts[t])));
    add_tsv_merge(views, 1.0f, info.shape[0], info.shape[1], merged);
  } else {
    std::vector<std::span<const float>> deltas;
    for (size_t t : accepted) deltas.emplace_back(std::get<std::vector<float>>(parts[t]));
    add_mean_delta(deltas, merged);
  }
  return merged;
}

// The first pass's tensor in the base's dtype, checked: a finite F32 value can overflow F16.
Tensor first_pass_tensor(const std::string& name, const TensorInfo& info, std::span<const float> merged) {
  const Tensor out = Tensor::from_f32(info.shape, merged).to(info.dtype);
  if (!all_finite(out.to(DType::F32).data<float>()))
    throw InputError("first-pass model: tensor '" + name + "': not finite in " + std::string(dtype_name(info.dtype)));
  return out;
}

struct Writers {
  std::vector<std::unique_ptr<SafetensorsWriter>> factors;
  std::unique_ptr<CheckpointWriter> first_pass;
};

Writers open_writers(const fs::path& stage, const Inputs& in, const Plans& plans) {
  Writers w;
  fs::create_directories(stage / "factors");
  fs::create_directories(stage / "heads");
  fs::create_directories(stage / "first_pass");
  for (const std::string& name : in.names)
    w.factors.push_back(
        std::make_unique<SafetensorsWriter>(stage / "factors" / (name + ".safetensors"), plans.factors,
                                            Metadata{{"format", "pt"}, {"amalgam", "mass-factors"}, {"task", name}}));
  w.first_pass = std::make_unique<CheckpointWriter>(stage / "first_pass", plans.first_pass);
  return w;
}

// The audit of one tensor (merge/audit.h), as the `tsv` method records it: the task vectors'
// norms and cosines against the first pass's delta, and for a matrix the rank kept, the
// energy each task keeps and the interference between the tasks' subspaces.
void audit_tensor(const std::string& name, const Shape& shape, int64_t rank, std::span<const float> base,
                  const std::vector<std::vector<float>>& deltas, const std::vector<TaskPart>& parts,
                  std::span<const float> first_pass, MergeReport& report) {
  TensorAudit audit(deltas.size(), base.size());
  std::vector<float> merged_delta(base.size());  // in F32, as the engine audits a merge
  for (size_t i = 0; i < base.size(); ++i) merged_delta[i] = first_pass[i] - base[i];
  const std::vector<std::span<const float>> task_vectors(deltas.begin(), deltas.end());
  audit_deltas(task_vectors, merged_delta, audit);
  if (shape.size() == 2) {
    std::vector<FactorView> factors;
    std::vector<double> energy_kept;
    for (size_t t = 0; t < parts.size(); ++t) {
      factors.push_back(factor_view(std::get<LowRankFactors>(parts[t])));
      energy_kept.push_back(kept_energy(deltas[t], factors.back()));
    }
    record_tsv_audit(audit, rank, energy_kept, factors);
  }
  report.add(name, shape, audit);
}

void write_tensor(const Inputs& in, Writers& w, const Plans& plans, const std::string& name,
                  std::optional<double> threshold, BuildSummary& summary, MergeReport* report) {
  const TensorInfo& info = in.base->info(name);
  if (!is_floating(info.dtype)) {
    w.first_pass->write(name, in.base->tensor(name));
    ++summary.tensors_copied;
    return;
  }
  const Tensor base_values = in.base->tensor(name).to(DType::F32);
  const auto base = base_values.data<float>();
  if (!all_finite(base)) throw InputError(in.base->path(), name, "contains NaN or Inf");
  const int64_t rank = info.shape.size() == 2 ? plans.ranks.at(name) : 0;
  // Every task's delta of this one tensor at once: the redundancy filter compares them.
  std::vector<std::vector<float>> deltas(in.models.size());
  parallel_for(deltas.size(), [&](size_t t) { deltas[t] = task_delta(*in.models[t], name, base); });
  const std::vector<size_t> accepted = accepted_tasks(name, deltas, in.names, threshold, summary.info.filtered);
  std::vector<TaskPart> parts(in.models.size());
  // One task per thread: LAPACK runs single-threaded inside, so the bits do not depend on
  // the machine's thread count. The audit needs the deltas afterwards: it decomposes copies.
  parallel_for(parts.size(), [&](size_t t) {
    parts[t] = decompose(report ? deltas[t] : std::move(deltas[t]), info.shape, rank);
    write_part(*w.factors[t], name, info.shape, info.dtype, parts[t]);
  });
  const std::vector<float> first_pass = first_pass_values(info, {base.begin(), base.end()}, parts, accepted);
  if (report) audit_tensor(name, info.shape, rank, base, deltas, parts, first_pass, *report);
  w.first_pass->write(name, first_pass_tensor(name, info, first_pass));
  in.base->release(name);
  ++(info.shape.size() == 2 ? summary.tensors_factored : summary.tensors_whole);
}

uint64_t tensor_file_bytes(const fs::path& dir) {
  uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") total += e.file_size();
  return total;
}

nlohmann::ordered_json filtered_json(const std::vector<FilteredDelta>& filtered) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const FilteredDelta& f : filtered)
    out.push_back({{"tensor", f.tensor}, {"task", f.task}, {"like", f.like}, {"cosine", f.cosine}});
  return out;
}

nlohmann::ordered_json bundle_json(const MassConfig& config, const BundleInfo& info) {
  nlohmann::ordered_json tasks = nlohmann::ordered_json::array();
  for (size_t t = 0; t < info.tasks.size(); ++t)
    tasks.push_back({{"name", info.tasks[t]},
                     {"model", fs::absolute(config.models[t].path).lexically_normal().string()},
                     {"factors", "factors/" + info.tasks[t] + ".safetensors"},
                     {"head", "heads/" + info.tasks[t] + ".safetensors"}});
  return {{"format", kBundleFormat},
          {"version", kBundleVersion},
          {"base", info.base.string()},
          {"tasks", tasks},
          {"rank_fraction", info.rank_fraction},
          {"ranks", info.ranks},
          {"sizes", info.sizes.to_json()},
          {"similarity_threshold", info.similarity_threshold ? nlohmann::ordered_json(*info.similarity_threshold)
                                                             : nlohmann::ordered_json(nullptr)},
          {"filtered", filtered_json(info.filtered)}};
}

RouterConfig router_config(const MassParameters& p, int64_t layer, const std::vector<std::string>& tasks) {
  RouterConfig r;
  r.layer = layer;
  r.token = p.token;
  r.mode = p.mode;
  r.threshold = p.threshold;
  r.temperature = p.temperature;
  r.max_tasks = p.max_tasks;
  r.rank = p.routing_rank;
  r.tasks = tasks;
  return r;
}

// The router's rows come from the stored factors: it cannot route on more than were kept.
void check_routing_rank(const MassConfig& config, const Plans& plans, const std::string& routed) {
  const int64_t stored = plans.ranks.at(routed);
  if (config.parameters.routing_rank > stored)
    throw InputError(config.source, "parameters.routing_rank: " + std::to_string(config.parameters.routing_rank) +
                                        " exceeds the rank kept per task of '" + routed + "' (" +
                                        std::to_string(stored) + ")");
}

}  // namespace

BuildSummary build_bundle(const MassConfig& config, const BuildOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  const Inputs in = open_inputs(config);
  const Plans plans = make_plans(*in.base, static_cast<int64_t>(in.models.size()), config.parameters.rank_fraction);
  check_routing_rank(config, plans, in.routed_weight);
  AtomicOutput output(options.output, options.force);
  const fs::path stage = output.staging();
  Writers writers = open_writers(stage, in, plans);

  BuildSummary summary;
  std::optional<MergeReport> report;
  if (options.audit) {
    std::vector<fs::path> candidates;
    for (const auto& m : in.models) candidates.push_back(m->path());
    report.emplace("mass", candidates, in.base->path());
  }
  Progress progress("mass build", in.base->names().size(), in.base->total_tensor_bytes(), options.quiet);
  for (const std::string& name : in.base->names()) {
    check_interrupt();
    write_tensor(in, writers, plans, name, config.parameters.similarity_threshold, summary,
                 report ? &*report : nullptr);
    progress.advance(1, in.base->info(name).nbytes());
  }
  if (report) {
    const nlohmann::json json = report->to_json();
    write_text_file(stage / kMergeReportFile, json.dump(1) + "\n");
    summary.audit_summary = audit_summary(json);
  }
  for (auto& w : writers.factors) w->finish();
  writers.first_pass->finish();
  copy_files_into(in.base->auxiliary_files(), stage / "first_pass");
  for (size_t t = 0; t < in.names.size(); ++t)
    fs::copy_file(config.models[t].head, stage / "heads" / (in.names[t] + ".safetensors"));

  BundleInfo& info = summary.info;
  info.dir = options.output;
  info.base = fs::absolute(in.base->path()).lexically_normal();
  info.tasks = in.names;
  info.rank_fraction = config.parameters.rank_fraction;
  info.ranks = plans.ranks;
  info.router = router_config(config.parameters, in.routing_layer, in.names);
  info.similarity_threshold = config.parameters.similarity_threshold;
  info.sizes = {in.base->total_tensor_bytes(), tensor_file_bytes(stage / "factors"),
                tensor_file_bytes(stage / "first_pass"), tensor_file_bytes(stage / "heads"),
                in.base->total_tensor_bytes() * in.names.size()};
  write_text_file(stage / kRouterFile, info.router.to_json().dump(2) + "\n");
  write_text_file(stage / kBundleFile, bundle_json(config, info).dump(2) + "\n");
  output.commit();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return summary;
}

}  // namespace amalgam::mass
