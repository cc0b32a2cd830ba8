// `amalgam mass build CONFIG.yaml -o BUNDLE/`: a MASS bundle (low-rank task vectors, the
// first-pass TSV-M model, heads, router config).
// `amalgam mass eval BUNDLE --task DIR [...]`: routed accuracy, routing accuracy, latency.
// `amalgam mass predict BUNDLE (--task DIR | --images FILE)`: one JSON line per image.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>

#include "cli/commands.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/progress.h"
#include "data/preprocess.h"
#include "io/atomic_output.h"
#include "io/safetensors.h"
#include "mass/bundle.h"
#include "mass/config.h"
#include "mass/mass_eval.h"

namespace amalgam::cli {

namespace fs = std::filesystem;

namespace {

std::string ratio(uint64_t part, uint64_t whole) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fx", whole ? static_cast<double>(part) / static_cast<double>(whole) : 0.0);
  return buf;
}

// Sizes against the base: what the bundle adds to a base that is kept anyway, and what
// keeping every fine-tune would take instead.
void print_sizes(const mass::BundleSizes& s, size_t tasks) {
  std::fprintf(
      stderr,
      "amalgam: mass: base %s; factors %s (%s base), first pass %s, heads %s; base + bundle %s (%s base) "
      "against %zu fine-tunes %s\n",
      human_bytes(static_cast<double>(s.base)).c_str(), human_bytes(static_cast<double>(s.factors)).c_str(),
      ratio(s.factors, s.base).c_str(), human_bytes(static_cast<double>(s.first_pass)).c_str(),
      human_bytes(static_cast<double>(s.heads)).c_str(), human_bytes(static_cast<double>(s.base + s.bundle())).c_str(),
      ratio(s.base + s.bundle(), s.base).c_str(), tasks, human_bytes(static_cast<double>(s.all_finetunes)).c_str());
}

void add_mass_build_command(CLI::App& mass) {
  auto* cmd = mass.add_subcommand("build", "Build a MASS bundle: low-rank task vectors, first-pass model, router");
  struct Args {
    std::string config, output;
    bool force = false, quiet = false, no_audit = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("config", a->config, "MASS config (YAML: base_model, models with heads, parameters)")->required();
  cmd->add_option("-o,--output", a->output, "bundle directory to create")->required();
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->add_flag("--no-audit", a->no_audit, "do not write merge_report.json (see amalgam audit)");
  cmd->add_flag("-q,--quiet", a->quiet, "no progress or summary");
  cmd->callback([a] {
    const mass::MassConfig config = mass::load_mass_config(a->config);
    const mass::BuildSummary s = mass::build_bundle(config, {a->output, a->force, a->quiet, !a->no_audit});
    if (a->quiet) return;
    std::fprintf(stderr,
                 "amalgam: mass: %zu tasks, %lld matrices factored, %lld tensors kept whole, routing on block %lld "
                 "fc1, in %.2f s -> %s\n",
                 s.info.tasks.size(), static_cast<long long>(s.tensors_factored),
                 static_cast<long long>(s.tensors_whole), static_cast<long long>(s.info.router.layer), s.seconds,
                 a->output.c_str());
    print_sizes(s.info.sizes, s.info.tasks.size());
    if (s.info.similarity_threshold)
      std::fprintf(stderr,
                   "amalgam: mass: redundancy filter (cosine > %g): %zu task deltas left out of the first pass "
                   "(bundle.json: filtered)\n",
                   *s.info.similarity_threshold, s.info.filtered.size());
    for (const auto& line : s.audit_summary) std::fprintf(stderr, "amalgam: %s\n", line.c_str());
  });
}

std::string percent(const std::optional<double>& v) {
  char buf[32] = "n/a";
  if (v) std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * *v);
  return buf;
}

void print_result(const mass::MassEvalResult& r) {
  std::string sizes;
  for (const auto& [size, count] : r.set_sizes)
    sizes += (sizes.empty() ? "" : ", ") + std::to_string(size) + ": " + std::to_string(count);
  std::printf(
      "%s (%s, %lld examples, route %s, head %s): accuracy %.2f%%, routing accuracy %s, own task selected %s, "
      "first pass (TSV-M) %s, tasks selected {%s}, %lld sets, %.1f examples/s\n",
      r.task.c_str(), r.split.c_str(), static_cast<long long>(r.examples), to_string(r.scope).c_str(),
      to_string(r.head_rule).c_str(), 100.0 * r.accuracy, percent(r.routing_accuracy).c_str(),
      percent(r.own_task_selected).c_str(), percent(r.first_pass_accuracy).c_str(), sizes.c_str(),
      static_cast<long long>(r.distinct_sets), r.examples_per_second);
}

void print_latency(const mass::MassLatency& l, int64_t batch_size) {
  std::printf(
      "latency (batch %lld): MASS %.3f ms/image (first pass %.3f, model builds %.3f, second pass %.3f; %lld "
      "forwards, cache %lld hits / %lld misses) against a merged model %.3f ms/image: %.2fx\n",
      static_cast<long long>(batch_size), 1e3 * l.per_image(), 1e3 * l.first_pass / std::max<double>(1, l.images),
      1e3 * l.build / std::max<double>(1, l.images), 1e3 * l.second_pass / std::max<double>(1, l.images),
      static_cast<long long>(l.forwards), static_cast<long long>(l.cache_hits), static_cast<long long>(l.cache_misses),
      1e3 * l.merged_per_image(), l.ratio());
}

// Rows: the evaluated tasks; columns: the bundle's tasks; '*' marks each row's smallest
// mean residual (where the router would send that task's average input).
void print_residual_table(const std::vector<mass::MassEvalResult>& results, const std::vector<std::string>& tasks) {
  std::printf("mean residual r_t to each task's subspace (rows: inputs of a task; *: the row's smallest)\n%-12s", "");
  for (const auto& t : tasks) std::printf(" %10.10s", t.c_str());
  std::printf("\n");
  for (const auto& r : results) {
    const auto smallest = std::min_element(r.mean_residuals.begin(), r.mean_residuals.end());
    std::printf("%-12.12s", r.task.c_str());
    for (auto it = r.mean_residuals.begin(); it != r.mean_residuals.end(); ++it)
      std::printf(" %9.4f%c", *it, it == smallest ? '*' : ' ');
    std::printf("\n");
  }
}

mass::RouteScope parse_scope(const std::string& s) {
  return s == "batch" ? mass::RouteScope::Batch : mass::RouteScope::Sample;
}

mass::HeadRule parse_head_rule(const std::string& s) {
  return s == "max-logit" ? mass::HeadRule::MaxLogit : s == "router" ? mass::HeadRule::Router : mass::HeadRule::True;
}

// Router settings given on the command line, over the bundle's router.json.
struct RouterOverrides {
  std::optional<int64_t> layer, rank;
  std::optional<std::string> token, route_with;

  void add_options(CLI::App& cmd) {
    cmd.add_option("--routing-layer", layer, "route on this block's fc1 input instead of router.json's")
        ->check(non_negative_number());
    cmd.add_option("--token", token, "routing token instead of router.json's: cls or mean")
        ->check(CLI::IsMember({"cls", "mean"}));
    cmd.add_option("--routing-rank", rank, "route on the first K rows of each task's subspace (0: all stored)")
        ->check(non_negative_number());
    cmd.add_option("--route-with", route_with,
                   "diagnostic: route on this checkpoint's tokens instead of the first pass's (a task's own "
                   "fine-tune shows whether the stored subspaces separate the tasks)");
  }

  void apply(mass::MassRuntime& runtime) const {
    if (route_with) runtime.set_routing_model(*route_with);
    if (!layer && !rank && !token) return;
    mass::RouterConfig r = runtime.router();
    if (layer) r.layer = *layer;
    if (rank) r.rank = *rank;
    if (token) r.token = *token == "cls" ? mass::RouteToken::Cls : mass::RouteToken::Mean;
    runtime.set_router(r, "command line");
  }
};

void add_mass_eval_command(CLI::App& mass) {
  auto* cmd = mass.add_subcommand("eval", "Routed accuracy and routing accuracy of a MASS bundle on task data");
  struct Args {
    std::string bundle, split = "test", route = "sample", head_rule = "true";
    std::vector<std::string> tasks;
    mass::MassEvalOptions options;
    RouterOverrides router;
    size_t cache_models = 4;
    bool json = false, residual_table = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("bundle", a->bundle, "bundle directory (amalgam mass build)")->required();
  cmd->add_option("--task", a->tasks, "task directory (repeat for several)")->required();
  cmd->add_option("--split", a->split, "split to evaluate (default test)");
  cmd->add_option("--route", a->route, "routing decision per image (sample) or per batch from mean residuals (batch)")
      ->check(CLI::IsMember({"sample", "batch"}));
  cmd->add_option("--head-rule", a->head_rule,
                  "true: the task's own head; max-logit: the selected head with the largest logit; router: the "
                  "top-routed task's head (default true)")
      ->check(CLI::IsMember({"true", "max-logit", "router"}));
  cmd->add_option("--batch-size", a->options.batch_size, "images per forward (default 32)")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--max-examples", a->options.max_examples, "evaluate a seeded sample of this many (default all)")
      ->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--seed", a->options.seed, "seed of the sample")->check(non_negative_number());
  cmd->add_option("--cache-models", a->cache_models, "second-pass models kept in memory (default 4)")
      ->check(CLI::Range(1, 1 << 20));
  a->router.add_options(*cmd);
  cmd->add_flag("--residual-table", a->residual_table,
                "print the mean residual of every evaluated task's inputs to every task's subspace");
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->add_flag("-q,--quiet", a->options.quiet, "no progress bar");
  cmd->callback([a] {
    a->options.scope = parse_scope(a->route);
    a->options.head_rule = parse_head_rule(a->head_rule);
    mass::MassRuntime runtime(a->bundle, a->cache_models);
    a->router.apply(runtime);
    std::vector<mass::MassEvalResult> results;
    mass::MassLatency latency;  // over every task
    for (const std::string& dir : a->tasks) {
      const TaskInfo task = read_task_info(dir);
      const TaskSplit split = load_split(dir, task, a->split);
      results.push_back(mass::evaluate_mass(runtime, task, split, a->options));
      latency += results.back().latency;
      if (!a->json) print_result(results.back());
    }
    const mass::BundleSizes& s = runtime.info().sizes;
    if (a->json) {
      nlohmann::ordered_json out = nlohmann::ordered_json::array();
      for (const auto& r : results) out.push_back(r.to_json(runtime.info().tasks));
      std::cout << nlohmann::ordered_json{{"bundle", a->bundle},
                                          {"router", runtime.router().to_json()},
                                          {"sizes", s.to_json()},
                                          {"bundle_to_base",
                                           s.base ? static_cast<double>(s.bundle()) / static_cast<double>(s.base)
                                                  : 0.0},
                                          {"batch_size", a->options.batch_size},
                                          {"models_built", runtime.models_built()},
                                          {"latency", latency.to_json()},
                                          {"results", out}}
                       .dump(2)
                << "\n";
      return;
    }
    print_latency(latency, a->options.batch_size);
    if (a->residual_table) print_residual_table(results, runtime.info().tasks);
    std::printf("bundle: base %s, bundle %s (%s base; factors %s), %zu fine-tunes %s; %zu models built\n",
                human_bytes(static_cast<double>(s.base)).c_str(), human_bytes(static_cast<double>(s.bundle())).c_str(),
                ratio(s.bundle(), s.base).c_str(), ratio(s.factors, s.base).c_str(), runtime.info().tasks.size(),
                human_bytes(static_cast<double>(s.all_finetunes)).c_str(), runtime.models_built());
  });
}

// The images `mass predict` classifies: a task split, or a safetensors file with `images`
// (U8 [N, H, W, C]) and optionally `labels` (I64 [N]).
struct PredictInput {
  TaskInfo task;  // name and image shape (and classes, for a task directory)
  TaskSplit split;
  bool labelled = false;
  bool known_task = false;  // a task directory: the bundle may know its name
};

PredictInput load_predict_input(const std::string& task_dir, const std::string& images, const std::string& split) {
  PredictInput in;
  if (!task_dir.empty()) {
    in.task = read_task_info(task_dir);
    in.split = load_split(task_dir, in.task, split);
    in.labelled = in.known_task = true;
    return in;
  }
  const SafetensorsReader reader(images);
  in.split.name = fs::path(images).stem().string();
  in.split.images = reader.tensor("images");
  const Tensor& img = in.split.images;
  if (img.dtype() != DType::U8 || img.rank() != 4)
    throw InputError(
        images, "images",
        "expected U8 [N, H, W, C], got " + std::string(dtype_name(img.dtype())) + " " + shape_to_string(img.shape()));
  in.task.name = in.split.name;
  in.task.image = {img.dim(1), img.dim(2), img.dim(3)};
  if (reader.contains("labels")) {
    const Tensor labels = reader.tensor("labels");
    if (labels.dtype() != DType::I64 || labels.rank() != 1 || labels.dim(0) != img.dim(0))
      throw InputError(images, "labels", "expected I64 [" + std::to_string(img.dim(0)) + "]");
    in.split.labels.assign(labels.data<int64_t>().begin(), labels.data<int64_t>().end());
    in.labelled = true;
  }
  return in;
}

nlohmann::ordered_json prediction_json(int64_t index, const mass::Prediction& p, const mass::MassRuntime& runtime,
                                       const PredictInput& in, std::optional<int64_t> own) {
  const auto& names = runtime.info().tasks;
  nlohmann::ordered_json tasks = nlohmann::ordered_json::array(), probabilities = nlohmann::ordered_json::object();
  for (int64_t t : p.route.tasks) tasks.push_back(names[static_cast<size_t>(t)]);
  for (size_t t = 0; t < names.size(); ++t) probabilities[names[t]] = p.route.probabilities[t];
  nlohmann::ordered_json j = {{"index", index},
                              {"tasks", tasks},
                              {"top", names[static_cast<size_t>(p.route.top)]},
                              {"probabilities", probabilities},
                              {"head", names[static_cast<size_t>(p.head)]},
                              {"class", p.label},
                              {"logit", p.logit}};
  // Class names are known when the head that predicted is the task directory's own.
  if (own && p.head == *own && p.label < in.task.num_classes())
    j["class_name"] = in.task.classes[static_cast<size_t>(p.label)];
  if (in.labelled) j["label"] = in.split.labels[static_cast<size_t>(index)];
  return j;
}

// An earlier `mass predict -o` output (what --force may replace): its first line is one of
// prediction_json's objects.
bool is_prediction_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) return false;
  const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("index") && j.contains("probabilities") && j.contains("head");
}

void add_mass_predict_command(CLI::App& mass) {
  auto* cmd = mass.add_subcommand("predict", "Route and classify images with a MASS bundle, one JSON line per image");
  struct Args {
    std::string bundle, task, images, split = "test", output, route = "sample", head_rule = "max-logit";
    int64_t batch_size = 32, max_examples = 0;
    uint64_t seed = 0;
    RouterOverrides router;
    size_t cache_models = 4;
    bool force = false, quiet = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("bundle", a->bundle, "bundle directory (amalgam mass build)")->required();
  auto* task = cmd->add_option("--task", a->task, "task directory whose split to classify");
  auto* images = cmd->add_option("--images", a->images,
                                 "safetensors file with images (U8 [N, H, W, C]) and optional labels (I64 [N])");
  task->excludes(images);
  cmd->add_option("--split", a->split, "split of --task (default test)");
  cmd->add_option("-o,--output", a->output, "write the JSON lines here instead of stdout");
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->add_option("--route", a->route, "routing decision per image (sample) or per batch (batch)")
      ->check(CLI::IsMember({"sample", "batch"}));
  cmd->add_option("--head-rule", a->head_rule,
                  "max-logit (default): the selected head with the largest logit; router: the top route's head; "
                  "true: the --task's own head")
      ->check(CLI::IsMember({"true", "max-logit", "router"}));
  cmd->add_option("--batch-size", a->batch_size, "images per forward (default 32)")->check(CLI::Range(1, 65536));
  cmd->add_option("--max-examples", a->max_examples, "classify a seeded sample of this many (default all)")
      ->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--seed", a->seed, "seed of the sample")->check(non_negative_number());
  cmd->add_option("--cache-models", a->cache_models, "second-pass models kept in memory (default 4)")
      ->check(CLI::Range(1, 1 << 20));
  a->router.add_options(*cmd);
  cmd->add_flag("-q,--quiet", a->quiet, "no progress or summary");
  cmd->callback([a] {
    if (a->task.empty() == a->images.empty()) throw InputError("mass predict: give --task DIR or --images FILE");
    mass::MassRuntime runtime(a->bundle, a->cache_models);
    a->router.apply(runtime);
    const PredictInput in = load_predict_input(a->task, a->images, a->split);
    mass::check_images(runtime, in.task);
    const std::optional<int64_t> own = in.known_task ? runtime.task_index(in.task.name) : std::nullopt;
    const mass::HeadRule rule = parse_head_rule(a->head_rule);
    if (rule == mass::HeadRule::True && !own)
      throw InputError("mass predict: --head-rule true needs a --task that is one of the bundle's tasks");
    std::optional<AtomicOutput> output;
    std::ofstream file;
    if (!a->output.empty()) {
      output.emplace(a->output, a->force, AtomicOutput::Kind::File, is_prediction_file);
      file.open(output->staging());
      if (!file) throw std::runtime_error("cannot write " + output->staging().string());
    }
    std::ostream& out = output ? static_cast<std::ostream&>(file) : std::cout;
    const auto indices = a->max_examples > 0 ? sample_indices(in.split.size(), a->max_examples, a->seed)
                                             : sample_indices(in.split.size(), in.split.size(), 0);
    const auto n = static_cast<int64_t>(indices.size());
    Progress progress("mass predict", static_cast<uint64_t>(n), 0, a->quiet, "images");
    mass::MassLatency latency;
    int64_t correct = 0;
    for (int64_t begin = 0; begin < n; begin += a->batch_size) {
      check_interrupt();
      const auto batch = std::span<const int64_t>(indices).subspan(
          static_cast<size_t>(begin), static_cast<size_t>(std::min(a->batch_size, n - begin)));
      const auto count = static_cast<int64_t>(batch.size());
      const auto pixels =
          preprocess_batch(in.split.images, batch, runtime.preprocess(), runtime.image_input().channels);
      const mass::RoutedBatch b =
          mass::run_routed_batch(runtime, pixels, count, parse_scope(a->route), rule, own, latency);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t index = batch[static_cast<size_t>(i)];
        const mass::Prediction& p = b.predictions[static_cast<size_t>(i)];
        out << prediction_json(index, p, runtime, in, own).dump() << "\n";
        if (own && in.labelled && p.head == *own && p.label == in.split.labels[static_cast<size_t>(index)]) ++correct;
      }
      progress.advance(batch.size(), 0);
    }
    if (output) {
      file.close();
      if (!file) throw std::runtime_error("cannot write " + output->staging().string());
      output->commit();
    }
    if (a->quiet) return;
    std::fprintf(stderr, "amalgam: mass predict: %lld images, head rule %s, %.3f ms/image", static_cast<long long>(n),
                 a->head_rule.c_str(), 1e3 * latency.per_image());
    if (own && in.labelled)
      std::fprintf(stderr, ", accuracy %.2f%% (right head and class)",
                   n ? 100.0 * static_cast<double>(correct) / static_cast<double>(n) : 0.0);
    std::fprintf(stderr, "\n");
  });
}

}  // namespace

void add_mass_command(CLI::App& app) {
  auto* mass =
      app.add_subcommand("mass", "MASS: routed merging through low-rank task subspaces (build, eval, predict)");
  mass->require_subcommand(1);
  add_mass_build_command(*mass);
  add_mass_eval_command(*mass);
  add_mass_predict_command(*mass);
}

}  // namespace amalgam::cli
