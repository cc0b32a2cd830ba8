// `amalgam bench ZOO -o REPORT/`: every method on the embedded zoo, measured the way the
// RegMean++ and MASS papers measure (experiments below), into REPORT/report.json,
// REPORT/report.md and REPORT/charts/ (gnuplot SVG and PNG).
//
//   in_domain    per-task test accuracy of every method on all tasks; each method's
//                hyperparameters chosen on a sample of the validation splits from its grid
//                (bench/runner.h), the same calibration examples for every data-aware one
//   unseen       merge all tasks but two, evaluate the two held-out tasks with their own heads
//   corruptions  four tasks' test splits under the seven corruptions (zoo/corruptions.h)
//   sequential   tasks arrive two at a time in seeded orders; the previous merge joins the next
//                as one candidate (the RegMean++ paper's protocol; RegMean carries its summed
//                statistics); normalized accuracy over the tasks seen so far after each step
//   num_tasks    2, 4, 6, ... tasks (seeded subsets), normalized accuracy
//   cost         wall time, CPU time and peak memory of every method's statistics and merge
//                (each runs as its own process), MASS's bundle size and latency
//
// Accuracies are percentages; normalized accuracy is merged / fine-tuned on the same images.
// With several zoos (BenchOptions::seed_zoos) the in-domain rows are means over them, with the
// sample standard deviation of each method's average.
// Same zoo, options and seed: the same accuracies (timings vary, accuracies do not).
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/runner.h"

namespace amalgam {

struct BenchOptions {
  std::filesystem::path zoo, output;
  // More zoos with the same tasks and independently seeded fine-tunes (`zoo build --base-from
  // ZOO --finetune-seed S`, or whole zoos): the in-domain experiment runs on each, and its
  // rows give the mean over all zoos with `average_sd` and `seeds`. The other experiments run
  // on `zoo` alone.
  std::vector<std::filesystem::path> seed_zoos;
  bool quick = false;
  bool force = false;
  bool keep_models = false;  // keep REPORT/work/models and stats (merged checkpoints)
  BenchSettings settings;
  int64_t sample_examples = 1000;      // per task, test images of every experiment but in_domain
  int64_t corruption_examples = 1000;  // per task and corruption
  int corruption_severity = 3;
  int unseen_splits = 2;                 // held-out pairs
  int sequential_orders = 3;             // seeded task orders
  int subsets_per_size = 3;              // seeded subsets per number of tasks (the full set: one)
  std::vector<std::string> experiments;  // empty: all of kBenchExperiments
  std::string command;                   // how it was invoked, for the report

  // The full benchmark, or `quick`: two grid points per method, 64 calibration and a few
  // hundred test images per task, one order / split / subset (for the small zoo: seconds).
  static BenchOptions preset(bool quick);
};

inline const std::vector<std::string> kBenchExperiments = {"in_domain", "unseen", "corruptions", "sequential",
                                                           "num_tasks"};

// Runs the experiments and writes the report directory (atomically; an existing one is
// replaced only with `force`). Returns report.json's content.
nlohmann::ordered_json run_bench(const BenchOptions& options);

}  // namespace amalgam
