// The human side of `amalgam bench`: report.md and the charts, rendered from report.json
// alone, so that a report can be re-rendered (or a chart re-plotted) without re-running a
// benchmark.
//
// report.json's top-level `format`, `version`, `settings`, `tasks` and `methods` are required;
// each experiment (`in_domain`, `unseen`, `corruptions`, `sequential`, `num_tasks`, `cost`,
// `audit`) may be absent or null, and then nothing is rendered for it. A required field of a present
// section that is missing or of the wrong type is an InputError naming the field
// ("bench report: 'in_domain.rows[2].method' is missing"); a missing value renders as "–".
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace amalgam {

// Writes REPORT/charts/<name>.{dat,gp,svg,png} with gnuplot; returns the chart names rendered
// (of "accuracy", "sequential", "num_tasks", "corruptions", "cost_time", "cost_memory",
// "residuals", in that order). Each .gp reads its .dat by relative name, so `cd charts && gnuplot accuracy.gp`
// re-plots it; the .gp and .dat bytes depend on the JSON only. gnuplot runs in `charts_dir`
// with its messages in <name>.log (removed when empty); a missing or failing gnuplot is an
// InputError naming the chart, its exit status and that log.
std::vector<std::string> render_bench_charts(const nlohmann::ordered_json& report,
                                             const std::filesystem::path& charts_dir);

// report.md: every section present in `report`, tables in GitHub markdown, with the charts
// named in `charts` (as render_bench_charts returns them) linked under their sections as
// charts/<name>.png, the .svg beside it.
std::string render_bench_markdown(const nlohmann::ordered_json& report, const std::vector<std::string>& charts);

}  // namespace amalgam
