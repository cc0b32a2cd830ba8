#include "train/prototype_head.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/interrupt.h"

namespace amalgam::train {

ClassifierHead prototype_head(const Model& model, const Tensor& images, std::span<const int64_t> labels,
                              int64_t classes, const ImageProcessorConfig& preprocess, const PrototypeOptions& options,
                              const std::string& where) {
  // The first `per_class` images of each class, in split order (splits are shuffled when
  // written, so these are a fair sample, and the same ones on every run).
  std::vector<int64_t> chosen, taken(static_cast<size_t>(classes), 0);
  for (size_t i = 0; i < labels.size(); ++i) {
    const int64_t c = labels[i];
    if (c < 0 || c >= classes)
      throw InputError(where, "label " + std::to_string(c) + " of image " + std::to_string(i) + " is outside [0, " +
                                  std::to_string(classes) + ")");
    if (taken[static_cast<size_t>(c)] < options.per_class) {
      ++taken[static_cast<size_t>(c)];
      chosen.push_back(static_cast<int64_t>(i));
    }
  }
  for (int64_t c = 0; c < classes; ++c)
    if (taken[static_cast<size_t>(c)] == 0)
      throw InputError(where, "class " + std::to_string(c) + " has no image to make its prototype from");

  const int64_t dim = model.head_width(), channels = image_input_of(model, where).channels;
  std::vector<double> sums(static_cast<size_t>(classes * dim), 0.0);
  constexpr int64_t kBatch = 256;
  for (size_t begin = 0; begin < chosen.size(); begin += kBatch) {
    check_interrupt();
    const std::span<const int64_t> idx(chosen.data() + begin, std::min<size_t>(kBatch, chosen.size() - begin));
    const auto pixels = preprocess_batch(images, idx, preprocess, channels);
    Matrix f = model.forward(ModelInput::of_images(pixels, static_cast<int64_t>(idx.size())));
    normalize_rows(f);
    for (size_t i = 0; i < idx.size(); ++i) {
      double* sum = sums.data() + labels[static_cast<size_t>(idx[i])] * dim;
      const float* row = f.row(static_cast<int64_t>(i));
      for (int64_t d = 0; d < dim; ++d) sum[d] += row[d];
    }
  }
  ClassifierHead head;
  head.weight = Matrix(classes, dim);
  head.normalize_features = true;
  for (int64_t c = 0; c < classes; ++c) {
    const double* sum = sums.data() + c * dim;
    double norm = 0;
    for (int64_t d = 0; d < dim; ++d) norm += sum[d] * sum[d];
    norm = std::sqrt(norm);
    // A class whose images' features cancel exactly has no direction: a zero row (logit 0).
    const double scale = norm > 0 ? options.logit_scale / norm : 0.0;
    for (int64_t d = 0; d < dim; ++d) head.weight.row(c)[d] = static_cast<float>(sum[d] * scale);
  }
  return head;
}

}  // namespace amalgam::train
