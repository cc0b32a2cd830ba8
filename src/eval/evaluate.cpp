#include "eval/evaluate.h"

#include <chrono>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/progress.h"
#include "train/ops.h"

namespace amalgam {

nlohmann::ordered_json EvalResult::to_json() const {
  nlohmann::ordered_json per_class = nlohmann::ordered_json::array();
  for (size_t c = 0; c < class_accuracy.size(); ++c)
    per_class.push_back({{"class", c < class_names.size() ? class_names[c] : std::to_string(c)},
                         {"examples", class_examples[c]},
                         {"accuracy", class_accuracy[c]}});
  return {
      {"task", task},          {"split", split}, {"examples", examples}, {"correct", correct},
      {"accuracy", accuracy},  {"loss", loss},   {"seconds", seconds},   {"examples_per_second", examples_per_second},
      {"per_class", per_class}};
}

namespace {

void check_compatible(const ImageInput& image, int64_t feature_width, const ImageProcessorConfig& preprocess,
                      const TaskInfo& task, const ClassifierHead& head) {
  preprocess.check_channels(image.channels);
  const ImageShape in = preprocessed_shape(preprocess, task.image, image.channels);
  if (in.height != image.size || in.width != image.size)
    throw InputError("task '" + task.name + "': preprocessing gives " + std::to_string(in.height) + "x" +
                     std::to_string(in.width) + " images, the model takes " + std::to_string(image.size) + "x" +
                     std::to_string(image.size) + " (check preprocessor_config.json)");
  if (head.dim() != feature_width)
    throw InputError("head" + (head.task.empty() ? "" : " '" + head.task + "'") + " takes features of width " +
                     std::to_string(head.dim()) + ", the model gives " + std::to_string(feature_width));
  if (head.classes() != task.num_classes())
    throw InputError("head" + (head.task.empty() ? "" : " '" + head.task + "'") + " has " +
                     std::to_string(head.classes()) + " classes, task '" + task.name + "' has " +
                     std::to_string(task.num_classes()));
}

}  // namespace

EvalResult evaluate(const Model& model, const ImageProcessorConfig& preprocess, const TaskInfo& task,
                    const TaskSplit& split, const ClassifierHead& head, const EvalOptions& options) {
  const ImageInput image = image_input_of(model, "task '" + task.name + "'");
  check_compatible(image, model.head_width(), preprocess, task, head);
  const auto indices = options.max_examples > 0 ? sample_indices(split.size(), options.max_examples, options.seed)
                                                : sample_indices(split.size(), split.size(), 0);
  EvalResult r;
  r.task = task.name;
  r.split = split.name;
  r.class_names = task.classes;
  r.class_examples.assign(static_cast<size_t>(task.num_classes()), 0);
  std::vector<int64_t> class_correct(static_cast<size_t>(task.num_classes()), 0);
  double loss_sum = 0;
  const int64_t n = static_cast<int64_t>(indices.size()), bs = std::max<int64_t>(1, options.batch_size);
  Progress progress("eval " + task.name, static_cast<uint64_t>(n), 0, options.quiet, "images");
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t begin = 0; begin < n; begin += bs) {
    check_interrupt();
    const std::span<const int64_t> batch(indices.data() + begin, static_cast<size_t>(std::min(bs, n - begin)));
    const auto pixels = preprocess_batch(split.images, batch, preprocess, image.channels);
    const Matrix logits = head.logits(model.forward(ModelInput::of_images(pixels, static_cast<int64_t>(batch.size()))));
    std::vector<int64_t> labels;
    for (int64_t i : batch) labels.push_back(split.labels[static_cast<size_t>(i)]);
    std::vector<int64_t> predictions(labels.size());
    loss_sum += static_cast<double>(labels.size()) *
                train::softmax_cross_entropy<float>(logits.data.data(), logits.rows, logits.cols, labels, nullptr,
                                                    nullptr, predictions.data());
    for (size_t i = 0; i < labels.size(); ++i) {
      const auto y = static_cast<size_t>(labels[i]);
      ++r.class_examples[y];
      if (predictions[i] == labels[i]) ++class_correct[y];
    }
    progress.advance(batch.size(), 0);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.examples = n;
  for (size_t c = 0; c < class_correct.size(); ++c) {
    r.correct += class_correct[c];
    r.class_accuracy.push_back(
        r.class_examples[c] ? static_cast<double>(class_correct[c]) / static_cast<double>(r.class_examples[c]) : 0.0);
  }
  r.accuracy = n ? static_cast<double>(r.correct) / static_cast<double>(n) : 0.0;
  r.loss = n ? loss_sum / static_cast<double>(n) : 0.0;
  r.examples_per_second = r.seconds > 0 ? static_cast<double>(n) / r.seconds : 0.0;
  return r;
}

}  // namespace amalgam
