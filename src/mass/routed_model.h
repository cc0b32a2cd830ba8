// Routed inference with a MASS bundle, in two passes:
//
//  1. the first-pass model (TSV-M of every task) runs only up to the routing block; its MLP
//     input gives the routing token of each image, and the router picks a set of tasks;
//  2. the model W0 + TSV-M(selected tasks' stored factors) runs the image whole. Models are
//     built per set and kept in a small least-recently-used cache keyed by the sorted set.
//
// The models are any vision family that holds its parameters (Model::parameters): a task's
// stored part of each parameter is found by the parameter's checkpoint name.
#pragma once

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "data/preprocess.h"
#include "io/safetensors.h"
#include "mass/bundle.h"
#include "mass/router.h"
#include "model/classifier_head.h"
#include "model/model.h"

namespace amalgam::mass {

// A bounded cache of values keyed by task set, least recently used evicted first. Keys are
// normalized (sorted, distinct), so {2, 0} and {0, 2} are one entry.
template <class Value>
class TaskSetCache {
 public:
  explicit TaskSetCache(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {}

  std::shared_ptr<const Value> get(const TaskSet& tasks, const std::function<std::shared_ptr<const Value>()>& build) {
    const TaskSet key = make_task_set(tasks);
    for (auto it = entries_.begin(); it != entries_.end(); ++it)
      if (it->first == key) {
        entries_.splice(entries_.begin(), entries_, it);  // now the most recently used
        ++hits_;
        return entries_.front().second;
      }
    std::shared_ptr<const Value> value = build();
    ++builds_;
    entries_.emplace_front(key, value);
    if (entries_.size() > capacity_) entries_.pop_back();
    return value;
  }

  bool contains(const TaskSet& tasks) const {
    const TaskSet key = make_task_set(tasks);
    for (const auto& e : entries_)
      if (e.first == key) return true;
    return false;
  }
  size_t size() const { return entries_.size(); }
  size_t builds() const { return builds_; }  // misses
  size_t hits() const { return hits_; }

 private:
  size_t capacity_;
  size_t builds_ = 0;
  size_t hits_ = 0;
  std::list<std::pair<TaskSet, std::shared_ptr<const Value>>> entries_;  // most recent first
};

class MassRuntime {
 public:
  // Opens the bundle and its base, checks every factor against the base's shapes, and loads
  // the first-pass model and the heads. InputError naming the file and tensor otherwise.
  explicit MassRuntime(const std::filesystem::path& bundle, size_t cache_capacity = 4);

  const BundleInfo& info() const { return info_; }
  int64_t task_count() const { return static_cast<int64_t>(info_.tasks.size()); }
  std::optional<int64_t> task_index(std::string_view name) const;
  const Model& base() const { return *base_; }
  const Model& first_pass() const { return *first_pass_; }
  const ImageInput& image_input() const { return image_; }
  const ImageProcessorConfig& preprocess() const { return preprocess_; }
  const ClassifierHead& head(int64_t task) const { return heads_.at(static_cast<size_t>(task)); }
  const RouterConfig& router() const { return info_.router; }
  // Routes with another layer, token, mode, rank... of the same bundle (the tasks must be the
  // bundle's): `mass eval` tries router settings without rebuilding. InputError naming
  // `source` (router.json by default) when the layer is not a block or the rank exceeds the
  // stored one.
  void set_router(const RouterConfig& router, const std::filesystem::path& source = {});

  // Diagnostic: route on another checkpoint's tokens (a task's own fine-tune shows whether the
  // stored subspaces separate the tasks at all) instead of the first pass's. InputError when
  // its shape differs from the base's.
  void set_routing_model(const std::filesystem::path& checkpoint);

  // The first pass, stopped after the routing block: each image's routing token, [batch, width].
  Matrix routing_tokens(std::span<const float> pixels, int64_t batch) const;
  // r_t of every token against every task's subspace: [rows * tasks], row-major.
  std::vector<double> residuals(const Matrix& tokens) const;

  // The second-pass model for a set of tasks, built on first use and cached.
  std::shared_ptr<const Model> model_for(const TaskSet& tasks);
  // The same, built afresh (not cached).
  std::unique_ptr<Model> build_model(const TaskSet& tasks) const;
  bool is_cached(const TaskSet& tasks) const { return cache_.contains(tasks); }
  size_t models_built() const { return cache_.builds(); }

 private:
  BundleInfo info_;
  std::unique_ptr<Model> base_;
  std::unique_ptr<Model> first_pass_;
  ImageInput image_;
  std::unique_ptr<Model> routing_model_;  // set_routing_model(); the first pass otherwise
  ImageProcessorConfig preprocess_;
  std::vector<ClassifierHead> heads_;
  std::vector<std::unique_ptr<SafetensorsReader>> factors_;
  std::vector<Matrix> routing_vt_;  // each task's Vt of the routing block's MLP input weight
  TaskSetCache<Model> cache_;
};

}  // namespace amalgam::mass
