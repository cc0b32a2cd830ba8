// Whether a zoo sits in the merging papers' regime, measured by baselines no paper under study
// proposes, so that a recipe can be chosen by them without looking at RegMean, RegMean++,
// TSV-M or MASS:
//
//   R1  the base with zero-shot-like heads at least 30 points below the fine-tunes
//       (CLIP ViT-B/32 over the papers' eight tasks: 48.2 against 90.3);
//   R2  the simple average of the fine-tunes recovers at least a third of that gap,
//       (average - base) / (fine-tuned - base) >= 0.33 (CLIP ViT-B/32: 0.43, ViT-L/14: 0.52).
//
// Beside them, what explains a miss: each task's own vector alone at the average's weight
// (base + tau_t / T: what averaging would give if the other tasks' vectors did nothing), task
// arithmetic at the papers' lambda, and weight disentanglement (Ortiz-Jimenez et al., 2023):
// for each pair of tasks, the share of task i's images that base + tau_i + tau_j classifies
// differently from base + tau_i.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "data/preprocess.h"
#include "data/task.h"
#include "model/classifier_head.h"
#include "model/model.h"

namespace amalgam {

// One task of a built zoo, in memory, with the accuracies on `test` its build has already
// measured (the regime takes them rather than evaluating the same models again).
struct RegimeTask {
  std::string name;
  TaskSplit test;
  ClassifierHead head;  // zero-shot-like: the head the fine-tunes were trained through
  std::shared_ptr<const Model> finetuned;
  double base = 0;           // the base through `head`
  double probe_ceiling = 0;  // the base through a linear probe: the ceiling of its features
  double finetuned_accuracy = 0;
};

struct RegimeOptions {
  double task_arithmetic_lambda = 0.3;  // the papers' default
  int64_t pair_examples = 500;          // test images per task in the disentanglement pairs
};

// Every figure above as zoo.json's "regime" section (accuracies as fractions of the test split).
nlohmann::ordered_json measure_regime(const Model& base, std::span<const RegimeTask> tasks,
                                      const ImageProcessorConfig& preprocess, const RegimeOptions& options);

}  // namespace amalgam
