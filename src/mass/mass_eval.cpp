#include "mass/mass_eval.h"

#include <chrono>

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

nlohmann::ordered_json MassEvalResult::to_json(const std::vector<std::string>& task_names) const {
  nlohmann::ordered_json sizes = nlohmann::ordered_json::object(), tops = nlohmann::ordered_json::object();
  for (const auto& [size, count] : set_sizes) sizes[std::to_string(size)] = count;
  for (size_t t = 0; t < top_routes.size() && t < task_names.size(); ++t) tops[task_names[t]] = top_routes[t];
  return {{"task", task},
          {"split", split},
          {"route", to_string(scope)},
          {"head_rule", to_string(head_rule)},
          {"examples", examples},
          {"correct", correct},
          {"accuracy", accuracy},
          {"routing_accuracy", routing_accuracy ? nlohmann::ordered_json(*routing_accuracy) : nullptr},
          {"set_sizes", sizes},
          {"top_routes", tops},
          {"distinct_sets", distinct_sets},
          {"seconds", seconds},
          {"first_pass_seconds", first_pass_seconds},
          {"examples_per_second", examples_per_second}};
}

namespace {

void check_compatible(const MassRuntime& runtime, const TaskInfo& task, std::optional<int64_t> own, HeadRule rule) {
  const ClipVisionConfig& c = runtime.first_pass().config();
  runtime.preprocess().check_channels(c.num_channels);
  const ImageShape in = preprocessed_shape(runtime.preprocess(), task.image, c.num_channels);
  if (in.height != c.image_size || in.width != c.image_size)
    throw InputError("task '" + task.name + "': preprocessing gives " + std::to_string(in.height) + "x" +
                     std::to_string(in.width) + " images, the model takes " + std::to_string(c.image_size) + "x" +
                     std::to_string(c.image_size));
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

// The routing decision of every evaluated image (positions into `indices`).
struct Routes {
  std::vector<TaskSet> sets;
  std::vector<int64_t> top;
};

Routes route_split(const MassRuntime& runtime, const TaskSplit& split, std::span<const int64_t> indices,
                   const MassEvalOptions& options, Progress& progress) {
  Routes r;
  const int64_t n = static_cast<int64_t>(indices.size()), bs = std::max<int64_t>(1, options.batch_size);
  const int64_t tasks = runtime.task_count();
  std::vector<float> pixels;
  for (int64_t begin = 0; begin < n; begin += bs) {
    check_interrupt();
    const auto batch = indices.subspan(static_cast<size_t>(begin), static_cast<size_t>(std::min(bs, n - begin)));
    const auto count = static_cast<int64_t>(batch.size());
    pixels = preprocess_batch(split.images, batch, runtime.preprocess(), runtime.first_pass().config().num_channels);
    const std::vector<double> residuals = runtime.residuals(runtime.routing_tokens(pixels, count));
    if (options.scope == RouteScope::Batch) {
      const RouteDecision d = route(mean_residuals(residuals, tasks), runtime.router());
      r.sets.insert(r.sets.end(), static_cast<size_t>(count), d.tasks);
      r.top.insert(r.top.end(), static_cast<size_t>(count), d.top);
    } else {
      for (int64_t i = 0; i < count; ++i) {
        const RouteDecision d = route(
            std::span<const double>(residuals).subspan(static_cast<size_t>(i * tasks), static_cast<size_t>(tasks)),
            runtime.router());
        r.sets.push_back(d.tasks);
        r.top.push_back(d.top);
      }
    }
    progress.advance(batch.size(), 0);
  }
  return r;
}

// Classifies one batch of second-pass features by the head rule; counts the correct ones.
// A prediction is correct when the head that made it is the image's own task's and its class
// is the label (heads of other tasks predict in other label spaces).
int64_t count_correct(const MassRuntime& runtime, const Matrix& features, const TaskSet& set,
                      std::span<const int64_t> tops, std::span<const int64_t> labels, std::optional<int64_t> own,
                      HeadRule rule) {
  std::map<int64_t, Matrix> logits;
  auto logits_of = [&](int64_t t) -> const Matrix& {
    auto it = logits.find(t);
    if (it == logits.end()) it = logits.emplace(t, runtime.head(t).logits(features)).first;
    return it->second;
  };
  int64_t correct = 0;
  for (int64_t i = 0; i < features.rows; ++i) {
    int64_t chosen = rule == HeadRule::True ? *own : tops[static_cast<size_t>(i)];
    if (rule == HeadRule::MaxLogit) {
      float best = 0;
      for (size_t s = 0; s < set.size(); ++s) {
        const Matrix& l = logits_of(set[s]);
        const float top_logit = l(i, argmax(l, i));
        if (s == 0 || top_logit > best) {
          best = top_logit;
          chosen = set[s];
        }
      }
    }
    if (own && chosen == *own && argmax(logits_of(chosen), i) == labels[static_cast<size_t>(i)]) ++correct;
  }
  return correct;
}

}  // namespace

MassEvalResult evaluate_mass(MassRuntime& runtime, const TaskInfo& task, const TaskSplit& split,
                             const MassEvalOptions& options) {
  const std::optional<int64_t> own = runtime.task_index(task.name);
  check_compatible(runtime, task, own, options.head_rule);
  const auto indices = options.max_examples > 0 ? sample_indices(split.size(), options.max_examples, options.seed)
                                                : sample_indices(split.size(), split.size(), 0);
  const int64_t n = static_cast<int64_t>(indices.size()), bs = std::max<int64_t>(1, options.batch_size);
  MassEvalResult r;
  r.task = task.name;
  r.split = split.name;
  r.scope = options.scope;
  r.head_rule = options.head_rule;
  r.examples = n;
  r.top_routes.assign(static_cast<size_t>(runtime.task_count()), 0);
  Progress progress("mass eval " + task.name, static_cast<uint64_t>(2 * n), 0, options.quiet);
  const auto t0 = std::chrono::steady_clock::now();
  const Routes routes = route_split(runtime, split, indices, options, progress);
  r.first_pass_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::map<TaskSet, std::vector<int64_t>> groups;  // set -> positions in `indices`, in order
  for (int64_t i = 0; i < n; ++i) {
    groups[routes.sets[static_cast<size_t>(i)]].push_back(i);
    ++r.set_sizes[static_cast<int64_t>(routes.sets[static_cast<size_t>(i)].size())];
    ++r.top_routes[static_cast<size_t>(routes.top[static_cast<size_t>(i)])];
  }
  r.distinct_sets = static_cast<int64_t>(groups.size());
  if (own && n > 0)
    r.routing_accuracy = static_cast<double>(r.top_routes[static_cast<size_t>(*own)]) / static_cast<double>(n);

  std::vector<float> pixels;
  for (const auto& [set, members] : groups) {
    const auto model = runtime.model_for(set);
    for (size_t begin = 0; begin < members.size(); begin += static_cast<size_t>(bs)) {
      check_interrupt();
      const size_t end = std::min(members.size(), begin + static_cast<size_t>(bs));
      std::vector<int64_t> batch, tops, labels;
      for (size_t m = begin; m < end; ++m) {
        const auto pos = static_cast<size_t>(members[m]);
        batch.push_back(indices[pos]);
        tops.push_back(routes.top[pos]);
        labels.push_back(split.labels[static_cast<size_t>(indices[pos])]);
      }
      pixels = preprocess_batch(split.images, batch, runtime.preprocess(), model->config().num_channels);
      const Matrix features = model->features(pixels, static_cast<int64_t>(batch.size()));
      r.correct += count_correct(runtime, features, set, tops, labels, own, options.head_rule);
      progress.advance(batch.size(), 0);
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.accuracy = n ? static_cast<double>(r.correct) / static_cast<double>(n) : 0.0;
  r.examples_per_second = r.seconds > 0 ? static_cast<double>(n) / r.seconds : 0.0;
  return r;
}

}  // namespace amalgam::mass
