// Routed MASS inference on batches of images, and its accuracy on a task split: how often an
// input's most probable route is its own task, how many tasks were selected, the mean
// residual to every task's subspace, and the latency against one forward of a merged model.
//
// Images are processed as a deployment would: batch by batch, each batch routed (first pass
// up to the routing block), grouped by selected set, and each group run by its set's model
// (from the runtime's cache, or built on a miss).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
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

// Where the time of routed inference goes, summed over batches (seconds; preprocessing is
// left out of every figure, since a merged model needs it too).
struct MassLatency {
  double first_pass = 0;     // first pass up to the routing block, residuals, decisions
  double build = 0;          // building second-pass models on cache misses
  double second_pass = 0;    // second-pass forwards and heads
  double merged = 0;         // the reference: one forward + head of a merged model (the first-pass TSV-M)
  int64_t images = 0;        // images run
  int64_t forwards = 0;      // second-pass forwards (one per selected set per batch)
  int64_t cache_hits = 0;    // second-pass models found in the cache
  int64_t cache_misses = 0;  // ... and built

  double routed() const { return first_pass + build + second_pass; }
  MassLatency& operator+=(const MassLatency& other);
  // Per image, in seconds; the ratio routed / merged.
  double per_image() const;
  double merged_per_image() const;
  double ratio() const;
  nlohmann::ordered_json to_json() const;
};

// One image's routed prediction.
struct Prediction {
  RouteDecision route;  // selected set, most probable task, probabilities
  int64_t head = 0;     // the task whose head classified it
  int64_t label = 0;    // the predicted class, in that head's label space
  float logit = 0;      // its logit
};

struct RoutedBatch {
  std::vector<Prediction> predictions;  // one per image
  std::vector<double> residuals;        // [images * tasks]
};

// Routes and classifies `count` preprocessed images. `own` is the images' task when known
// (the true-head rule needs it). When `merged_reference` is set, also runs the first-pass
// model whole on the batch (timed into latency.merged) and returns its features there.
RoutedBatch run_routed_batch(MassRuntime& runtime, std::span<const float> pixels, int64_t count, RouteScope scope,
                             HeadRule rule, std::optional<int64_t> own, MassLatency& latency,
                             Matrix* merged_reference = nullptr);

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
  // Inputs whose most probable route is their own task, and inputs whose selected set holds
  // it; absent when the task is not one of the bundle's.
  std::optional<double> routing_accuracy;
  std::optional<double> own_task_selected;
  // The first-pass model (TSV-M of every task) with the task's own head on the same images.
  std::optional<double> first_pass_accuracy;
  std::map<int64_t, int64_t> set_sizes;  // tasks selected -> inputs
  std::vector<int64_t> top_routes;       // per bundle task: inputs whose most probable route it is
  std::vector<double> mean_residuals;    // per bundle task: mean r_t over the inputs
  int64_t distinct_sets = 0;
  double seconds = 0;  // wall time, preprocessing included
  double examples_per_second = 0;
  MassLatency latency;

  nlohmann::ordered_json to_json(const std::vector<std::string>& task_names) const;
};

// Checks that the bundle's model, preprocessing and the task fit together (and, for the
// true-head rule, that the task is one of the bundle's), then evaluates.
MassEvalResult evaluate_mass(MassRuntime& runtime, const TaskInfo& task, const TaskSplit& split,
                             const MassEvalOptions& options);

// Checks that a task's images fit the bundle's model and preprocessing (InputError otherwise).
void check_images(const MassRuntime& runtime, const TaskInfo& task);

}  // namespace amalgam::mass
