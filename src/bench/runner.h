// The building blocks of `amalgam bench` (bench/bench.h runs the experiments with them):
//
//   - the methods compared and their validation grids (`bench_methods`);
//   - `BenchRunner`, which owns a zoo's tasks, heads and evaluation splits and turns
//     "merge these fine-tunes with this method and these parameters" into a merge config,
//     runs it as its own `amalgam merge` process (so that its time and peak memory are its
//     own), and measures the result's accuracy on any task split.
//
// Every config and child log is kept under the work directory, so any number in the report
// can be reproduced by hand with the same command.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/child_process.h"
#include "data/preprocess.h"
#include "data/task.h"
#include "model/classifier_head.h"
#include "model/model.h"

namespace amalgam {

// A method's parameters, in the order they are written into the config.
using BenchParams = std::vector<std::pair<std::string, double>>;
nlohmann::ordered_json to_json(const BenchParams& params);
std::string describe(const BenchParams& params);  // "lambda=0.3 density=0.2", or "defaults"

// How a data-aware method gets its activations.
enum class Calibration {
  None,   // data-free
  Stats,  // each fine-tune's Grams measured once by `amalgam stats` (RegMean)
  Data,   // the merge itself runs the calibration images (RegMean++)
};

struct BenchMethod {
  std::string key;    // merge_method, and the report's key
  std::string label;  // for tables and charts
  Calibration calibration = Calibration::None;
  std::vector<BenchParams> grid;  // chosen from on the validation splits; one entry: nothing to choose
  bool weighted = true;           // takes a per-model `weight` (mergekit requires one for linear and TIES)
};

// linear, task_arithmetic, ties, dare_ties, tsv, regmean, regmean_plusplus. With `quick`,
// each grid keeps its first and last points.
std::vector<BenchMethod> bench_methods(bool quick);

// Accuracy in percent, per task.
using Scores = std::map<std::string, double>;
double mean_of(const Scores& scores, const std::vector<std::string>& tasks);

// One input of a merge: a fine-tune, or an earlier merge joining a later one (sequential
// merging) with the weight of the tasks it holds and their data or statistics.
struct BenchCandidate {
  std::filesystem::path model;
  double weight = 1;
  std::vector<std::filesystem::path> data;  // task directories (Calibration::Data)
  std::filesystem::path stats;              // statistics file (Calibration::Stats)
};

struct BenchSettings {
  uint64_t seed = 1;
  int64_t calibration_examples = 256;
  int64_t validation_examples = 500;  // per task, for choosing hyperparameters; 0: the whole split
  int64_t test_examples = 0;          // per task, for the in-domain table; 0: the whole split
  int64_t batch_size = 256;
  bool quiet = false;
};

class BenchRunner {
 public:
  // Reads the zoo's tasks, heads and val/test splits; `work` receives configs, logs, models.
  BenchRunner(const std::filesystem::path& zoo, const std::filesystem::path& work, const BenchSettings& settings);

  const std::vector<std::string>& tasks() const { return tasks_; }
  const BenchSettings& settings() const { return settings_; }
  std::filesystem::path base() const { return zoo_ / "base"; }
  std::filesystem::path finetuned(const std::string& task) const { return zoo_ / "finetuned" / task; }
  std::filesystem::path task_dir(const std::string& task) const { return zoo_ / "data" / task; }
  std::filesystem::path head_file(const std::string& task) const;
  // Whether the zoo's heads are zero-shot-like (class prototypes, zoo.json "heads"), and
  // whether it also has linear probes beside them (zoo/probes/), which then give the base's
  // linear-probe ceiling.
  bool zero_shot_heads() const { return zero_shot_heads_; }
  bool has_probe_ceiling() const { return zero_shot_heads_ && !probes_.empty(); }
  const std::filesystem::path& work() const { return work_; }
  const TaskInfo& task_info(const std::string& task) const { return infos_.at(task); }
  const TaskSplit& split(const std::string& task, const std::string& which) const;  // "val" or "test"

  // The fine-tune of `task` as a candidate, with its calibration for `method`.
  BenchCandidate candidate(const std::string& task, const BenchMethod& method);

  // Writes work/configs/<name>.yaml and runs `amalgam merge` on it into work/models/<name>,
  // with --no-audit unless `audit` (the time and memory measured are the method's own).
  // InputError naming the log when the merge fails.
  struct Merged {
    std::filesystem::path model;
    ChildUsage usage;
  };
  Merged merge(const std::string& name, const BenchMethod& method, const BenchParams& params,
               const std::vector<BenchCandidate>& candidates, bool audit = false);

  // `amalgam stats` of one fine-tune on its own task (RegMean's measurement step), once per
  // task; the usage of the run that made it.
  std::pair<std::filesystem::path, ChildUsage> statistics(const std::string& task);

  // Runs an `amalgam` command as a child process, its output in work/logs/<name>.log.
  ChildUsage run_amalgam(const std::string& name, std::vector<std::string> args);

  // Accuracy (percent) of `model` with each task's head on a seeded sample of
  // `max_examples` (0: all) of split `which` ("val" or "test") of each task in `tasks`.
  Scores accuracy(const std::filesystem::path& model, const std::vector<std::string>& tasks, const std::string& which,
                  int64_t max_examples) const;
  // ... of a loaded encoder on a given split of one task (a corrupted test split, say).
  double accuracy(const Model& encoder, const std::string& task, const TaskSplit& split, int64_t max_examples) const;
  // The base through each task's linear probe instead of its head (has_probe_ceiling() only).
  Scores probe_accuracy(const std::vector<std::string>& tasks, const std::string& which, int64_t max_examples) const;

  // Progress on stderr (unless quiet), prefixed with the elapsed time.
  void say(const char* format, ...) const __attribute__((format(printf, 2, 3)));

 private:
  double accuracy_through(const Model& encoder, const std::string& task, const TaskSplit& split,
                          const ClassifierHead& head, int64_t max_examples) const;

  std::filesystem::path zoo_, work_;
  BenchSettings settings_;
  std::vector<std::string> tasks_;
  std::map<std::string, TaskInfo> infos_;
  std::map<std::string, ClassifierHead> heads_, probes_;
  bool zero_shot_heads_ = false;
  std::map<std::string, std::map<std::string, TaskSplit>> splits_;  // task -> val/test
  std::map<std::string, std::pair<std::filesystem::path, ChildUsage>> stats_;
  ImageProcessorConfig preprocess_;
  double start_ = 0;
};

// Usage as the report writes it.
nlohmann::ordered_json to_json(const ChildUsage& usage);
// Several children's usage as one: times add up, peak memory is the largest.
ChildUsage combine(const std::vector<ChildUsage>& usages);

}  // namespace amalgam
