// Accuracy of an encoder + head on a task split: the measurement every merge is judged by.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/preprocess.h"
#include "data/task.h"
#include "model/classifier_head.h"
#include "model/model.h"

namespace amalgam {

struct EvalOptions {
  int64_t batch_size = 256;  // the forward may split it across threads (Model::forward)
  int64_t max_examples = 0;  // 0: the whole split; otherwise a seeded sample of this many
  uint64_t seed = 0;
  bool quiet = false;
};

struct EvalResult {
  std::string task;
  std::string split;
  int64_t examples = 0;
  int64_t correct = 0;
  double accuracy = 0;
  double loss = 0;  // mean softmax cross-entropy, natural log
  std::vector<std::string> class_names;
  std::vector<int64_t> class_examples;
  std::vector<double> class_accuracy;  // NaN-free: a class without examples reports 0 with 0 examples
  double seconds = 0;
  double examples_per_second = 0;

  nlohmann::ordered_json to_json() const;
};

// Checks that the model (a vision family's), preprocessing, task and head fit together
// (InputError saying which part disagrees), then runs the split in batches.
EvalResult evaluate(const Model& model, const ImageProcessorConfig& preprocess, const TaskInfo& task,
                    const TaskSplit& split, const ClassifierHead& head, const EvalOptions& options);

}  // namespace amalgam
