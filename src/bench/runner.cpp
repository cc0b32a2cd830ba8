#include "bench/runner.h"

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <fstream>

#include "core/error.h"
#include "core/interrupt.h"
#include "eval/evaluate.h"
#include "io/json_file.h"
#include "model/model.h"

namespace amalgam {

namespace fs = std::filesystem;

nlohmann::ordered_json to_json(const BenchParams& params) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [name, value] : params) j[name] = value;
  return j;
}

std::string describe(const BenchParams& params) {
  if (params.empty()) return "defaults";
  std::string s;
  for (const auto& [name, value] : params) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%s=%g", s.empty() ? "" : " ", name.c_str(), value);
    s += buf;
  }
  return s;
}

namespace {

// Every combination of the values, the first parameter varying slowest.
std::vector<BenchParams> grid_of(const std::vector<std::pair<std::string, std::vector<double>>>& axes) {
  std::vector<BenchParams> grid{{}};
  for (const auto& [name, values] : axes) {
    std::vector<BenchParams> next;
    for (const BenchParams& point : grid)
      for (double v : values) {
        BenchParams p = point;
        p.emplace_back(name, v);
        next.push_back(std::move(p));
      }
    grid = std::move(next);
  }
  return grid;
}

}  // namespace

std::vector<BenchMethod> bench_methods(bool quick) {
  // The grids span each paper's recommended value (task arithmetic 0.3, TIES 1.0 at density
  // 0.2, TSV-M 1.0, RegMean 0.95) and a few either side of it.
  std::vector<BenchMethod> methods = {
      {"linear", "simple average", Calibration::None, {{}}},
      {"task_arithmetic", "task arithmetic", Calibration::None, grid_of({{"lambda", {0.1, 0.2, 0.3, 0.5, 0.7, 1.0}}})},
      {"ties", "TIES", Calibration::None, grid_of({{"density", {0.1, 0.2}}, {"lambda", {0.3, 0.6, 1.0}}})},
      {"dare_ties", "DARE-TIES", Calibration::None, grid_of({{"density", {0.2, 0.4}}, {"lambda", {0.3, 0.6, 1.0}}})},
      {"tsv", "TSV-M", Calibration::None, grid_of({{"alpha", {0.5, 1.0, 1.5}}}), false},
      {"regmean", "RegMean", Calibration::Stats, grid_of({{"alpha", {0.5, 0.8, 0.95}}})},
      {"regmean_plusplus", "RegMean++", Calibration::Data, grid_of({{"alpha", {0.5, 0.8, 0.95}}})},
  };
  if (quick)
    for (BenchMethod& m : methods)
      if (m.grid.size() > 2) m.grid = {m.grid.front(), m.grid.back()};
  return methods;
}

double mean_of(const Scores& scores, const std::vector<std::string>& tasks) {
  double sum = 0;
  for (const std::string& t : tasks) sum += scores.at(t);
  return tasks.empty() ? 0 : sum / static_cast<double>(tasks.size());
}

nlohmann::ordered_json to_json(const ChildUsage& usage) {
  return {{"wall_seconds", usage.wall_seconds},
          {"cpu_seconds", usage.cpu_seconds},
          {"peak_rss_bytes", usage.peak_rss_bytes}};
}

ChildUsage combine(const std::vector<ChildUsage>& usages) {
  ChildUsage all;
  all.exit_code = 0;
  for (const ChildUsage& u : usages) {
    all.wall_seconds += u.wall_seconds;
    all.cpu_seconds += u.cpu_seconds;
    all.peak_rss_bytes = std::max(all.peak_rss_bytes, u.peak_rss_bytes);
  }
  return all;
}

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<std::string> zoo_tasks(const fs::path& zoo) {
  const fs::path file = zoo / "zoo.json";
  const nlohmann::json j = read_json_file(file);
  if (!j.contains("tasks") || !j["tasks"].is_array() || j["tasks"].empty())
    throw InputError(file.string() + ": no \"tasks\" list; is this a zoo (amalgam zoo build)?");
  std::vector<std::string> tasks;
  for (const auto& t : j["tasks"]) {
    if (!t.contains("task") || !t["task"].is_string()) throw InputError(file.string() + ": a task without \"task\"");
    tasks.push_back(t["task"].get<std::string>());
  }
  return tasks;
}

// A YAML scalar for a path: JSON's quoting is valid YAML and survives any character.
std::string quoted(const fs::path& p) {
  return nlohmann::json(p.string()).dump();
}

// The config of one merge, written into `config_dir`. Paths inside `work` (statistics,
// earlier merges) are written relative to the config, where they resolve, so that
// work/configs still rerun once the report is renamed into place.
std::string merge_yaml(const BenchMethod& method, const BenchParams& params, const fs::path& base,
                       const std::vector<BenchCandidate>& candidates, const BenchSettings& settings,
                       const fs::path& work, const fs::path& config_dir) {
  const auto path = [&](const fs::path& p) {
    const fs::path inside = p.lexically_relative(work);
    const bool in_work = !inside.empty() && *inside.begin() != "..";
    return quoted(in_work ? p.lexically_relative(config_dir) : p);
  };
  std::string y = "merge_method: " + method.key + "\nbase_model: " + quoted(base) + "\n";
  y += "seed: " + std::to_string(settings.seed) + "\n";
  BenchParams all = params;
  if (method.calibration == Calibration::Data)
    all.emplace_back("examples", static_cast<double>(settings.calibration_examples));
  if (!all.empty()) y += "parameters:\n";
  for (const auto& [name, value] : all) y += "  " + name + ": " + nlohmann::json(value).dump() + "\n";
  y += "models:\n";
  for (const BenchCandidate& c : candidates) {
    y += "  - model: " + path(c.model) + "\n";
    if (method.weighted) y += "    parameters: {weight: " + nlohmann::json(c.weight).dump() + "}\n";
    if (!c.stats.empty()) y += "    stats: " + path(c.stats) + "\n";
    if (c.data.size() == 1) y += "    data: " + quoted(c.data.front()) + "\n";
    if (c.data.size() > 1) {
      y += "    data:\n";
      for (const fs::path& d : c.data) y += "      - " + quoted(d) + "\n";
    }
  }
  return y;
}

}  // namespace

BenchRunner::BenchRunner(const fs::path& zoo, const fs::path& work, const BenchSettings& settings)
    : zoo_(fs::absolute(zoo)), work_(fs::absolute(work)), settings_(settings), start_(now_seconds()) {
  tasks_ = zoo_tasks(zoo_);
  for (const char* sub : {"configs", "logs", "models", "stats"}) fs::create_directories(work_ / sub);
  preprocess_ = load_image_processor_config(base());
  if (fs::exists(zoo_ / "zoo.json"))
    zero_shot_heads_ =
        read_json_file(zoo_ / "zoo.json").value("options", nlohmann::json::object()).value("heads", "") == "prototype";
  for (const std::string& t : tasks_) {
    infos_.emplace(t, read_task_info(task_dir(t)));
    heads_.emplace(t, ClassifierHead::load(head_file(t)));
    if (const fs::path probe = zoo_ / "probes" / (t + ".safetensors"); fs::exists(probe))
      probes_.emplace(t, ClassifierHead::load(probe));
    for (const char* which : {"val", "test"}) splits_[t].emplace(which, load_split(task_dir(t), infos_.at(t), which));
  }
}

fs::path BenchRunner::head_file(const std::string& task) const {
  return zoo_ / "heads" / (task + ".safetensors");
}

const TaskSplit& BenchRunner::split(const std::string& task, const std::string& which) const {
  return splits_.at(task).at(which);
}

BenchCandidate BenchRunner::candidate(const std::string& task, const BenchMethod& method) {
  BenchCandidate c;
  c.model = finetuned(task);
  if (method.calibration == Calibration::Data) c.data = {task_dir(task)};
  if (method.calibration == Calibration::Stats) c.stats = statistics(task).first;
  return c;
}

ChildUsage BenchRunner::run_amalgam(const std::string& name, std::vector<std::string> args) {
  check_interrupt();
  args.insert(args.begin(), self_executable().string());
  const fs::path log = work_ / "logs" / (name + ".log");
  const ChildUsage usage = run_child(args, log);
  if (usage.exit_code != 0) {
    std::string last;  // the child's own one-line error, usually
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) last = line;
    throw InputError("bench: `amalgam " + args[1] + "` for " + name + " failed (exit " +
                     std::to_string(usage.exit_code) + "): " + last + " (log: " + log.string() + ")");
  }
  return usage;
}

BenchRunner::Merged BenchRunner::merge(const std::string& name, const BenchMethod& method, const BenchParams& params,
                                       const std::vector<BenchCandidate>& candidates, bool audit) {
  const fs::path config = work_ / "configs" / (name + ".yaml");
  {
    std::ofstream out(config, std::ios::trunc);
    out << merge_yaml(method, params, base(), candidates, settings_, work_, config.parent_path());
    if (!out) throw InputError(config.string() + ": cannot write");
  }
  Merged m;
  m.model = work_ / "models" / name;
  std::vector<std::string> args = {"merge", config.string(), "-o", m.model.string(), "--force", "-q"};
  if (!audit) args.push_back("--no-audit");
  m.usage = run_amalgam(name, args);
  return m;
}

std::pair<fs::path, ChildUsage> BenchRunner::statistics(const std::string& task) {
  if (auto it = stats_.find(task); it != stats_.end()) return it->second;
  const fs::path file = work_ / "stats" / (task + ".safetensors");
  const ChildUsage usage =
      run_amalgam("stats_" + task, {"stats", finetuned(task).string(), "--data", task_dir(task).string(), "--examples",
                                    std::to_string(settings_.calibration_examples), "--seed",
                                    std::to_string(settings_.seed), "-o", file.string(), "--force", "-q"});
  return stats_[task] = {file, usage};
}

Scores BenchRunner::accuracy(const fs::path& model, const std::vector<std::string>& tasks, const std::string& which,
                             int64_t max_examples) const {
  const std::unique_ptr<Model> encoder = open_model(model);
  Scores scores;
  for (const std::string& t : tasks) scores[t] = accuracy(*encoder, t, split(t, which), max_examples);
  return scores;
}

double BenchRunner::accuracy(const Model& encoder, const std::string& task, const TaskSplit& split,
                             int64_t max_examples) const {
  return accuracy_through(encoder, task, split, heads_.at(task), max_examples);
}

Scores BenchRunner::probe_accuracy(const std::vector<std::string>& tasks, const std::string& which,
                                   int64_t max_examples) const {
  const std::unique_ptr<Model> encoder = open_model(base());
  Scores scores;
  for (const std::string& t : tasks)
    scores[t] = accuracy_through(*encoder, t, split(t, which), probes_.at(t), max_examples);
  return scores;
}

double BenchRunner::accuracy_through(const Model& encoder, const std::string& task, const TaskSplit& split,
                                     const ClassifierHead& head, int64_t max_examples) const {
  check_interrupt();
  EvalOptions options;
  options.batch_size = settings_.batch_size;
  options.max_examples = max_examples;
  options.seed = settings_.seed;
  options.quiet = true;
  return 100.0 * evaluate(encoder, preprocess_, infos_.at(task), split, head, options).accuracy;
}

void BenchRunner::say(const char* format, ...) const {
  if (settings_.quiet) return;
  std::fprintf(stderr, "bench [%6.0f s] ", now_seconds() - start_);
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fputc('\n', stderr);
}

}  // namespace amalgam
