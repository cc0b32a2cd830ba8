// `amalgam bench --quick` end to end on a tiny zoo: the report has every experiment, its
// numbers are finite percentages, and the accuracies it reports are what independent
// `amalgam merge` and `amalgam eval` runs of the same models give.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "bench/runner.h"
#include "core/child_process.h"
#include "io/json_file.h"
#include "test_util.h"
#include "zoo_fixtures.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::run_amalgam;
using testing::TempDir;

// Every number under `j` outside the keys that hold counts or parameters.
void collect_percentages(const json& j, const std::string& path, std::vector<std::pair<std::string, double>>& out) {
  static const std::set<std::string> not_percent = {"parameters", "tasks_seen", "sizes", "severity", "group_size"};
  if (j.is_number()) out.emplace_back(path, j.get<double>());
  if (j.is_array())
    for (size_t i = 0; i < j.size(); ++i) collect_percentages(j[i], path + "[" + std::to_string(i) + "]", out);
  if (j.is_object())
    for (const auto& [key, value] : j.items())
      if (!not_percent.count(key)) collect_percentages(value, path + "." + key, out);
}

const json& row_of(const json& rows, const std::string& method) {
  for (const json& r : rows)
    if (r["method"] == method) return r;
  throw std::runtime_error("no row for " + method);
}

double cli_accuracy(const fs::path& model, const fs::path& zoo, const std::string& task) {
  const auto r = run_amalgam("eval " + model.string() + " --task " + (zoo / "data" / task).string() + " --head " +
                             (zoo / "heads" / (task + ".safetensors")).string() +
                             " --max-examples 200 --seed 1 --batch-size 256 --json -q");
  EXPECT_EQ(r.code, 0) << r.err;
  return 100.0 * json::parse(r.out)["results"][0]["accuracy"].get<double>();
}

TEST(Bench, QuickRunOnATinyZooWritesEveryExperimentWithIndependentlyReproducibleNumbers) {
  TempDir tmp;
  const fs::path zoo = tmp / "zoo";
  build_zoo(zoo, testing::tiny_zoo_options(), false);
  const fs::path out = tmp / "report";
  const auto run = run_amalgam("bench " + zoo.string() + " -o " + out.string() + " --quick -q");
  ASSERT_EQ(run.code, 0) << run.err;
  const json report = read_json_file(out / "report.json");

  EXPECT_EQ(report["format"], "amalgam-bench-report");
  const auto tasks = report["tasks"].get<std::vector<std::string>>();
  ASSERT_EQ(tasks.size(), 8u);
  std::set<std::string> keys;
  for (const json& m : report["methods"]) keys.insert(m["key"].get<std::string>());
  for (const char* k : {"base", "finetuned", "linear", "task_arithmetic", "ties", "dare_ties", "tsv", "regmean",
                        "regmean_plusplus", "mass_sample", "mass_batch"})
    EXPECT_TRUE(keys.count(k)) << k;

  // In-domain: one row per method, with every task; one chosen point per method with a grid.
  const json& rows = report["in_domain"]["rows"];
  EXPECT_EQ(rows.size(), keys.size());
  for (const json& r : rows) EXPECT_EQ(r["accuracy"].size(), tasks.size()) << r["method"];
  std::map<std::string, int> chosen;
  for (const json& v : report["in_domain"]["validation"])
    chosen[v["method"].get<std::string>()] += v["chosen"].get<bool>();
  for (const auto& [method, count] : chosen) EXPECT_EQ(count, 1) << method;
  EXPECT_EQ(chosen.count("task_arithmetic"), 1u);

  // The other experiments' shapes.
  EXPECT_EQ(report["unseen"]["splits"].size(), 1u);
  EXPECT_EQ(report["unseen"]["splits"][0]["held_out"].size(), 2u);
  EXPECT_EQ(report["corruptions"]["corruptions"].size(), 8u);  // clean + 7
  EXPECT_EQ(report["corruptions"]["rows"].size(), keys.size());
  EXPECT_EQ(report["sequential"]["rows"].size(), 4u);
  EXPECT_EQ(report["sequential"]["rows"][0]["tasks_seen"], json({2, 4, 6, 8}));
  EXPECT_EQ(report["num_tasks"]["sizes"], json({2, 4, 6, 8}));
  for (const json& r : report["cost"]["rows"]) {
    EXPECT_GT(r["merge"]["wall_seconds"].get<double>(), 0) << r["method"];
    EXPECT_GT(r["merge"]["peak_rss_bytes"].get<double>(), 1e6) << r["method"];  // a real process's
  }
  EXPECT_FALSE(row_of(report["cost"]["rows"], "regmean")["stats"].is_null());

  // Every accuracy is a finite percentage.
  std::vector<std::pair<std::string, double>> values;
  for (const char* section : {"in_domain", "unseen", "corruptions", "sequential", "num_tasks"})
    collect_percentages(report[section], section, values);
  EXPECT_GT(values.size(), 500u);
  for (const auto& [path, v] : values) {
    EXPECT_TRUE(std::isfinite(v)) << path;
    // Normalized accuracy may exceed 100 (a merge beating a fine-tune), plain accuracy not.
    const bool normalized = path.find("normalized") != std::string::npos || path.rfind("sequential", 0) == 0 ||
                            path.rfind("num_tasks", 0) == 0;
    if (!normalized) {
      EXPECT_GE(v, 0) << path;
      EXPECT_LE(v, 100) << path;
    }
  }

  // Independent runs: each fine-tune through `amalgam eval` on the same 200-image sample, and
  // the simple average merged from a config written here.
  const json& finetuned = row_of(rows, "finetuned");
  for (const std::string& t : {tasks[0], tasks[5]})
    EXPECT_DOUBLE_EQ(finetuned["accuracy"][t].get<double>(), cli_accuracy(zoo / "finetuned" / t, zoo, t)) << t;
  std::string yaml = "merge_method: linear\nmodels:\n";
  for (const std::string& t : tasks)
    yaml += "  - {model: " + (zoo / "finetuned" / t).string() + ", parameters: {weight: 1}}\n";
  testing::write_bytes(tmp / "linear.yaml", yaml);
  ASSERT_EQ(run_amalgam("merge " + (tmp / "linear.yaml").string() + " -o " + (tmp / "linear").string() + " -q").code,
            0);
  const json& linear = row_of(rows, "linear");
  for (const std::string& t : {tasks[1], tasks[7]})
    EXPECT_DOUBLE_EQ(linear["accuracy"][t].get<double>(), cli_accuracy(tmp / "linear", zoo, t)) << t;

  // The human side: the in-domain table and the charts.
  const std::string md = testing::read_bytes(out / "report.md");
  char line[64];
  std::snprintf(line, sizeof line, "| simple average | %.1f |", linear["accuracy"][tasks[0]].get<double>());
  EXPECT_NE(md.find(line), std::string::npos) << line;
  for (const char* chart : {"accuracy", "sequential", "num_tasks", "corruptions"})
    EXPECT_GT(fs::file_size(out / "charts" / (std::string(chart) + ".png")), 1000u) << chart;
  EXPECT_TRUE(fs::exists(out / "work" / "configs" / "regmean_plusplus.yaml"));
  EXPECT_FALSE(fs::exists(out / "work" / "models"));
  // The configs name the bench's statistics beside them, not in the staging directory that
  // became `out`: with --keep-models they rerun as they are.
  const std::string regmean = testing::read_bytes(out / "work" / "configs" / "regmean.yaml");
  EXPECT_NE(regmean.find("stats: \"../stats/"), std::string::npos) << regmean;
  EXPECT_EQ(regmean.find("amalgam-tmp"), std::string::npos) << regmean;

  // The audit's residuals are those of the chosen RegMean++ merge, rerun here from its config
  // (RegMean's statistics are gone with the work models; RegMean++ reads the task data).
  ASSERT_EQ(run_amalgam("merge " + (out / "work" / "configs" / "regmean_plusplus.yaml").string() + " -o " +
                        (tmp / "regmean_plusplus").string() + " -q")
                .code,
            0);
  const json direct = read_json_file(tmp / "regmean_plusplus" / "merge_report.json");
  std::vector<std::string> layers;
  std::vector<json> residuals;
  for (const json& t : direct["tensors"])
    if (t.contains("relative_residuals")) {
      layers.push_back(t["name"].get<std::string>());
      residuals.push_back(t["relative_residuals"]);
    }
  EXPECT_EQ(report["audit"]["layers"].get<std::vector<std::string>>(), layers);
  EXPECT_EQ(report["audit"]["rows"].size(), 2u);  // RegMean and RegMean++
  const json& audited = row_of(report["audit"]["rows"], "regmean_plusplus")["relative_residuals"];
  ASSERT_EQ(audited.size(), residuals.size());
  for (size_t l = 0; l < residuals.size(); ++l)
    for (size_t t = 0; t < tasks.size(); ++t) {
      EXPECT_DOUBLE_EQ(audited[l][t].get<double>(), residuals[l][t].get<double>()) << layers[l] << " " << tasks[t];
      EXPECT_GT(audited[l][t].get<double>(), 0) << layers[l];
      EXPECT_LT(audited[l][t].get<double>(), 1) << layers[l];
    }
  EXPECT_GT(fs::file_size(out / "charts" / "residuals.png"), 1000u);

  // An existing report is kept unless --force.
  const auto again = run_amalgam("bench " + zoo.string() + " -o " + out.string() + " --quick -q");
  EXPECT_EQ(again.code, 2);
  EXPECT_NE(again.err.find(out.string()), std::string::npos) << again.err;
  EXPECT_EQ(read_json_file(out / "report.json")["date"], report["date"]);
}

// The processes whose parent is `pid` (from /proc/*/stat: "PID (comm) STATE PPID ...").
std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 1));
    std::string state;
    pid_t parent = 0;
    if (rest >> state >> parent && parent == pid) found.push_back(std::stoi(e.path().filename().string()));
  }
  return found;
}

// `kill PID` of a bench (as a job scheduler does) reaches the merge it waits for: the whole
// run ends within seconds, exit 130, no child and no staging left.
// On a zoo with zero-shot-like heads the base row is labelled as such, and the linear probes
// make a ceiling row whose accuracies are what `amalgam eval` gives the base with them.
TEST(Bench, ZeroShotLikeHeadsAddTheLinearProbeCeilingRow) {
  TempDir tmp;
  const fs::path zoo = tmp / "zoo";
  ZooBuildOptions o = testing::tiny_zoo_options();
  o.heads = ZooHeads::Prototype;
  build_zoo(zoo, o, false);
  const fs::path out = tmp / "report";
  const auto run = run_amalgam("bench " + zoo.string() + " -o " + out.string() + " --quick --experiments unseen -q");
  ASSERT_EQ(run.code, 0) << run.err;
  const json report = read_json_file(out / "report.json");
  std::map<std::string, std::string> labels;
  for (const json& m : report["methods"]) labels[m["key"].get<std::string>()] = m["label"].get<std::string>();
  EXPECT_EQ(labels["base"], "base (zero-shot-like heads)");
  EXPECT_EQ(labels["probe_ceiling"], "linear-probe ceiling (base + probes)");
  const json& ceiling = row_of(report["in_domain"]["rows"], "probe_ceiling");
  for (const std::string task : {"mnist", "count"}) {
    const auto r = run_amalgam("eval " + (zoo / "base").string() + " --task " + (zoo / "data" / task).string() +
                               " --head " + (zoo / "probes" / (task + ".safetensors")).string() + " --json -q");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NEAR(ceiling["accuracy"][task].get<double>(),
                100.0 * json::parse(r.out)["results"][0]["accuracy"].get<double>(), 1e-9)
        << task;
  }
}

// With a second zoo of independently seeded fine-tunes, every in-domain row is the mean of
// the two zoos' rows with their sample standard deviation; the second zoo's figures are what
// a bench run on it alone reports.
TEST(Bench, SeedZoosGiveInDomainMeansAndSpread) {
  TempDir tmp;
  const ZooBuildOptions o = testing::tiny_zoo_options();
  build_zoo(tmp / "zoo", o, false);
  ZooBuildOptions reseeded = o;
  reseeded.finetune.seed += 100;
  reseeded.reuse_base_from = tmp / "zoo";
  build_zoo(tmp / "zoo2", reseeded, false);
  const std::string common = " --quick --experiments unseen -q";
  auto run = run_amalgam("bench " + (tmp / "zoo").string() + " --seed-zoo " + (tmp / "zoo2").string() + " -o " +
                         (tmp / "both").string() + common);
  ASSERT_EQ(run.code, 0) << run.err;
  run = run_amalgam("bench " + (tmp / "zoo2").string() + " -o " + (tmp / "alone").string() + common);
  ASSERT_EQ(run.code, 0) << run.err;
  const json both = read_json_file(tmp / "both/report.json"), alone = read_json_file(tmp / "alone/report.json");
  EXPECT_EQ(both["in_domain"]["seeds"], 2);
  bool some_spread = false;
  for (const json& row : both["in_domain"]["rows"]) {
    const std::string key = row["method"];
    ASSERT_EQ(row["seeds"], 2) << key;
    const double a = row["average_per_seed"][0], b = row["average_per_seed"][1];
    EXPECT_DOUBLE_EQ(b, row_of(alone["in_domain"]["rows"], key)["average"].get<double>()) << key;
    EXPECT_NEAR(row["average"].get<double>(), (a + b) / 2, 1e-9) << key;
    EXPECT_NEAR(row["average_sd"].get<double>(), std::abs(a - b) / std::sqrt(2.0), 1e-9) << key;
    some_spread = some_spread || a != b;
  }
  EXPECT_TRUE(some_spread);
  const std::string md = testing::read_bytes(tmp / "both/report.md");
  EXPECT_NE(md.find("mean over 2 zoos"), std::string::npos);
  EXPECT_NE(md.find("Ordering the spread supports: "), std::string::npos);
  // One zoo: the rows say so.
  EXPECT_EQ(row_of(alone["in_domain"]["rows"], "linear")["seeds"], 1);
  EXPECT_TRUE(row_of(alone["in_domain"]["rows"], "linear")["average_sd"].is_null());
}

TEST(Bench, SigtermEndsTheRunAndTheMergeItWaitsFor) {
  TempDir tmp;
  const fs::path zoo = tmp / "zoo";
  build_zoo(zoo, testing::tiny_zoo_options(), false);
  const fs::path out = tmp / "report";
  const pid_t pid = testing::spawn_amalgam({"bench", zoo.string(), "-o", out.string(), "--quick", "-q"}, tmp / "err");
  std::vector<pid_t> children;
  const bool merging = testing::wait_until(pid, [&] { return !(children = children_of(pid)).empty(); });
  const auto start = std::chrono::steady_clock::now();
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(merging) << "the bench never started a child process: " << testing::read_bytes(tmp / "err");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130) << testing::read_bytes(tmp / "err");
  EXPECT_LT(seconds, 5.0);
  for (const pid_t child : children) EXPECT_TRUE(::kill(child, 0) != 0 && errno == ESRCH) << "child " << child;
  EXPECT_TRUE(testing::staging_directories(out, pid).empty());
  EXPECT_FALSE(fs::exists(out));
}

TEST(Bench, RefusesADirectoryWithoutAZooAndUnknownExperiments) {
  TempDir tmp;
  auto r = run_amalgam("bench " + tmp.path().string() + " -o " + (tmp / "report").string() + " -q");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("zoo.json"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "report"));
  r = run_amalgam("bench " + tmp.path().string() + " -o " + (tmp / "report").string() + " --experiments fast -q");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown experiment 'fast'"), std::string::npos) << r.err;
}

TEST(BenchChild, ReportsExitCodeCpuTimeAndPeakMemoryOfTheChildAlone) {
  TempDir tmp;
  // A child that allocates and touches ~64 MB: its peak is at least that, and ours is not counted.
  const ChildUsage big = run_child(
      {"/usr/bin/python3", "-c", "b = bytearray(64 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1"}, tmp / "log");
  EXPECT_EQ(big.exit_code, 0);
  EXPECT_GT(big.peak_rss_bytes, 64u << 20);
  EXPECT_LT(big.peak_rss_bytes, 256u << 20);
  EXPECT_GT(big.wall_seconds, 0);
  const ChildUsage failed = run_child({"/bin/sh", "-c", "echo oops >&2; exit 3"}, tmp / "log");
  EXPECT_EQ(failed.exit_code, 3);
  EXPECT_NE(testing::read_bytes(tmp / "log").find("oops"), std::string::npos);
  const ChildUsage killed = run_child({"/bin/sh", "-c", "kill -9 $$"}, tmp / "log");
  EXPECT_EQ(killed.exit_code, 128 + 9);
  EXPECT_THROW(run_child({"/nonexistent/program"}, tmp / "log"), std::runtime_error);
}

TEST(BenchChild, AmalgamReportsItsOwnPeakNotTheParents) {
  // The kernel's figure for a spawned child starts from the parent's peak; with 300 MB
  // touched here, an amalgam child that reports its own VmHWM stays far below that.
  std::vector<char> ballast(300u << 20);
  for (size_t i = 0; i < ballast.size(); i += 4096) ballast[i] = 1;
  TempDir tmp;
  const ChildUsage own = run_child({AMALGAM_BIN, "--version"}, tmp / "log");
  EXPECT_EQ(own.exit_code, 0);
  EXPECT_TRUE(own.peak_reported);
  EXPECT_GT(own.peak_rss_bytes, 1u << 20);
  // Well under the 300 MB ballast: a Release amalgam starts in about 10 MiB, one built with
  // AddressSanitizer in about 100 (its shadow memory; 104.9 MB on 2026-12-07).
  EXPECT_LT(own.peak_rss_bytes, 200u << 20);
  EXPECT_FALSE(fs::exists(tmp / "log.peak"));
  // Another program cannot report: rusage's figure, which holds our ballast.
  const ChildUsage other = run_child({"/bin/true"}, tmp / "log");
  EXPECT_FALSE(other.peak_reported);
  EXPECT_GT(other.peak_rss_bytes, 300u << 20);
  EXPECT_NE(ballast[4096], 0);
}

TEST(BenchMethods, GridsHoldThePapersDefaultsAndQuickKeepsTheEnds) {
  const auto full = bench_methods(false);
  const auto quick = bench_methods(true);
  ASSERT_EQ(full.size(), quick.size());
  const auto has = [](const BenchMethod& m, const BenchParams& p) {
    return std::find(m.grid.begin(), m.grid.end(), p) != m.grid.end();
  };
  const std::map<std::string, BenchParams> paper_defaults = {{"task_arithmetic", {{"lambda", 0.3}}},
                                                             {"ties", {{"density", 0.2}, {"lambda", 1.0}}},
                                                             {"tsv", {{"alpha", 1.0}}},
                                                             {"regmean", {{"alpha", 0.95}}},
                                                             {"regmean_plusplus", {{"alpha", 0.95}}}};
  for (const BenchMethod& m : full) {
    const auto it = paper_defaults.find(m.key);
    if (it != paper_defaults.end()) {
      EXPECT_TRUE(has(m, it->second)) << m.key;
    }
  }
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_LE(quick[i].grid.size(), 2u);
    EXPECT_EQ(quick[i].grid.front(), full[i].grid.front());
    EXPECT_EQ(quick[i].grid.back(), full[i].grid.back());
  }
  EXPECT_EQ(full[2].grid.size(), 6u);  // TIES: 2 densities x 3 lambdas
}

}  // namespace
}  // namespace amalgam
