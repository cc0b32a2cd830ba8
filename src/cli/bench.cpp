// `amalgam bench ZOO -o REPORT/`: every method on the zoo, the papers' experiments, a report
// with charts (bench/bench.h).
#include <cstdio>
#include <memory>

#include "bench/bench.h"
#include "cli/commands.h"

namespace amalgam::cli {

namespace {

// The in-domain averages, the table a user looks at first.
void print_summary(const nlohmann::ordered_json& report, const std::string& output) {
  std::map<std::string, std::string> labels;
  for (const auto& m : report["methods"]) labels[m["key"].get<std::string>()] = m["label"].get<std::string>();
  std::printf("%-36s %9s %7s %11s  %s\n", "method (in-domain, test)", "average", "sd", "normalized",
              "chosen on validation");
  for (const auto& row : report["in_domain"]["rows"]) {
    const auto sd = row.value("average_sd", nlohmann::ordered_json());
    std::printf(
        "%-36s %8.2f%% %7s %10.2f%%  %s\n", labels[row["method"].get<std::string>()].c_str(),
        row["average"].get<double>(), sd.is_number() ? std::to_string(sd.get<double>()).substr(0, 5).c_str() : "-",
        row["normalized_average"].get<double>(), row["parameters"].empty() ? "" : row["parameters"].dump().c_str());
  }
  if (report["in_domain"].value("seeds", 1) > 1)
    std::printf("(means over %d zoos; sd: their sample standard deviation)\n", report["in_domain"]["seeds"].get<int>());
  std::printf("report: %s/report.md (%.0f s)\n", output.c_str(), report["seconds"].get<double>());
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Every method on the zoo: the papers' experiments, a report and charts");
  struct Args {
    std::string zoo, output;
    std::vector<std::string> seed_zoos;
    bool quick = false;
    BenchOptions options;
    int64_t calibration = -1, validation = -1, test = -1, sample = -1, corruption = -1;
    std::optional<uint64_t> seed;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("zoo", a->zoo, "zoo directory (amalgam zoo build)")->required();
  cmd->add_option("-o,--output", a->output, "report directory to write")->required();
  cmd->add_option("--seed-zoo", a->seed_zoos,
                  "another zoo of the same tasks with independently seeded fine-tunes (repeat): the in-domain "
                  "table gives the mean and spread over every zoo");
  cmd->add_flag("--quick", a->quick, "a reduced run (two grid points, a few hundred images per task): minutes");
  cmd->add_option("--experiments", a->options.experiments,
                  "run only these besides in_domain (unseen, corruptions, sequential, num_tasks)")
      ->delimiter(',');
  cmd->add_option("--seed", a->seed, "seed of every sample, order and subset (default 1)")
      ->check(non_negative_number());
  cmd->add_option("--calibration-examples", a->calibration, "calibration images per task for RegMean/RegMean++")
      ->check(positive_number());
  cmd->add_option("--validation-examples", a->validation, "validation images per task for choosing (0: all)")
      ->check(non_negative_number());
  cmd->add_option("--test-examples", a->test, "test images per task in the in-domain table (0: all)")
      ->check(non_negative_number());
  cmd->add_option("--sample-examples", a->sample, "test images per task in the other experiments (0: all)")
      ->check(non_negative_number());
  cmd->add_option("--corruption-examples", a->corruption, "images per task and corruption (0: all)")
      ->check(non_negative_number());
  cmd->add_option("--severity", a->options.corruption_severity, "corruption severity, 1..5 (default 3)")
      ->check(CLI::Range(1, 5));
  cmd->add_flag("--keep-models", a->options.keep_models, "keep the merged checkpoints under REPORT/work/models");
  cmd->add_flag("--force", a->options.force, "replace an existing report directory");
  cmd->add_flag("-q,--quiet", a->options.settings.quiet, "no progress on stderr");
  cmd->callback([a] {
    BenchOptions o = BenchOptions::preset(a->quick);
    o.experiments = a->options.experiments;
    o.corruption_severity = a->options.corruption_severity;
    o.keep_models = a->options.keep_models;
    o.force = a->options.force;
    o.settings.quiet = a->options.settings.quiet;
    if (a->seed) o.settings.seed = *a->seed;
    if (a->calibration > 0) o.settings.calibration_examples = a->calibration;
    if (a->validation >= 0) o.settings.validation_examples = a->validation;
    if (a->test >= 0) o.settings.test_examples = a->test;
    if (a->sample >= 0) o.sample_examples = a->sample;
    if (a->corruption >= 0) o.corruption_examples = a->corruption;
    o.zoo = a->zoo;
    o.output = a->output;
    o.command = "amalgam bench " + a->zoo + " -o " + a->output + (a->quick ? " --quick" : "");
    for (const std::string& z : a->seed_zoos) {
      o.seed_zoos.emplace_back(z);
      o.command += " --seed-zoo " + z;
    }
    print_summary(run_bench(o), a->output);
  });
}

}  // namespace amalgam::cli
