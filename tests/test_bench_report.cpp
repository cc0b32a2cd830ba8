// report.md and the charts of `amalgam bench`, rendered from a report.json written here by
// hand: each table row against the numbers it must show, each chart's files against the
// formats they claim to be.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/report.h"
#include "core/error.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;

// Three tasks, five methods; `fine_tuned` has no row anywhere and TIES misses some values,
// so the "–" cells are exercised. Values avoid exact halves, so rounding is not a question.
json sample_report() {
  return json::parse(R"({
  "format": "amalgam-bench-report", "version": 1,
  "date": "2026-11-24T15:40:00Z", "command": "amalgam bench zoo -o report", "zoo": "/abs/zoo",
  "quick": false, "seconds": 1234.5,
  "settings": {"seed": 1, "threads": 2, "corruption_severity": 3},
  "tasks": ["mnist", "fashion", "count"],
  "methods": [
    {"key": "task_arithmetic", "label": "task arithmetic", "kind": "data-free"},
    {"key": "ties", "label": "TIES", "kind": "data-free"},
    {"key": "regmean", "label": "RegMean", "kind": "data-aware"},
    {"key": "mass", "label": "MASS", "kind": "routed"},
    {"key": "fine_tuned", "label": "fine-tuned", "kind": "reference"}],
  "in_domain": {
    "rows": [
      {"method": "task_arithmetic", "parameters": {"lambda": 0.3},
       "accuracy": {"mnist": 91.2, "fashion": 80.04, "count": 40.06}, "average": 70.43, "normalized_average": 80.26},
      {"method": "ties", "parameters": {"k": 20, "lambda": 1.0},
       "accuracy": {"mnist": 88.0, "fashion": 75.0}, "average": null, "normalized_average": 79.9},
      {"method": "regmean", "parameters": {}, "accuracy": {"mnist": 95.0, "fashion": 85.0, "count": 60.0},
       "average": 80.0, "normalized_average": 90.0},
      {"method": "mass", "accuracy": {"mnist": 97.0, "fashion": 88.0, "count": 70.0},
       "average": 85.0, "normalized_average": 95.0}],
    "validation": [
      {"method": "task_arithmetic", "parameters": {"lambda": 0.1}, "average": 66.0, "chosen": false},
      {"method": "task_arithmetic", "parameters": {"lambda": 0.3}, "average": 68.04, "chosen": true}]},
  "unseen": {"splits": [{"merged": ["mnist", "fashion"], "held_out": ["count"],
    "rows": [{"method": "task_arithmetic", "accuracy": {"count": 33.33}, "held_out_average": 33.33,
              "merged_average": 85.56}]}]},
  "corruptions": {"severity": 3, "tasks": ["mnist", "fashion"], "corruptions": ["clean", "motion_blur", "jpeg"],
    "rows": [{"method": "task_arithmetic", "accuracy": {"clean": {"mnist": 90.0, "fashion": 80.0}},
              "average": {"clean": 85.0, "motion_blur": 60.12, "jpeg": 70.0}},
             {"method": "regmean", "average": {"clean": 90.0, "motion_blur": 65.0, "jpeg": 77.0}}]},
  "sequential": {"group_size": 1, "orders": [["mnist", "fashion", "count"], ["count", "fashion", "mnist"]],
    "rows": [{"method": "task_arithmetic", "tasks_seen": [1, 2, 3], "normalized": [[100, 90, 80], [100, 88, 78]],
              "mean": [100, 89, 79]},
             {"method": "ties", "tasks_seen": [1, 2, 3], "mean": [100, null, 70]}]},
  "num_tasks": {"sizes": [2, 3], "subsets": [[["mnist", "fashion"], ["mnist", "count"]], [["mnist", "fashion", "count"]]],
    "rows": [{"method": "task_arithmetic", "normalized": [[95, 85], [80]], "mean": [90, 80]},
             {"method": "regmean", "normalized": [[97, 93], [91]], "mean": [95, 91]}]},
  "cost": {"rows": [
      {"method": "task_arithmetic", "stats": null,
       "merge": {"wall_seconds": 1.234, "cpu_seconds": 2.5, "peak_rss_bytes": 104857600}},
      {"method": "regmean", "stats": {"wall_seconds": 10, "cpu_seconds": 15, "peak_rss_bytes": 209715200},
       "merge": {"wall_seconds": 3, "cpu_seconds": 4, "peak_rss_bytes": 157286400}}],
    "mass": {"bundle_bytes": 2621440, "base_bytes": 1048576, "bundle_to_base": 2.5,
             "seconds_per_image": {"sample": 0.002, "batch": 0.0008}, "merged_seconds_per_image": 0.0004}},
  "audit": {"layers": ["vision_model.encoder.layers.0.self_attn.q_proj.weight", "vision_model.encoder.layers.0.mlp.fc2.weight",
                       "vision_model.encoder.layers.1.self_attn.q_proj.weight", "vision_model.encoder.layers.1.mlp.fc2.weight"],
    "rows": [{"method": "regmean", "relative_residuals": [[0.01, 0.02, 0.03], [0.002, 0.05, 0.001],
                                                          [0.004, 0.006, 0.008], [0.0, 0.01, 0.02]]},
             {"method": "regmean_plusplus", "relative_residuals": [[0.001, 0.002, 0.003], [0.001, 0.002, 0.004],
                                                                   [0.001, 0.002, 0.003], [0.001, 0.002, 0.003]]}]}
})");
}

const std::vector<std::string> kAllCharts = {"accuracy",  "sequential",  "num_tasks", "corruptions",
                                             "cost_time", "cost_memory", "residuals"};

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos;
}
#define EXPECT_LINE(text, line) EXPECT_TRUE(has_line(text, line)) << "no line: " << (line) << "\nin:\n" << (text)

// The message of the InputError that `render` throws, or a failure text if it throws none.
std::string error_of(const std::function<void()>& render) {
  try {
    render();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not an InputError: ") + e.what();
  }
  return "no error";
}

std::string markdown_error(const json& report) {
  return error_of([&] { render_bench_markdown(report, {}); });
}

bool gnuplot_installed() {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  for (size_t begin = 0; begin <= dirs.size();) {
    const size_t end = std::min(dirs.find(':', begin), dirs.size());
    const fs::path candidate = fs::path(dirs.substr(begin, end - begin)) / "gnuplot";
    if (::access(candidate.c_str(), X_OK) == 0) return true;
    begin = end + 1;
  }
  return false;
}

// PATH replaced for one scope, to run the charts against a missing or a broken gnuplot.
class ScopedPath {
 public:
  explicit ScopedPath(const std::string& path) : had_(std::getenv("PATH") != nullptr) {
    if (had_) old_ = std::getenv("PATH");
    ::setenv("PATH", path.c_str(), 1);
  }
  ~ScopedPath() {
    if (had_)
      ::setenv("PATH", old_.c_str(), 1);
    else
      ::unsetenv("PATH");
  }

 private:
  bool had_;
  std::string old_;
};

TEST(BenchReportMarkdown, HeaderSettingsAndMethods) {
  const std::string md = render_bench_markdown(sample_report(), {});
  EXPECT_EQ(md.rfind("# amalgam bench report\n", 0), 0u);
  EXPECT_LINE(md, "- Command: `amalgam bench zoo -o report`");
  EXPECT_LINE(md, "- Date: 2026-11-24T15:40:00Z");
  EXPECT_LINE(md, "- Zoo: `/abs/zoo`");
  EXPECT_LINE(md, "- Mode: full");
  EXPECT_LINE(md, "- Total time: 1234.5 s (20.6 min)");
  EXPECT_LINE(md, "- Tasks (3): mnist, fashion, count");
  EXPECT_LINE(md, "| seed | 1 |");
  EXPECT_LINE(md, "| corruption_severity | 3 |");
  EXPECT_LINE(md, "| RegMean | regmean | data-aware |");
}

TEST(BenchReportMarkdown, InDomainTableAndValidationGrid) {
  const std::string md = render_bench_markdown(sample_report(), {});
  EXPECT_LINE(md, "| method | mnist | fashion | count | average | normalized | chosen hyperparameters |");
  EXPECT_LINE(md, "| task arithmetic | 91.2 | 80.0 | 40.1 | 70.4 | 80.3 | lambda=0.3 |");
  EXPECT_LINE(md, "| TIES | 88.0 | 75.0 | – | – | 79.9 | k=20, lambda=1 |");
  EXPECT_LINE(md, "| RegMean | 95.0 | 85.0 | 60.0 | 80.0 | 90.0 | none |");
  EXPECT_LINE(md, "| MASS | 97.0 | 88.0 | 70.0 | 85.0 | 95.0 | – |");
  EXPECT_LINE(md, "| fine-tuned | – | – | – | – | – | – |");
  EXPECT_LINE(md, "| task arithmetic | lambda=0.1 | 66.0 |  |");
  EXPECT_LINE(md, "| task arithmetic | lambda=0.3 | 68.0 | ✓ |");
}

TEST(BenchReportMarkdown, OtherExperiments) {
  const std::string md = render_bench_markdown(sample_report(), {});
  // Unseen: the held-out task's column, then both averages.
  EXPECT_LINE(md, "### Split 1: held out count");
  EXPECT_LINE(md, "| method | count | held-out average | merged average |");
  EXPECT_LINE(md, "| task arithmetic | 33.3 | 33.3 | 85.6 |");
  // Corruptions: averages per corruption, clean included.
  EXPECT_LINE(md, "| method | clean | motion_blur | jpeg |");
  EXPECT_LINE(md, "| task arithmetic | 85.0 | 60.1 | 70.0 |");
  EXPECT_LINE(md, "| RegMean | 90.0 | 65.0 | 77.0 |");
  EXPECT_LINE(md, "| TIES | – | – | – |");
  // Sequential: the mean per step, then each order.
  EXPECT_LINE(md, "| method | 1 task | 2 tasks | 3 tasks |");
  EXPECT_LINE(md, "| task arithmetic | 100.0 | 89.0 | 79.0 |");
  EXPECT_LINE(md, "| TIES | 100.0 | – | 70.0 |");
  EXPECT_LINE(md, "2. count → fashion → mnist");
  EXPECT_LINE(md, "| task arithmetic | 2 | 100.0 | 88.0 | 78.0 |");
  // Number of tasks: the mean per size, then each size's subsets.
  EXPECT_LINE(md, "| method | 2 tasks | 3 tasks |");
  EXPECT_LINE(md, "| RegMean | 95.0 | 91.0 |");
  EXPECT_LINE(md, "- S2: mnist, count");
  EXPECT_LINE(md, "| task arithmetic | 95.0 | 85.0 | 90.0 |");
  // Cost: seconds with two decimals, MiB with one; a phase that did not run is "–".
  EXPECT_LINE(md, "| task arithmetic | – | – | – | 1.23 | 2.50 | 100.0 |");
  EXPECT_LINE(md, "| RegMean | 10.00 | 15.00 | 200.0 | 3.00 | 4.00 | 150.0 |");
  EXPECT_LINE(md, "| bundle size | 2.5 MiB |");
  EXPECT_LINE(md, "| bundle / base | 2.50× |");
  EXPECT_LINE(md, "| routed latency per image, per-sample routing | 2.000 ms |");
  EXPECT_LINE(md, "| latency ratio routed / merged, per-sample routing | 5.00× |");
  EXPECT_LINE(md, "| latency ratio routed / merged, batch routing | 2.00× |");
}

// Mean over layers and tasks, the worst cell, and the task with the largest sum, by hand.
TEST(BenchReportMarkdown, AuditResidualsPerMethod) {
  const std::string md = render_bench_markdown(sample_report(), {"residuals"});
  const size_t section = md.find("## Merge audit: regression residuals");
  ASSERT_NE(section, std::string::npos);
  EXPECT_LINE(md, "| RegMean | 0.0134 | 0.0500 | fashion | 0.fc2 | fashion |");
  EXPECT_LINE(md, "| regmean_plusplus | 0.0021 | 0.0040 | count | 0.fc2 | count |");
  EXPECT_GT(md.find("![Regression residuals per layer and task](charts/residuals.png)"), section);
  json report = sample_report();
  report["audit"]["rows"][0]["relative_residuals"][1] = {0.1, 0.2};
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "'audit.rows[0].relative_residuals[1]' has 2 tasks, not 3",
                      markdown_error(report));
  report = sample_report();
  report["audit"]["layers"].erase(3);
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "'audit.rows[0].relative_residuals' has 4 layers, not 3",
                      markdown_error(report));
}

TEST(BenchReportMarkdown, ChartsLinkedUnderTheirSections) {
  const std::string md = render_bench_markdown(sample_report(), {"accuracy", "cost_time"});
  const size_t in_domain = md.find("## In-domain accuracy"),
               link = md.find("![In-domain accuracy](charts/accuracy.png)");
  ASSERT_NE(link, std::string::npos);
  EXPECT_GT(link, in_domain);
  EXPECT_LT(link, md.find("## Unseen tasks"));
  EXPECT_NE(md.find("[charts/accuracy.svg](charts/accuracy.svg)"), std::string::npos);
  EXPECT_GT(md.find("charts/cost_time.png"), md.find("## Cost"));
  EXPECT_EQ(md.find("charts/sequential.png"), std::string::npos);  // not rendered, not linked
}

TEST(BenchReportMarkdown, AbsentAndNullSectionsRenderNothing) {
  json report = sample_report();
  for (const char* key : {"unseen", "sequential", "num_tasks", "cost", "audit"}) report.erase(key);
  report["corruptions"] = nullptr;
  const std::string md = render_bench_markdown(report, {});
  EXPECT_NE(md.find("## In-domain accuracy"), std::string::npos);
  for (const char* title :
       {"## Unseen", "## Corruptions", "## Sequential", "## Number of tasks", "## Cost", "## Merge audit"})
    EXPECT_EQ(md.find(title), std::string::npos) << title;
  report.erase("in_domain");
  EXPECT_EQ(render_bench_markdown(report, {}).find("## In-domain"), std::string::npos);
}

TEST(BenchReportMarkdown, MalformedFieldsAreNamed) {
  json report = sample_report();
  report["in_domain"]["rows"][0].erase("method");
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "'in_domain.rows[0].method' is missing", markdown_error(report));
  report = sample_report();
  report["in_domain"]["rows"][1]["average"] = "high";
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "'in_domain.rows[1].average' must be a number, not string",
                      markdown_error(report));
  report = sample_report();
  report["cost"]["rows"][1]["merge"]["peak_rss_bytes"] = json::array();
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "'cost.rows[1].merge.peak_rss_bytes' must be a number",
                      markdown_error(report));
  report = sample_report();
  report["sequential"] = json::array();
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "'sequential' must be an object", markdown_error(report));
  report = sample_report();
  report.erase("methods");
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "'methods' is missing", markdown_error(report));
  report = sample_report();
  report["format"] = "something-else";
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "'format'", markdown_error(report));
  // The charts read the same fields and fail the same way, before running gnuplot.
  TempDir tmp;
  report = sample_report();
  report["unseen"] = nullptr;
  report["sequential"]["rows"][0]["tasks_seen"] = "1,2,3";
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "'sequential.rows[0].tasks_seen' must be an array",
                      error_of([&] { render_bench_charts(report, tmp / "charts"); }));
}

TEST(BenchReportCharts, EveryChartInBothFormatsAndDeterministic) {
  if (!gnuplot_installed()) GTEST_SKIP() << "gnuplot is not installed (scripts/setup-deps.sh installs gnuplot-nox)";
  TempDir tmp;
  const json report = sample_report();
  const fs::path first = tmp / "a" / "charts", second = tmp / "b" / "charts";
  ASSERT_EQ(render_bench_charts(report, first), kAllCharts);
  ASSERT_EQ(render_bench_charts(report, second), kAllCharts);
  for (const std::string& name : kAllCharts) {
    SCOPED_TRACE(name);
    const std::string png = read_bytes(first / (name + ".png"));
    EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    EXPECT_NE(read_bytes(first / (name + ".svg")).find("<svg"), std::string::npos);
    EXPECT_FALSE(fs::exists(first / (name + ".log")));  // nothing to say: no log left behind
    for (const char* ext : {".gp", ".dat"}) {
      const std::string bytes = read_bytes(first / (name + ext));
      EXPECT_FALSE(bytes.empty()) << ext;
      EXPECT_EQ(bytes, read_bytes(second / (name + ext))) << ext;
    }
  }
  // The data as the reader finds it: one row per task, one column per method with a row.
  const std::string accuracy = read_bytes(first / "accuracy.dat");
  EXPECT_NE(accuracy.find("# category \"task arithmetic\" \"TIES\" \"RegMean\" \"MASS\"\n"), std::string::npos);
  EXPECT_NE(accuracy.find("\n\"mnist\" 91.2 88 95 97\n"), std::string::npos) << accuracy;
  EXPECT_NE(accuracy.find("\n\"count\" 40.06 NaN 60 70\n"), std::string::npos) << accuracy;
  EXPECT_NE(accuracy.find("\n\"average\" 70.43 NaN 80 85\n"), std::string::npos) << accuracy;
  EXPECT_NE(read_bytes(first / "accuracy.gp").find("title 'task arithmetic' lt 1"), std::string::npos);
  EXPECT_NE(read_bytes(first / "sequential.dat").find("\n2 89 90 88\n"), std::string::npos);
  EXPECT_NE(read_bytes(first / "cost_time.dat").find("\n\"RegMean\" 10 3\n"), std::string::npos);
  EXPECT_NE(read_bytes(first / "cost_memory.dat").find("\n\"task arithmetic\" NaN 100\n"), std::string::npos);
  // Residuals: one block per method, a row per layer; a zero has no place on the log scale.
  const std::string residuals = read_bytes(first / "residuals.dat");
  EXPECT_NE(residuals.find("\n1 \"0.fc2\" 0.002 0.05 0.001\n"), std::string::npos) << residuals;
  EXPECT_NE(residuals.find("\n3 \"1.fc2\" NaN 0.01 0.02\n"), std::string::npos) << residuals;
  EXPECT_NE(residuals.find("\n# \"regmean_plusplus\"\n0 \"0.q_proj\" 0.001 0.002 0.003\n"), std::string::npos)
      << residuals;
  const std::string gp = read_bytes(first / "residuals.gp");
  EXPECT_NE(gp.find("set xtics ('0' 0, '1' 2)"), std::string::npos) << gp;
  EXPECT_NE(gp.find("set multiplot layout 1,2"), std::string::npos) << gp;
}

TEST(BenchReportCharts, OnlyPresentSections) {
  if (!gnuplot_installed()) GTEST_SKIP() << "gnuplot is not installed (scripts/setup-deps.sh installs gnuplot-nox)";
  TempDir tmp;
  json report = sample_report();
  for (const char* key : {"in_domain", "num_tasks", "corruptions", "cost", "audit"}) report[key] = nullptr;
  EXPECT_EQ(render_bench_charts(report, tmp / "charts"), std::vector<std::string>{"sequential"});
  EXPECT_FALSE(fs::exists(tmp / "charts" / "accuracy.gp"));
  report["sequential"] = nullptr;
  EXPECT_TRUE(render_bench_charts(report, tmp / "none").empty());
}

TEST(BenchReportCharts, MissingOrFailingGnuplotNamesTheChart) {
  TempDir tmp;
  json report = sample_report();
  for (const char* key : {"sequential", "num_tasks", "corruptions", "cost", "audit"}) report.erase(key);
  {
    const ScopedPath no_gnuplot((tmp / "empty").string());
    const std::string message = error_of([&] { render_bench_charts(report, tmp / "charts"); });
    EXPECT_PRED_FORMAT2(::testing::IsSubstring, "chart 'accuracy': cannot run gnuplot", message);
  }
  // A gnuplot that complains and exits 3: its status in the message, its words in the log.
  fs::create_directories(tmp / "bin");
  write_bytes(tmp / "bin" / "gnuplot", "#!/bin/sh\necho 'line 9: undefined variable' >&2\nexit 3\n");
  ::chmod((tmp / "bin" / "gnuplot").c_str(), 0755);
  const ScopedPath broken((tmp / "bin").string());
  const std::string message = error_of([&] { render_bench_charts(report, tmp / "charts"); });
  const fs::path log = tmp / "charts" / "accuracy.log";
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "chart 'accuracy': gnuplot exited with status 3", message);
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, log.string(), message);
  EXPECT_EQ(read_bytes(log), "line 9: undefined variable\n");
}

}  // namespace
}  // namespace amalgam
