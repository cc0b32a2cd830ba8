// Accuracy of routed MASS inference on a task split, and how the router behaved: how often
// an input's most probable route is its own task, and how many tasks were selected.
//
// The split is routed first (first pass up to the routing block, for every image), then the
// images are grouped by selected set, so each set's model is built once and runs its images
// in batches.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/task.h"
#include "mass/routed_model.h"

namespace amalgam::mass {

// Which head classifies the second pass's features.
enum class HeadRule {
  True,      // the task's own head (the task is known)
  MaxLogit,  // every selected task's head; the head with the largest maximum logit wins
  Router,    // the head of the most probable route
};
// Per image, or one decision per batch from the batch's mean residuals.
enum class RouteScope { Sample, Batch };

std::string to_string(HeadRule rule);
std::string to_string(RouteScope scope);

struct MassEvalOptions {
  int64_t batch_size = 32;
  int64_t max_examples = 0;  // 0: the whole split; otherwise a seeded sample (as `amalgam eval`)
  uint64_t seed = 0;
  RouteScope scope = RouteScope::Sample;
  HeadRule head_rule = HeadRule::True;
  bool quiet = false;
};

struct MassEvalResult {
  std::string task, split;
  RouteScope scope = RouteScope::Sample;
  HeadRule head_rule = HeadRule::True;
  int64_t examples = 0;
  int64_t correct = 0;
  double accuracy = 0;
  // Inputs whose most probable route is their own task; absent when the task is not one of
  // the bundle's.
  std::optional<double> routing_accuracy;
  std::map<int64_t, int64_t> set_sizes;  // tasks selected -> inputs
  std::vector<int64_t> top_routes;       // per bundle task: inputs whose most probable route it is
  int64_t distinct_sets = 0;
  double seconds = 0;  // both passes and model building
  double first_pass_seconds = 0;
  double examples_per_second = 0;

  nlohmann::ordered_json to_json(const std::vector<std::string>& task_names) const;
};

// Checks that the bundle's model, preprocessing and the task fit together (and, for the
// true-head rule, that the task is one of the bundle's), then evaluates.
MassEvalResult evaluate_mass(MassRuntime& runtime, const TaskInfo& task, const TaskSplit& split,
                             const MassEvalOptions& options);

}  // namespace amalgam::mass
