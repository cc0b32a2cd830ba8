// sce (Wan et al., 2024, FuseChat; mergekit's): Select, Calculate, Erase on the task vectors
// D_i = W_i - W0.
//   Select: with select_topk < 1, only the entries whose variance across the models (the
//     population variance) ranks in the top int(nonzero x select_topk) are kept, ties to the
//     lower index;
//   Calculate: each model weighs w_i = mean(D_i^2) / sum_j mean(D_j^2) (1/N when that sum is
//     below 1e-6);
//   Erase: per entry, only the models whose sign matches sign(sum_i D_i) (>= 0 counts as +)
//     are kept; W = W0 + sum_i w_i e_i D_i / max(sum_i w_i e_i, 1e-6).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/parallel.h"
#include "merge/method.h"
#include "merge/reductions.h"

namespace amalgam {
namespace {

class Sce final : public MergeMethod {
 public:
  static constexpr const char* kName = "sce";

  const MethodSpec& spec() const override {
    static const MethodSpec s{
        kName,
        "task vectors kept where they vary most across models, weighted by their energy, sign-elected",
        {{"select_topk", ParamSpec::Scope::Global, 1.0, 0, 1, "fraction of entries kept, by variance across models"}},
        /*needs_base=*/true};
    return s;
  }

  Tensor merge(const TensorJob& job) const override {
    const size_t models = job.model_count(), n = job.numel();
    const std::vector<Tensor> inputs = job_inputs_f32(job, true);
    const float* w0 = inputs.back().data<float>().data();
    std::vector<std::vector<float>> d(models, std::vector<float>(n));
    for (size_t i = 0; i < models; ++i) {
      const float* w = inputs[i].data<float>().data();
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
        for (size_t k = b; k < e; ++k) d[i][k] = w[k] - w0[k];
      });
    }
    const double topk = job.param("select_topk");
    if (topk < 1) select_by_variance(d, topk);

    std::vector<double> weight(models);
    for (size_t i = 0; i < models; ++i) {
      const auto& v = d[i];
      weight[i] = chunked_sums<1>(n,
                                  [&](size_t b, size_t e, double* s) {
                                    for (size_t k = b; k < e; ++k) s[0] += static_cast<double>(v[k]) * v[k];
                                  })[0] /
                  static_cast<double>(n);
    }
    const double total = std::accumulate(weight.begin(), weight.end(), 0.0);
    for (auto& v : weight) v = std::abs(total) < 1e-6 ? 1.0 / static_cast<double>(models) : v / total;

    Tensor out = Tensor::uninitialized(DType::F32, job.shape());
    float* res = out.mutable_data<float>().data();
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      for (size_t k = b; k < e; ++k) {
        double sum = 0;
        for (size_t i = 0; i < models; ++i) sum += d[i][k];
        const float elected = sum >= 0 ? 1.0f : -1.0f;
        double merged = 0, weights = 0;
        for (size_t i = 0; i < models; ++i) {
          const float sign = d[i][k] > 0 ? 1.0f : d[i][k] < 0 ? -1.0f : 0.0f;
          if (sign != elected) continue;
          merged += weight[i] * d[i][k];
          weights += weight[i];
        }
        res[k] = static_cast<float>(w0[k] + merged / std::max(weights, 1e-6));
      }
    });
    return out;
  }

 private:
  // Zeroes every model's entries outside the top int(nonzero x fraction) by variance.
  static void select_by_variance(std::vector<std::vector<float>>& d, double fraction) {
    const size_t models = d.size(), n = d.front().size();
    std::vector<double> variance(n);
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      for (size_t k = b; k < e; ++k) {
        double mean = 0, sq = 0;
        for (size_t i = 0; i < models; ++i) mean += d[i][k];
        mean /= static_cast<double>(models);
        for (size_t i = 0; i < models; ++i) sq += (d[i][k] - mean) * (d[i][k] - mean);
        variance[k] = sq / static_cast<double>(models);
      }
    });
    const auto nonzero =
        static_cast<size_t>(std::count_if(variance.begin(), variance.end(), [](double v) { return v != 0; }));
    const auto keep = static_cast<size_t>(static_cast<double>(nonzero) * fraction);
    std::vector<char> kept(n, 0);
    if (keep > 0) {
      std::vector<size_t> order(n);
      std::iota(order.begin(), order.end(), size_t{0});
      const auto before = [&](size_t x, size_t y) {
        return variance[x] != variance[y] ? variance[x] > variance[y] : x < y;
      };
      std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep - 1), order.end(), before);
      for (size_t r = 0; r < keep; ++r) kept[order[r]] = 1;
    }
    for (auto& v : d)
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
        for (size_t k = b; k < e; ++k)
          if (!kept[k]) v[k] = 0.0f;
      });
  }
};

AMALGAM_REGISTER_METHOD(Sce);

}  // namespace
}  // namespace amalgam
