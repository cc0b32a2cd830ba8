#include "zoo/regime.h"

#include <algorithm>

#include "core/interrupt.h"

namespace amalgam {

namespace {

// base + sum_k coefficients[k] * (tuned[k] - base), on flat parameters, in double.
std::unique_ptr<Model> combine(const Model& base, std::span<const float> flat_base,
                               std::span<const std::vector<float>* const> tuned, std::span<const double> coefficients) {
  std::vector<float> out(flat_base.size());
  for (size_t i = 0; i < out.size(); ++i) {
    double value = flat_base[i];
    for (size_t k = 0; k < tuned.size(); ++k)
      value += coefficients[k] * (static_cast<double>((*tuned[k])[i]) - flat_base[i]);
    out[i] = static_cast<float>(value);
  }
  return base.with_parameters(out);
}

// The class the model and head give each of the split's first `limit` images (0: all).
std::vector<int64_t> predict(const Model& model, const TaskSplit& split, const ClassifierHead& head,
                             const ImageProcessorConfig& preprocess, int64_t limit) {
  const int64_t channels = image_input_of(model, "task '" + split.name + "'").channels;
  const int64_t n = limit > 0 ? std::min(limit, split.size()) : split.size();
  std::vector<int64_t> classes;
  constexpr int64_t kBatch = 256;
  std::vector<int64_t> idx;
  for (int64_t begin = 0; begin < n; begin += kBatch) {
    check_interrupt();
    idx.clear();
    for (int64_t i = begin; i < std::min(n, begin + kBatch); ++i) idx.push_back(i);
    const auto pixels = preprocess_batch(split.images, idx, preprocess, channels);
    const Matrix logits = head.logits(model.forward(ModelInput::of_images(pixels, static_cast<int64_t>(idx.size()))));
    for (int64_t r = 0; r < logits.rows; ++r) {
      const float* row = logits.row(r);
      classes.push_back(std::max_element(row, row + logits.cols) - row);
    }
  }
  return classes;
}

double accuracy(const std::vector<int64_t>& predicted, const TaskSplit& split) {
  int64_t correct = 0;
  for (size_t i = 0; i < predicted.size(); ++i) correct += predicted[i] == split.labels[i];
  return predicted.empty() ? 0.0 : static_cast<double>(correct) / static_cast<double>(predicted.size());
}

double disagreement(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  int64_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
  return a.empty() ? 0.0 : static_cast<double>(differ) / static_cast<double>(a.size());
}

}  // namespace

nlohmann::ordered_json measure_regime(const Model& base, std::span<const RegimeTask> tasks,
                                      const ImageProcessorConfig& preprocess, const RegimeOptions& options) {
  const size_t count = tasks.size();
  const std::vector<float> flat_base = base.parameters();
  std::vector<std::vector<float>> flat(count);
  std::vector<const std::vector<float>*> all;
  for (size_t t = 0; t < count; ++t) {
    flat[t] = tasks[t].finetuned->parameters();
    if (flat[t].size() != flat_base.size())
      throw std::invalid_argument("measure_regime: task '" + tasks[t].name + "' is not a fine-tune of the base");
    all.push_back(&flat[t]);
  }
  const auto average = combine(base, flat_base, all, std::vector<double>(count, 1.0 / static_cast<double>(count)));
  const auto arithmetic = combine(base, flat_base, all, std::vector<double>(count, options.task_arithmetic_lambda));

  const char* keys[] = {"base", "probe_ceiling", "finetuned", "average", "task_arithmetic", "alone_at_average_weight"};
  std::vector<double> sums(std::size(keys), 0.0);
  nlohmann::ordered_json per_task = nlohmann::ordered_json::array();
  for (size_t t = 0; t < count; ++t) {
    const RegimeTask& task = tasks[t];
    const std::vector<const std::vector<float>*> own{&flat[t]};
    const double weight = 1.0 / static_cast<double>(count);
    const auto alone = combine(base, flat_base, own, std::span(&weight, 1));
    const double values[] = {task.base,
                             task.probe_ceiling,
                             task.finetuned_accuracy,
                             accuracy(predict(*average, task.test, task.head, preprocess, 0), task.test),
                             accuracy(predict(*arithmetic, task.test, task.head, preprocess, 0), task.test),
                             accuracy(predict(*alone, task.test, task.head, preprocess, 0), task.test)};
    nlohmann::ordered_json row = {{"task", task.name}};
    for (size_t k = 0; k < std::size(keys); ++k) {
      row[keys[k]] = values[k];
      sums[k] += values[k];
    }
    per_task.push_back(row);
  }
  nlohmann::ordered_json mean;
  for (size_t k = 0; k < std::size(keys); ++k) mean[keys[k]] = sums[k] / static_cast<double>(count);
  const double base_mean = mean["base"], tuned_mean = mean["finetuned"];
  const double gap = tuned_mean - base_mean;
  // A ratio of the gap (0 when there is none; meaningless, but defined, when it is negative).
  auto recovery = [&](const char* key) { return gap != 0 ? (mean[key].get<double>() - base_mean) / gap : 0.0; };

  // Disentanglement at full strength (task addition): base + tau_i + tau_j against base + tau_i
  // on task i's images, for every pair, in both directions.
  std::vector<std::vector<int64_t>> alone_predictions(count);
  for (size_t t = 0; t < count; ++t)
    alone_predictions[t] =
        predict(*tasks[t].finetuned, tasks[t].test, tasks[t].head, preprocess, options.pair_examples);
  nlohmann::ordered_json pairs = nlohmann::ordered_json::array();
  double disagreement_sum = 0;
  int64_t directions = 0;
  const double both[] = {1.0, 1.0};
  for (size_t i = 0; i < count; ++i)
    for (size_t j = i + 1; j < count; ++j) {
      const std::vector<const std::vector<float>*> ij{&flat[i], &flat[j]};
      const auto added = combine(base, flat_base, ij, both);
      const double on_i = disagreement(predict(*added, tasks[i].test, tasks[i].head, preprocess, options.pair_examples),
                                       alone_predictions[i]);
      const double on_j = disagreement(predict(*added, tasks[j].test, tasks[j].head, preprocess, options.pair_examples),
                                       alone_predictions[j]);
      pairs.push_back({{"tasks", {tasks[i].name, tasks[j].name}}, {"on_first", on_i}, {"on_second", on_j}});
      disagreement_sum += on_i + on_j;
      directions += 2;
    }

  return {{"task_arithmetic_lambda", options.task_arithmetic_lambda},
          {"tasks", per_task},
          {"mean", mean},
          {"gap", gap},
          {"average_recovery", recovery("average")},
          {"task_arithmetic_recovery", recovery("task_arithmetic")},
          {"alone_at_average_weight_recovery", recovery("alone_at_average_weight")},
          {"r1_gap_at_least_0_30", gap >= 0.30},
          {"r2_recovery_at_least_0_33", gap > 0 && recovery("average") >= 0.33},
          {"disentanglement",
           {{"scale", 1.0},
            {"examples_per_task", options.pair_examples},
            {"mean_disagreement", directions ? disagreement_sum / static_cast<double>(directions) : 0.0},
            {"pairs", pairs}}}};
}

}  // namespace amalgam
