// arcee_fusion (mergekit's Arcee Fusion): the model's change is kept only where it matters
// most. Per element, importance = |b - a| x KL(softmax(b_row) + eps || softmax(a_row) + eps)
// over the element's row (the last dimension; eps 1e-8), a the base and b the one model; the
// change is kept where importance >= median + 1.5 IQR of all importances (quantiles at
// sorted index floor(q (n - 1)), as mergekit takes them), else the base's value stays.
// mergekit estimates the quantiles of a tensor of more than a million elements from an
// unseeded random sample of one million; amalgam takes them from every element, so that
// the same inputs give the same bits.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "merge/method.h"

namespace amalgam {
namespace {

class ArceeFusion final : public MergeMethod {
 public:
  static constexpr const char* kName = "arcee_fusion";

  const MethodSpec& spec() const override {
    static const MethodSpec s{kName,
                              "the model's changes where their importance (change x the rows' KL divergence) is an "
                              "outlier, the base elsewhere",
                              {},
                              /*needs_base=*/true,
                              /*min_models=*/1,
                              /*max_models=*/1};
    return s;
  }

  Tensor merge(const TensorJob& job) const override {
    const size_t n = job.numel();
    const Tensor base = job.base_f32(), model = job.model_f32(0);
    const float* a = base.data<float>().data();
    const float* b = model.data<float>().data();
    const size_t length = job.shape().empty() ? n : static_cast<size_t>(job.shape().back());
    const size_t rows = length == 0 ? 0 : n / length;
    std::vector<double> importance(n);  // in double: a float could flip an entry at the threshold
    parallel_chunks(rows, 1, [&](size_t begin, size_t end) {
      for (size_t r = begin; r < end; ++r) {
        const float* ar = a + r * length;
        const float* br = b + r * length;
        const double kl = softmax_divergence(br, ar, length);
        for (size_t i = 0; i < length; ++i)
          importance[r * length + i] = std::abs(static_cast<double>(br[i]) - ar[i]) * kl;
      }
    });
    const double threshold = dynamic_threshold(importance);
    Tensor out = Tensor::uninitialized(DType::F32, job.shape());
    float* res = out.mutable_data<float>().data();
    parallel_chunks(n, kStreamChunk, [&](size_t begin, size_t end) {
      for (size_t k = begin; k < end; ++k) res[k] = importance[k] >= threshold ? b[k] : a[k];
    });
    return out;
  }

 private:
  // sum_i p_i log(p_i / q_i) with p = softmax(x) + eps, q = softmax(y) + eps.
  static double softmax_divergence(const float* x, const float* y, size_t n) {
    const double mx = *std::max_element(x, x + n), my = *std::max_element(y, y + n);
    double zx = 0, zy = 0;
    for (size_t i = 0; i < n; ++i) {
      zx += std::exp(x[i] - mx);
      zy += std::exp(y[i] - my);
    }
    double kl = 0;
    for (size_t i = 0; i < n; ++i) {
      const double p = std::exp(x[i] - mx) / zx + 1e-8, q = std::exp(y[i] - my) / zy + 1e-8;
      kl += p * std::log(p / q);
    }
    return kl;
  }

  // median + 1.5 (q3 - q1), each quantile the sorted value at index floor(q (n - 1)).
  static double dynamic_threshold(std::vector<double> values) {
    auto quantile = [&](double q) {
      const auto at = static_cast<size_t>(q * static_cast<double>(values.size() - 1));
      std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(at), values.end());
      return values[at];
    };
    const double median = quantile(0.5), q1 = quantile(0.25), q3 = quantile(0.75);
    return median + 1.5 * (q3 - q1);
  }
};

AMALGAM_REGISTER_METHOD(ArceeFusion);

}  // namespace
}  // namespace amalgam
