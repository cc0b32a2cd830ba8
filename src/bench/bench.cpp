#include "bench/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <functional>
#include <optional>
#include <set>

#include "bench/report.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "io/atomic_output.h"
#include "io/run_inputs.h"
#include "mass/mass_eval.h"
#include "mass/routed_model.h"
#include "merge/audit.h"
#include "zoo/corruptions.h"

namespace amalgam {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

BenchOptions BenchOptions::preset(bool quick) {
  BenchOptions o;
  o.quick = quick;
  if (!quick) return o;
  o.settings.calibration_examples = 64;
  o.settings.validation_examples = 100;
  o.settings.test_examples = 200;
  o.sample_examples = 100;
  o.corruption_examples = 50;
  o.unseen_splits = 1;
  o.sequential_orders = 1;
  o.subsets_per_size = 1;
  return o;
}

namespace {

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

json scores_json(const Scores& scores, const std::vector<std::string>& tasks) {
  json j = json::object();
  for (const std::string& t : tasks) j[t] = scores.at(t);
  return j;
}

// The first `count` tasks of a seeded permutation of `tasks`.
std::vector<std::string> seeded_order(const std::vector<std::string>& tasks, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<std::string> order;
  for (int64_t i : permutation(static_cast<int64_t>(tasks.size()), rng)) order.push_back(tasks[static_cast<size_t>(i)]);
  return order;
}

class Bench {
 public:
  Bench(const BenchOptions& options, const fs::path& staging)
      : options_(options),
        runner_(options.zoo, staging / "work", options.settings),
        methods_(bench_methods(options.quick)) {}

  json run() {
    const auto start = std::chrono::steady_clock::now();
    const auto wanted = [&](const std::string& e) {
      return options_.experiments.empty() ||
             std::find(options_.experiments.begin(), options_.experiments.end(), e) != options_.experiments.end();
    };
    json report = header();
    reference();
    report["in_domain"] = in_domain();  // every other experiment uses the hyperparameters it chose
    report["unseen"] = wanted("unseen") ? unseen() : json();
    report["corruptions"] = wanted("corruptions") ? corruptions() : json();
    report["sequential"] = wanted("sequential") ? sequential() : json();
    report["num_tasks"] = wanted("num_tasks") ? num_tasks() : json();
    report["cost"] = cost();
    report["audit"] = audit();
    report["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  }

  // The in-domain experiment alone, on another seed's zoo.
  json in_domain_alone() {
    reference();
    return in_domain();
  }

 private:
  const std::vector<std::string>& tasks() const { return runner_.tasks(); }
  const BenchSettings& settings() const { return options_.settings; }

  json header() const {
    json methods = json::array();
    // With zero-shot-like heads the base is the papers' zero-shot row, and the probes are the
    // ceiling of its features; with probe heads (zoos before class prototypes) they are one row.
    methods.push_back({{"key", "base"},
                       {"label", runner_.zero_shot_heads() ? "base (zero-shot-like heads)" : "base + probe heads"},
                       {"kind", "reference"}});
    if (runner_.has_probe_ceiling())
      methods.push_back(
          {{"key", "probe_ceiling"}, {"label", "linear-probe ceiling (base + probes)"}, {"kind", "reference"}});
    methods.push_back({{"key", "finetuned"}, {"label", "fine-tuned (individual)"}, {"kind", "reference"}});
    for (const BenchMethod& m : methods_)
      methods.push_back({{"key", m.key},
                         {"label", m.label},
                         {"kind", m.calibration == Calibration::None ? "data-free" : "data-aware"}});
    methods.push_back({{"key", "mass_sample"}, {"label", "MASS (per-sample routing)"}, {"kind", "routed"}});
    methods.push_back({{"key", "mass_batch"}, {"label", "MASS (batch routing)"}, {"kind", "routed"}});
    const BenchSettings& s = settings();
    return {{"format", "amalgam-bench-report"},
            {"version", 1},
            {"date", utc_now()},
            {"command", options_.command},
            {"zoo", fs::absolute(options_.zoo).string()},
            {"quick", options_.quick},
            {"seconds", 0.0},
            {"settings",
             {{"seed", s.seed},
              {"threads", num_threads()},
              {"calibration_examples", s.calibration_examples},
              {"validation_examples_per_task", s.validation_examples},
              {"test_examples_per_task", s.test_examples},
              {"sample_examples_per_task", options_.sample_examples},
              {"corruption_severity", options_.corruption_severity},
              {"corruption_examples_per_task", options_.corruption_examples}}},
            {"tasks", tasks()},
            {"methods", methods}};
  }

  // Base and fine-tunes on the in-domain test images and on the smaller sample the other
  // experiments use: the denominators of normalized accuracy.
  void reference() {
    runner_.say("reference: base and fine-tunes on %zu tasks", tasks().size());
    base_ = runner_.accuracy(runner_.base(), tasks(), "test", settings().test_examples);
    base_sample_ = runner_.accuracy(runner_.base(), tasks(), "test", options_.sample_examples);
    for (const std::string& t : tasks()) {
      finetuned_[t] = runner_.accuracy(runner_.finetuned(t), {t}, "test", settings().test_examples).at(t);
      finetuned_sample_[t] = runner_.accuracy(runner_.finetuned(t), {t}, "test", options_.sample_examples).at(t);
    }
  }

  double normalized(const Scores& scores, const std::vector<std::string>& subset, bool sample) const {
    const Scores& ft = sample ? finetuned_sample_ : finetuned_;
    double sum = 0;
    for (const std::string& t : subset) sum += 100.0 * scores.at(t) / std::max(ft.at(t), 1e-9);
    return sum / static_cast<double>(subset.size());
  }

  json accuracy_row(const std::string& key, const json& parameters, const Scores& scores) const {
    return {{"method", key},
            {"parameters", parameters},
            {"accuracy", scores_json(scores, tasks())},
            {"average", mean_of(scores, tasks())},
            {"normalized_average", normalized(scores, tasks(), false)}};
  }

  std::vector<BenchCandidate> candidates(const std::vector<std::string>& subset, const BenchMethod& method) {
    std::vector<BenchCandidate> c;
    for (const std::string& t : subset) c.push_back(runner_.candidate(t, method));
    return c;
  }

  // Experiment 1: choose on validation, report on test.
  json in_domain() {
    json rows = json::array(), validation = json::array();
    rows.push_back(accuracy_row("base", json::object(), base_));
    if (runner_.has_probe_ceiling())
      rows.push_back(accuracy_row("probe_ceiling", json::object(),
                                  runner_.probe_accuracy(tasks(), "test", settings().test_examples)));
    rows.push_back(accuracy_row("finetuned", json::object(), finetuned_));
    for (const BenchMethod& m : methods_) {
      size_t best = 0;
      double best_average = -1;
      std::vector<json> points;
      for (size_t i = 0; i < m.grid.size() && m.grid.size() > 1; ++i) {
        const auto merged = runner_.merge(m.key + "_grid" + std::to_string(i), m, m.grid[i], candidates(tasks(), m));
        const double average =
            mean_of(runner_.accuracy(merged.model, tasks(), "val", settings().validation_examples), tasks());
        runner_.say("in-domain: %s %s: validation %.2f%%", m.key.c_str(), describe(m.grid[i]).c_str(), average);
        fs::remove_all(merged.model);
        if (average > best_average) best = i, best_average = average;
        points.push_back({{"method", m.key}, {"parameters", to_json(m.grid[i])}, {"average", average}});
      }
      for (size_t i = 0; i < points.size(); ++i) {
        points[i]["chosen"] = i == best;
        validation.push_back(points[i]);
      }
      chosen_[m.key] = m.grid[best];
      const auto merged = runner_.merge(m.key, m, m.grid[best], candidates(tasks(), m));
      merge_cost_[m.key] = merged.usage;
      models_[m.key] = merged.model;
      const Scores test = runner_.accuracy(merged.model, tasks(), "test", settings().test_examples);
      runner_.say("in-domain: %s %s: test %.2f%% (merge %.1f s)", m.key.c_str(), describe(m.grid[best]).c_str(),
                  mean_of(test, tasks()), merged.usage.wall_seconds);
      rows.push_back(accuracy_row(m.key, to_json(m.grid[best]), test));
    }
    for (const mass::RouteScope scope : {mass::RouteScope::Sample, mass::RouteScope::Batch}) {
      const Scores test = mass_scores(
          scope, tasks(), [&](const std::string& t) -> const TaskSplit& { return test_split(t); },
          settings().test_examples, &mass_latency_[mass_key(scope)]);
      runner_.say("in-domain: %s: test %.2f%%", mass_key(scope).c_str(), mean_of(test, tasks()));
      rows.push_back(accuracy_row(mass_key(scope), json::object(), test));
    }
    return {{"rows", rows}, {"validation", validation}};
  }

  static std::string mass_key(mass::RouteScope scope) {
    return scope == mass::RouteScope::Sample ? "mass_sample" : "mass_batch";
  }

  mass::MassRuntime& mass_runtime() {
    if (mass_) return *mass_;
    const fs::path config = runner_.work() / "configs" / "mass.yaml";
    {
      std::ofstream out(config, std::ios::trunc);
      out << "base_model: " << nlohmann::json(runner_.base().string()).dump() << "\nmodels:\n";
      for (const std::string& t : tasks())
        out << "  - {model: " << nlohmann::json(runner_.finetuned(t).string()).dump()
            << ", head: " << nlohmann::json(runner_.head_file(t).string()).dump() << "}\n";
    }
    const fs::path bundle = runner_.work() / "models" / "mass";
    merge_cost_["mass"] = runner_.run_amalgam(
        "mass", {"mass", "build", config.string(), "-o", bundle.string(), "--force", "-q", "--no-audit"});
    mass_.emplace(bundle);
    return *mass_;
  }

  // MASS's routed accuracy on a seeded sample of `max_examples` of each task's split_of(task);
  // each task's latency is appended to `latency` when given.
  Scores mass_scores(mass::RouteScope scope, const std::vector<std::string>& subset,
                     const std::function<const TaskSplit&(const std::string&)>& split_of, int64_t max_examples,
                     std::vector<mass::MassLatency>* latency = nullptr) {
    mass::MassRuntime& runtime = mass_runtime();
    mass::MassEvalOptions options;
    options.batch_size = settings().batch_size;
    options.seed = settings().seed;
    options.scope = scope;
    options.quiet = true;
    options.max_examples = max_examples;
    Scores scores;
    for (const std::string& t : subset) {
      check_interrupt();
      const mass::MassEvalResult r = mass::evaluate_mass(runtime, runner_.task_info(t), split_of(t), options);
      scores[t] = 100.0 * r.accuracy;
      if (latency) latency->push_back(r.latency);
    }
    return scores;
  }

  const TaskSplit& test_split(const std::string& task) const { return runner_.split(task, "test"); }

  // Experiment 2: merge all tasks but a held-out pair; the pair through the merged encoder.
  json unseen() {
    json splits = json::array();
    std::set<std::vector<std::string>> pairs;
    for (uint64_t attempt = 0; static_cast<int>(pairs.size()) < options_.unseen_splits && attempt < 100; ++attempt) {
      std::vector<std::string> order = seeded_order(tasks(), settings().seed + 1000 + attempt);
      std::vector<std::string> held(order.end() - 2, order.end());
      std::sort(held.begin(), held.end());
      if (!pairs.insert(held).second) continue;
      const std::vector<std::string> merged(order.begin(), order.end() - 2);
      json rows = json::array();
      const auto row = [&](const std::string& key, const Scores& s) {
        json acc = json::object();
        for (const std::string& t : held) acc[t] = s.at(t);
        rows.push_back(
            {{"method", key},
             {"accuracy", acc},
             {"held_out_average", mean_of(s, held)},
             {"merged_average", merged.empty() || !s.count(merged.front()) ? json() : json(mean_of(s, merged))}});
      };
      row("base", base_sample_);
      for (const BenchMethod& m : methods_) {
        const auto out = runner_.merge(m.key + "_unseen" + std::to_string(pairs.size()), m, chosen_.at(m.key),
                                       candidates(merged, m));
        const Scores s = runner_.accuracy(out.model, tasks(), "test", options_.sample_examples);
        fs::remove_all(out.model);
        runner_.say("unseen %s+%s: %s: held out %.2f%%, merged %.2f%%", held[0].c_str(), held[1].c_str(), m.key.c_str(),
                    mean_of(s, held), mean_of(s, merged));
        row(m.key, s);
      }
      splits.push_back({{"merged", merged}, {"held_out", held}, {"rows", rows}});
    }
    return {{"splits", splits}};
  }

  // The four tasks of the corruption experiment: the zoo's first four (its real images).
  std::vector<std::string> corruption_tasks() const {
    return {tasks().begin(), tasks().begin() + std::min<ptrdiff_t>(4, static_cast<ptrdiff_t>(tasks().size()))};
  }

  const TaskSplit& corrupted(const std::string& task, Corruption c) {
    const std::string key = task + "/" + std::string(corruption_name(c));
    auto it = corrupted_.find(key);
    if (it == corrupted_.end())
      it = corrupted_
               .emplace(key,
                        corrupt_split(runner_.split(task, "test"), c, options_.corruption_severity, settings().seed))
               .first;
    return it->second;
  }

  // Experiment 3: every method's accuracy under each corruption.
  json corruptions() {
    const std::vector<std::string> subset = corruption_tasks();
    json names = json::array({"clean"});
    for (Corruption c : kAllCorruptions) names.push_back(corruption_name(c));
    json rows = json::array();
    const auto add_row = [&](const std::string& key, const std::map<std::string, Scores>& by_condition) {
      json acc = json::object(), avg = json::object();
      for (const auto& name : names) {
        const Scores& s = by_condition.at(name.get<std::string>());
        acc[name.get<std::string>()] = scores_json(s, subset);
        avg[name.get<std::string>()] = mean_of(s, subset);
      }
      rows.push_back({{"method", key}, {"accuracy", acc}, {"average", avg}});
      runner_.say("corruptions: %s: clean %.2f%%, corrupted mean %.2f%%", key.c_str(), avg["clean"].get<double>(), [&] {
        double sum = 0;
        for (Corruption c : kAllCorruptions) sum += avg[std::string(corruption_name(c))].get<double>();
        return sum / static_cast<double>(kAllCorruptions.size());
      }());
    };
    // An encoder per task (the fine-tunes) or one for all (the merges).
    const auto encoder_rows = [&](const std::string& key, const std::function<fs::path(const std::string&)>& model_of) {
      std::map<std::string, Scores> by;
      for (const std::string& t : subset) {
        const std::unique_ptr<Model> encoder = open_model(model_of(t));
        by["clean"][t] = runner_.accuracy(*encoder, t, runner_.split(t, "test"), options_.corruption_examples);
        for (Corruption c : kAllCorruptions)
          by[std::string(corruption_name(c))][t] =
              runner_.accuracy(*encoder, t, corrupted(t, c), options_.corruption_examples);
      }
      add_row(key, by);
    };
    encoder_rows("base", [&](const std::string&) { return runner_.base(); });
    encoder_rows("finetuned", [&](const std::string& t) { return runner_.finetuned(t); });
    for (const BenchMethod& m : methods_) encoder_rows(m.key, [&](const std::string&) { return models_.at(m.key); });
    for (const mass::RouteScope scope : {mass::RouteScope::Sample, mass::RouteScope::Batch}) {
      std::map<std::string, Scores> by;
      by["clean"] = mass_scores(
          scope, subset, [&](const std::string& t) -> const TaskSplit& { return test_split(t); },
          options_.corruption_examples);
      for (Corruption c : kAllCorruptions)
        by[std::string(corruption_name(c))] = mass_scores(
            scope, subset, [&](const std::string& t) -> const TaskSplit& { return corrupted(t, c); },
            options_.corruption_examples);
      add_row(mass_key(scope), by);
    }
    return {{"severity", options_.corruption_severity}, {"tasks", subset}, {"corruptions", names}, {"rows", rows}};
  }

  // Experiment 4: two tasks at a time; the previous merge is one candidate of the next.
  json sequential() {
    const size_t group = 2;
    json orders = json::array(), rows = json::array();
    std::vector<std::vector<std::string>> order_list;
    for (int o = 0; o < options_.sequential_orders; ++o) {
      order_list.push_back(seeded_order(tasks(), settings().seed + 2000 + static_cast<uint64_t>(o)));
      orders.push_back(order_list.back());
    }
    for (const std::string key : {"task_arithmetic", "tsv", "regmean", "regmean_plusplus"}) {
      const BenchMethod& m = method(key);
      std::vector<std::vector<double>> curves;
      std::vector<int64_t> seen_counts;
      for (size_t o = 0; o < order_list.size(); ++o) {
        const std::vector<std::string>& order = order_list[o];
        std::vector<double> curve;
        std::optional<fs::path> previous;
        seen_counts.clear();
        for (size_t held = 0; held < order.size();) {
          const size_t seen = std::min(held + group, order.size());
          const std::vector<std::string> so_far(order.begin(), order.begin() + static_cast<ptrdiff_t>(seen));
          std::vector<BenchCandidate> c;
          if (previous)
            c.push_back(carried(*previous, m, {order.begin(), order.begin() + static_cast<ptrdiff_t>(held)}));
          for (size_t i = held; i < seen; ++i) c.push_back(runner_.candidate(order[i], m));
          const auto out =
              runner_.merge(key + "_seq" + std::to_string(o) + "_" + std::to_string(seen), m, chosen_.at(key), c);
          curve.push_back(
              normalized(runner_.accuracy(out.model, so_far, "test", options_.sample_examples), so_far, true));
          runner_.say("sequential order %zu: %s after %zu tasks: normalized %.2f%%", o, key.c_str(), seen,
                      curve.back());
          if (previous) fs::remove_all(*previous);
          previous = out.model;
          seen_counts.push_back(static_cast<int64_t>(seen));
          held = seen;
        }
        if (previous) fs::remove_all(*previous);
        curves.push_back(curve);
      }
      rows.push_back(
          {{"method", key}, {"tasks_seen", seen_counts}, {"normalized", curves}, {"mean", column_means(curves)}});
    }
    return {{"group_size", group}, {"orders", orders}, {"rows", rows}};
  }

  // The earlier merge as a candidate: RegMean's summed statistics (its statistics file holds
  // their mean over the tasks, hence the weight), RegMean++'s equal share of the earlier
  // tasks' calibration examples.
  BenchCandidate carried(const fs::path& previous, const BenchMethod& m, const std::vector<std::string>& earlier) {
    BenchCandidate c;
    c.model = previous;
    if (m.calibration == Calibration::Stats) {
      c.stats = previous / "stats.safetensors";
      c.weight = static_cast<double>(earlier.size());
    }
    if (m.calibration == Calibration::Data)
      for (const std::string& t : earlier) c.data.push_back(runner_.task_dir(t));
    return c;
  }

  static std::vector<double> column_means(const std::vector<std::vector<double>>& rows) {
    std::vector<double> means;
    for (size_t j = 0; !rows.empty() && j < rows.front().size(); ++j) {
      double sum = 0;
      for (const auto& r : rows) sum += r.at(j);
      means.push_back(sum / static_cast<double>(rows.size()));
    }
    return means;
  }

  const BenchMethod& method(const std::string& key) const {
    for (const BenchMethod& m : methods_)
      if (m.key == key) return m;
    throw std::logic_error("bench: no method " + key);
  }

  // Experiment 5: 2, 4, 6, ... tasks.
  json num_tasks() {
    std::vector<int64_t> sizes;
    for (size_t s = 2; s <= tasks().size(); s += 2) sizes.push_back(static_cast<int64_t>(s));
    if (sizes.empty() || sizes.back() != static_cast<int64_t>(tasks().size()))
      sizes.push_back(static_cast<int64_t>(tasks().size()));
    std::vector<std::vector<std::vector<std::string>>> subsets;
    json subsets_json = json::array();
    for (int64_t size : sizes) {
      std::vector<std::vector<std::string>> of_size;
      const int count = size == static_cast<int64_t>(tasks().size()) ? 1 : options_.subsets_per_size;
      for (int j = 0; j < count; ++j) {
        auto order = seeded_order(tasks(), settings().seed + 3000 + 100 * static_cast<uint64_t>(size) + j);
        order.resize(static_cast<size_t>(size));
        of_size.push_back(order);
      }
      subsets.push_back(of_size);
      subsets_json.push_back(of_size);
    }
    json rows = json::array();
    for (const BenchMethod& m : methods_) {
      std::vector<std::vector<double>> per_size;
      std::vector<double> means;
      for (size_t i = 0; i < sizes.size(); ++i) {
        std::vector<double> values;
        for (size_t j = 0; j < subsets[i].size(); ++j) {
          const auto& subset = subsets[i][j];
          const auto out = runner_.merge(m.key + "_n" + std::to_string(sizes[i]) + "_" + std::to_string(j), m,
                                         chosen_.at(m.key), candidates(subset, m));
          values.push_back(
              normalized(runner_.accuracy(out.model, subset, "test", options_.sample_examples), subset, true));
          fs::remove_all(out.model);
        }
        double sum = 0;
        for (double v : values) sum += v;
        means.push_back(sum / static_cast<double>(values.size()));
        per_size.push_back(values);
        runner_.say("number of tasks: %s with %lld tasks: normalized %.2f%%", m.key.c_str(),
                    static_cast<long long>(sizes[i]), means.back());
      }
      rows.push_back({{"method", m.key}, {"normalized", per_size}, {"mean", means}});
    }
    return {{"sizes", sizes}, {"subsets", subsets_json}, {"rows", rows}};
  }

  // Experiment 6, from the runs above: the chosen merges on all tasks, and the statistics
  // RegMean measured for them.
  json cost() {
    json rows = json::array();
    for (const BenchMethod& m : methods_) {
      json stats;
      if (m.calibration == Calibration::Stats) {
        std::vector<ChildUsage> runs;
        for (const std::string& t : tasks()) runs.push_back(runner_.statistics(t).second);
        stats = to_json(combine(runs));
      }
      rows.push_back({{"method", m.key}, {"stats", stats}, {"merge", to_json(merge_cost_.at(m.key))}});
    }
    json mass = json();
    if (mass_) {
      rows.push_back({{"method", "mass_sample"}, {"stats", json()}, {"merge", to_json(merge_cost_.at("mass"))}});
      const mass::BundleSizes& s = mass_->info().sizes;
      json per_image = json::object();
      double merged = 0;
      for (const auto& [key, latencies] : mass_latency_) {
        mass::MassLatency sum;
        for (const auto& l : latencies) sum += l;
        per_image[key == "mass_sample" ? "sample" : "batch"] = sum.per_image();
        merged = sum.merged_per_image();
      }
      mass = {{"bundle_bytes", s.bundle()},
              {"base_bytes", s.base},
              {"bundle_to_base", s.base ? static_cast<double>(s.bundle()) / static_cast<double>(s.base) : 0.0},
              {"seconds_per_image", per_image},
              {"merged_seconds_per_image", merged}};
    }
    return {{"rows", rows}, {"mass", mass}};
  }

  // The closed-form methods' regression residuals, per linear layer and task, from the
  // merge_report.json of the chosen merge run once more with the audit on (the measured
  // merge runs without it).
  json audit() {
    json rows = json::array();
    std::vector<std::string> layers;
    for (const BenchMethod& m : methods_) {
      if (m.calibration == Calibration::None) continue;
      const auto merged = runner_.merge(m.key + "_audit", m, chosen_.at(m.key), candidates(tasks(), m), true);
      const nlohmann::json report = read_merge_report(merged.model);
      fs::remove_all(merged.model);
      json residuals = json::array();
      std::vector<std::string> names;
      for (const auto& t : report["tensors"])
        if (t.contains("relative_residuals")) {
          names.push_back(t["name"].get<std::string>());
          residuals.push_back(t["relative_residuals"].get<std::vector<double>>());
        }
      if (names.empty()) continue;
      if (!layers.empty() && names != layers)
        throw std::logic_error("bench: the closed-form methods solved different layers");
      layers = names;
      rows.push_back({{"method", m.key}, {"relative_residuals", residuals}});
    }
    if (rows.empty()) return json();
    runner_.say("audit: residuals of %zu method(s) over %zu linear layers", rows.size(), layers.size());
    return {{"layers", layers}, {"rows", rows}};
  }

  const BenchOptions& options_;
  BenchRunner runner_;
  std::vector<BenchMethod> methods_;
  Scores base_, base_sample_, finetuned_, finetuned_sample_;
  std::map<std::string, BenchParams> chosen_;
  std::map<std::string, fs::path> models_;  // each method's chosen merge of all tasks
  std::map<std::string, ChildUsage> merge_cost_;
  std::optional<mass::MassRuntime> mass_;
  std::map<std::string, std::vector<mass::MassLatency>> mass_latency_;
  std::map<std::string, TaskSplit> corrupted_;
};

double sample_sd(const std::vector<double>& v) {
  double mean = 0, sum = 0;
  for (double x : v) mean += x / static_cast<double>(v.size());
  for (double x : v) sum += (x - mean) * (x - mean);
  return std::sqrt(sum / static_cast<double>(v.size() - 1));
}

// Every in-domain row becomes the mean of its row over all seeds' zoos (the first zoo's and
// `others`), with each seed's average, their sample standard deviation and each seed's chosen
// hyperparameters.
void add_spread(json& in_domain, const std::vector<json>& others, const std::vector<std::string>& tasks) {
  const size_t seeds = others.size() + 1;
  for (json& row : in_domain["rows"]) {
    const std::string key = row["method"];
    std::vector<const json*> rows{&row};
    for (const json& other : others) {
      const json* match = nullptr;
      for (const json& r : other["rows"])
        if (r["method"] == key) match = &r;
      if (!match) throw InputError("bench: method " + key + " is missing from a seed zoo's in-domain rows");
      rows.push_back(match);
    }
    json parameters = json::array(), accuracy = json::object();
    std::vector<double> averages;
    double normalized = 0;
    for (const json* r : rows) {
      averages.push_back((*r)["average"].get<double>());
      parameters.push_back((*r)["parameters"]);
      normalized += (*r)["normalized_average"].get<double>() / static_cast<double>(seeds);
    }
    for (const std::string& t : tasks) {
      double sum = 0;
      for (const json* r : rows) sum += (*r)["accuracy"][t].get<double>();
      accuracy[t] = sum / static_cast<double>(seeds);
    }
    double mean = 0;
    for (double a : averages) mean += a / static_cast<double>(seeds);
    row["accuracy"] = accuracy;
    row["average"] = mean;
    row["normalized_average"] = normalized;
    row["seeds"] = seeds;
    row["average_sd"] = seeds > 1 ? json(sample_sd(averages)) : json();
    row["average_per_seed"] = averages;
    if (seeds > 1) row["parameters_per_seed"] = parameters;
  }
  in_domain["seeds"] = seeds;
}

void check_options(const BenchOptions& o) {
  for (const std::string& e : o.experiments)
    if (std::find(kBenchExperiments.begin(), kBenchExperiments.end(), e) == kBenchExperiments.end())
      throw InputError("bench: unknown experiment '" + e + "' (in_domain, unseen, corruptions, sequential, num_tasks)");
  if (o.corruption_severity < kMinSeverity || o.corruption_severity > kMaxSeverity)
    throw InputError("bench: corruption severity must be 1..5");
  std::vector<fs::path> zoos{o.zoo};
  zoos.insert(zoos.end(), o.seed_zoos.begin(), o.seed_zoos.end());
  for (const fs::path& zoo : zoos)
    if (!fs::exists(zoo / "zoo.json"))
      throw InputError(zoo.string() + ": no zoo.json here; build the zoo first (amalgam zoo build -o " + zoo.string() +
                       ")");
}

}  // namespace

json run_bench(const BenchOptions& options) {
  check_options(options);
  note_input(options.zoo);  // its models are read by child processes: the report may not replace it
  AtomicOutput output(options.output, options.force);
  const fs::path dir = output.staging();
  json report = Bench(options, dir).run();
  // Each further seed's zoo: the in-domain experiment alone, under work/seed-N/.
  std::vector<json> others;
  std::vector<fs::path> work_dirs{dir / "work"};
  for (size_t k = 0; k < options.seed_zoos.size(); ++k) {
    BenchOptions seed = options;
    seed.zoo = options.seed_zoos[k];
    seed.seed_zoos.clear();
    note_input(seed.zoo);
    const fs::path staging = dir / "work" / ("seed-" + std::to_string(k + 2));
    work_dirs.push_back(staging / "work");
    others.push_back(Bench(seed, staging).in_domain_alone());
    if (others.back()["rows"].size() != report["in_domain"]["rows"].size())
      throw InputError(seed.zoo.string() + ": its in-domain rows differ from " + options.zoo.string() +
                       "'s (a zoo with other tasks or heads?)");
  }
  add_spread(report["in_domain"], others, report["tasks"].get<std::vector<std::string>>());
  if (!options.seed_zoos.empty()) {
    report["seed_zoos"] = json::array();
    for (const fs::path& z : options.seed_zoos) report["seed_zoos"].push_back(fs::absolute(z).string());
  }
  if (!options.keep_models)
    for (const fs::path& work : work_dirs) {
      fs::remove_all(work / "models");
      fs::remove_all(work / "stats");
    }
  {
    std::ofstream out(dir / "report.json", std::ios::trunc);
    out << report.dump(2) << "\n";
    if (!out) throw InputError((options.output / "report.json").string() + ": cannot write");
  }
  const std::vector<std::string> charts = render_bench_charts(report, dir / "charts");
  {
    std::ofstream out(dir / "report.md", std::ios::trunc);
    out << render_bench_markdown(report, charts);
    if (!out) throw InputError((options.output / "report.md").string() + ": cannot write");
  }
  output.commit();
  return report;
}

}  // namespace amalgam
