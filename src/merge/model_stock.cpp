// model_stock (Jang et al., 2024; mergekit's): the fine-tunes' average pulled toward the base
// by how far apart their task vectors point. With D_i = W_i - W0 and cos the mean over pairs
// i < j of D_i . D_j / max(|D_i| |D_j|, 1e-6) (clamped to [-1, 1]),
//   t = N cos / (1 + (N - 1) cos),   W = t mean_i(W_i) + (1 - t) W0,
// over each flattened tensor, or with filter_wise over each row (a vector is one row).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "merge/method.h"
#include "merge/reductions.h"

namespace amalgam {
namespace {

class ModelStock final : public MergeMethod {
 public:
  static constexpr const char* kName = "model_stock";

  const MethodSpec& spec() const override {
    static const MethodSpec s{kName,
                              "the models' average, moved toward the base by the angle between their task vectors",
                              {{"filter_wise", ParamSpec::Scope::Global, 0.0, 0, 1, "one angle per row"}},
                              /*needs_base=*/true,
                              /*min_models=*/2};
    return s;
  }

  Tensor merge(const TensorJob& job) const override {
    const size_t models = job.model_count(), n = job.numel();
    const std::vector<Tensor> inputs = job_inputs_f32(job, true);
    std::vector<const float*> w;
    for (const auto& t : inputs) w.push_back(t.data<float>().data());
    const float* w0 = w.back();
    const Shape& shape = job.shape();
    const size_t length = job.param("filter_wise") != 0 && !shape.empty() ? static_cast<size_t>(shape.back()) : n;
    const size_t rows = n / std::max<size_t>(length, 1);
    const size_t pairs = models * (models - 1) / 2;
    Tensor out = Tensor::uninitialized(DType::F32, shape);
    float* res = out.mutable_data<float>().data();

    // Per row: every pair's dot product and every model's squared norm, then t.
    auto interpolate = [&](size_t first, std::vector<double> sums) {
      double cos_sum = 0;
      for (size_t i = 0, p = 0; i < models; ++i)
        for (size_t j = i + 1; j < models; ++j, ++p)
          cos_sum += std::clamp(sums[p] / std::max(std::sqrt(sums[pairs + i] * sums[pairs + j]), 1e-6), -1.0, 1.0);
      const double c = cos_sum / static_cast<double>(pairs), count = static_cast<double>(models);
      const double t = count * c / (1 + (count - 1) * c);
      for (size_t k = first; k < first + length; ++k) {
        double mean = 0;
        for (size_t i = 0; i < models; ++i) mean += w[i][k];
        res[k] = static_cast<float>(t * mean / count + (1 - t) * w0[k]);
      }
    };
    auto add_row = [&](size_t begin, size_t end, double* s) {
      for (size_t k = begin; k < end; ++k) {
        for (size_t i = 0, p = 0; i < models; ++i) {
          const double di = static_cast<double>(w[i][k]) - w0[k];
          s[pairs + i] += di * di;
          for (size_t j = i + 1; j < models; ++j, ++p) s[p] += di * (static_cast<double>(w[j][k]) - w0[k]);
        }
      }
    };
    if (rows == 1) {
      // One vector: summed chunk by chunk in a fixed order.
      const size_t chunks = (n + kStreamChunk - 1) / kStreamChunk;
      std::vector<std::vector<double>> partial(chunks, std::vector<double>(pairs + models, 0.0));
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) { add_row(b, e, partial[b / kStreamChunk].data()); });
      std::vector<double> sums(pairs + models, 0.0);
      for (const auto& p : partial)
        for (size_t k = 0; k < sums.size(); ++k) sums[k] += p[k];
      interpolate(0, std::move(sums));
      return out;
    }
    parallel_chunks(rows, 1, [&](size_t begin, size_t end) {
      for (size_t r = begin; r < end; ++r) {
        std::vector<double> sums(pairs + models, 0.0);
        add_row(r * length, (r + 1) * length, sums.data());
        interpolate(r * length, std::move(sums));
      }
    });
    return out;
  }
};

AMALGAM_REGISTER_METHOD(ModelStock);

}  // namespace
}  // namespace amalgam
