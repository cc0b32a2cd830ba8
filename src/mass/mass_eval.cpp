#include "mass/mass_eval.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <stdexcept>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/progress.h"
#include "data/preprocess.h"

namespace amalgam::mass {

std::string to_string(HeadRule rule) {
  switch (rule) {
    case HeadRule::True:
      return "true";
    case HeadRule::MaxLogit:
      return "max-logit";
    case HeadRule::Router:
      return "router";
  }
  return "?";
}

std::string to_string(RouteScope scope) {
  return scope == RouteScope::Sample ? "sample" : "batch";
}

MassLatency& MassLatency::operator+=(const MassLatency& o) {
  first_pass += o.first_pass;
  build += o.build;
  second_pass += o.second_pass;
  merged += o.merged;
  images += o.images;
  forwards += o.forwards;
  cache_hits += o.cache_hits;
  cache_misses += o.cache_misses;
  return *this;
}

double MassLatency::per_image() const {
  return images ? routed() / static_cast<double>(images) : 0.0;
}

double MassLatency::merged_per_image() const {
  return images ? merged / static_cast<double>(images) : 0.0;
}

double MassLatency::ratio() const {
  return merged > 0 ? routed() / merged : 0.0;
}

nlohmann::ordered_json MassLatency::to_json() const {
  return {{"images", images},
          {"first_pass_seconds", first_pass},
          {"build_seconds", build},
          {"second_pass_seconds", second_pass},
          {"merged_seconds", merged},
          {"seconds_per_image", per_image()},
          {"merged_seconds_per_image", merged_per_image()},
          {"ratio", ratio()},
          {"forwards", forwards},
          {"cache_hits", cache_hits},
          {"cache_misses", cache_misses}};
}

nlohmann::ordered_json MassEvalResult::to_json(const std::vector<std::string>& task_names) const {
  nlohmann::ordered_json sizes = nlohmann::ordered_json::object(), tops = nlohmann::ordered_json::object(),
                         residuals = nlohmann::ordered_json::object();
  for (const auto& [size, count] : set_sizes) sizes[std::to_string(size)] = count;
  for (size_t t = 0; t < top_routes.size() && t < task_names.size(); ++t) tops[task_names[t]] = top_routes[t];
  for (size_t t = 0; t < mean_residuals.size() && t < task_names.size(); ++t)
    residuals[task_names[t]] = mean_residuals[t];
  auto optional = [](const std::optional<double>& v) { return v ? nlohmann::ordered_json(*v) : nullptr; };
  return {{"task", task},
          {"split", split},
          {"route", to_string(scope)},
          {"head_rule", to_string(head_rule)},
          {"examples", examples},
          {"correct", correct},
          {"accuracy", accuracy},
          {"routing_accuracy", optional(routing_accuracy)},
          {"own_task_selected", optional(own_task_selected)},
          {"first_pass_accuracy", optional(first_pass_accuracy)},
          {"set_sizes", sizes},
          {"top_routes", tops},
          {"mean_residuals", residuals},
          {"distinct_sets", distinct_sets},
          {"seconds", seconds},
          {"examples_per_second", examples_per_second},
          {"latency", latency.to_json()}};
}

void check_images(const MassRuntime& runtime, const TaskInfo& task) {
  const ImageInput& image = runtime.image_input();
  runtime.preprocess().check_channels(image.channels);
  const ImageShape in = preprocessed_shape(runtime.preprocess(), task.image, image.channels);
  if (in.height != image.size || in.width != image.size)
    throw InputError("task '" + task.name + "': preprocessing gives " + std::to_string(in.height) + "x" +
                     std::to_string(in.width) + " images, the model takes " + std::to_string(image.size) + "x" +
                     std::to_string(image.size));
}

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void check_compatible(const MassRuntime& runtime, const TaskInfo& task, std::optional<int64_t> own, HeadRule rule) {
  check_images(runtime, task);
  if (!own && rule == HeadRule::True) {
    std::string names;
    for (const auto& t : runtime.info().tasks) names += (names.empty() ? "" : ", ") + t;
    throw InputError("task '" + task.name + "' is not one of the bundle's tasks (" + names +
                     "): the true-head rule needs its head (use --head-rule max-logit or router)");
  }
  if (own && runtime.head(*own).classes() != task.num_classes())
    throw InputError("the bundle's head of task '" + task.name + "' has " +
                     std::to_string(runtime.head(*own).classes()) + " classes, the task has " +
                     std::to_string(task.num_classes()));
}

int64_t argmax(const Matrix& m, int64_t row) {
  int64_t best = 0;
  for (int64_t j = 1; j < m.cols; ++j)
    if (m(row, j) > m(row, best)) best = j;
  return best;
}

// One decision per image from its residuals, or one for the whole batch from their means.
std::vector<RouteDecision> decide(std::span<const double> residuals, int64_t count, int64_t tasks,
                                  const RouterConfig& router, RouteScope scope) {
  if (scope == RouteScope::Batch)
    return std::vector<RouteDecision>(static_cast<size_t>(count), route(mean_residuals(residuals, tasks), router));
  std::vector<RouteDecision> d;
  for (int64_t i = 0; i < count; ++i)
    d.push_back(route(residuals.subspan(static_cast<size_t>(i * tasks), static_cast<size_t>(tasks)), router));
  return d;
}

// The heads a rule lets classify an image: its own task's, the top route's, or every
// selected task's (the largest maximum logit wins, the first in set order on a tie).
std::vector<int64_t> candidate_heads(const Prediction& p, HeadRule rule, std::optional<int64_t> own) {
  if (rule == HeadRule::True) return {*own};
  if (rule == HeadRule::Router) return {p.route.top};
  return p.route.tasks;
}

// Classifies one group's second-pass features (`members`: the group's positions in the batch).
void classify(const MassRuntime& runtime, const Matrix& features, std::span<const int64_t> members, HeadRule rule,
              std::optional<int64_t> own, std::vector<Prediction>& predictions) {
  std::map<int64_t, Matrix> logits;
  auto logits_of = [&](int64_t t) -> const Matrix& {
    auto it = logits.find(t);
    if (it == logits.end()) it = logits.emplace(t, runtime.head(t).logits(features)).first;
    return it->second;
  };
  for (size_t i = 0; i < members.size(); ++i) {
    Prediction& p = predictions[static_cast<size_t>(members[i])];
    bool first = true;
    for (int64_t head : candidate_heads(p, rule, own)) {
      const Matrix& l = logits_of(head);
      const int64_t label = argmax(l, static_cast<int64_t>(i));
      if (first || l(static_cast<int64_t>(i), label) > p.logit) {
        p.head = head;
        p.label = label;
        p.logit = l(static_cast<int64_t>(i), label);
        first = false;
      }
    }
  }
}

// The pixels of a group of the batch's images, in group order.
std::vector<float> gather_images(std::span<const float> pixels, int64_t count, std::span<const int64_t> members) {
  const auto per_image = pixels.size() / static_cast<size_t>(count);
  std::vector<float> out;
  out.reserve(per_image * members.size());
  for (int64_t m : members) {
    const auto first = pixels.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(m) * per_image);
    out.insert(out.end(), first, first + static_cast<std::ptrdiff_t>(per_image));
  }
  return out;
}

}  // namespace

RoutedBatch run_routed_batch(MassRuntime& runtime, std::span<const float> pixels, int64_t count, RouteScope scope,
                             HeadRule rule, std::optional<int64_t> own, MassLatency& latency,
                             Matrix* merged_reference) {
  if (rule == HeadRule::True && !own)
    throw std::invalid_argument("run_routed_batch: the true-head rule needs the task");
  RoutedBatch out;
  auto t0 = Clock::now();
  out.residuals = runtime.residuals(runtime.routing_tokens(pixels, count));
  const std::vector<RouteDecision> decisions =
      decide(out.residuals, count, runtime.task_count(), runtime.router(), scope);
  latency.first_pass += since(t0);
  std::map<TaskSet, std::vector<int64_t>> groups;  // set -> positions in the batch, in order
  for (int64_t i = 0; i < count; ++i) {
    out.predictions.push_back({decisions[static_cast<size_t>(i)], 0, 0, 0.0f});
    groups[decisions[static_cast<size_t>(i)].tasks].push_back(i);
  }
  // Sets whose model is cached run first, so that building the others cannot evict them
  // before their turn.
  std::vector<const std::pair<const TaskSet, std::vector<int64_t>>*> order;
  for (const auto& g : groups) order.push_back(&g);
  std::stable_partition(order.begin(), order.end(), [&](const auto* g) { return runtime.is_cached(g->first); });
  for (const auto* group : order) {
    const auto& [set, members] = *group;
    const size_t built = runtime.models_built();
    t0 = Clock::now();
    const auto model = runtime.model_for(set);
    const bool miss = runtime.models_built() > built;
    (miss ? latency.build : latency.second_pass) += since(t0);
    ++(miss ? latency.cache_misses : latency.cache_hits);
    t0 = Clock::now();
    const auto size = static_cast<int64_t>(members.size());
    const std::vector<float> gathered = size == count ? std::vector<float>() : gather_images(pixels, count, members);
    const std::span<const float> input = size == count ? std::span<const float>(pixels) : gathered;
    const Matrix features = model->forward(ModelInput::of_images(input, size));
    classify(runtime, features, members, rule, own, out.predictions);
    latency.second_pass += since(t0);
    ++latency.forwards;
  }
  latency.images += count;
  if (merged_reference) {
    t0 = Clock::now();
    *merged_reference =
        runtime.head(own.value_or(0)).logits(runtime.first_pass().forward(ModelInput::of_images(pixels, count)));
    latency.merged += since(t0);
  }
  return out;
}

MassEvalResult evaluate_mass(MassRuntime& runtime, const TaskInfo& task, const TaskSplit& split,
                             const MassEvalOptions& options) {
  const std::optional<int64_t> own = runtime.task_index(task.name);
  check_compatible(runtime, task, own, options.head_rule);
  const auto indices = options.max_examples > 0 ? sample_indices(split.size(), options.max_examples, options.seed)
                                                : sample_indices(split.size(), split.size(), 0);
  const int64_t n = static_cast<int64_t>(indices.size()), bs = std::max<int64_t>(1, options.batch_size);
  const int64_t tasks = runtime.task_count();
  MassEvalResult r;
  r.task = task.name;
  r.split = split.name;
  r.scope = options.scope;
  r.head_rule = options.head_rule;
  r.examples = n;
  r.top_routes.assign(static_cast<size_t>(tasks), 0);
  r.mean_residuals.assign(static_cast<size_t>(tasks), 0.0);
  Progress progress("mass eval " + task.name, static_cast<uint64_t>(n), 0, options.quiet, "images");
  const auto t0 = Clock::now();
  std::set<TaskSet> sets;
  int64_t own_selected = 0, first_pass_correct = 0;
  std::vector<float> pixels;
  Matrix merged_logits;
  for (int64_t begin = 0; begin < n; begin += bs) {
    check_interrupt();
    const auto batch = std::span<const int64_t>(indices).subspan(static_cast<size_t>(begin),
                                                                 static_cast<size_t>(std::min(bs, n - begin)));
    const auto count = static_cast<int64_t>(batch.size());
    pixels = preprocess_batch(split.images, batch, runtime.preprocess(), runtime.image_input().channels);
    const RoutedBatch b =
        run_routed_batch(runtime, pixels, count, options.scope, options.head_rule, own, r.latency, &merged_logits);
    for (int64_t i = 0; i < count; ++i) {
      const Prediction& p = b.predictions[static_cast<size_t>(i)];
      const int64_t label = split.labels[static_cast<size_t>(batch[static_cast<size_t>(i)])];
      // A prediction is correct when the head that made it is the image's own task's and its
      // class is the label (heads of other tasks predict in other label spaces).
      if (own && p.head == *own && p.label == label) ++r.correct;
      if (own && argmax(merged_logits, i) == label) ++first_pass_correct;
      if (own && std::binary_search(p.route.tasks.begin(), p.route.tasks.end(), *own)) ++own_selected;
      ++r.set_sizes[static_cast<int64_t>(p.route.tasks.size())];
      ++r.top_routes[static_cast<size_t>(p.route.top)];
      sets.insert(p.route.tasks);
      for (int64_t t = 0; t < tasks; ++t)
        r.mean_residuals[static_cast<size_t>(t)] += b.residuals[static_cast<size_t>(i * tasks + t)];
    }
    progress.advance(batch.size(), 0);
  }
  r.seconds = since(t0);
  r.distinct_sets = static_cast<int64_t>(sets.size());
  const auto share = [&](int64_t count) { return static_cast<double>(count) / static_cast<double>(n); };
  if (n > 0) {
    for (double& m : r.mean_residuals) m /= static_cast<double>(n);
    r.accuracy = share(r.correct);
    if (own) {
      r.routing_accuracy = share(r.top_routes[static_cast<size_t>(*own)]);
      r.own_task_selected = share(own_selected);
      r.first_pass_accuracy = share(first_pass_correct);
    }
  }
  r.examples_per_second = r.seconds > 0 ? static_cast<double>(n) / r.seconds : 0.0;
  return r;
}

}  // namespace amalgam::mass
