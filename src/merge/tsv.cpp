// tsv (TSV-M, Task Singular Vectors: Merging, Gargiulo et al., CVPR 2025).
// For every 2-D matrix: SVD each task vector D_t = U_t S_t V_t^T and keep rank k (a
// 1/T share of min(d_out, d_in) by default); concatenate the factors of all tasks,
// replace U and V by their nearest orthonormal matrices (polar factor), which removes the
// interference between tasks' subspaces, and add alpha * U S V^T to the base. Other
// tensors: the base plus the mean task vector.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/parallel.h"
#include "linalg/linalg.h"
#include "merge/method.h"

namespace amalgam {
namespace {

class Tsv final : public MergeMethod {
 public:
  static constexpr const char* kName = "tsv";

  const MethodSpec& spec() const override {
    static const MethodSpec s{kName,
                              "TSV-M: low-rank task vectors, decorrelated by orthogonalising their singular vectors",
                              {{"alpha", ParamSpec::Scope::Global, 1.0, -1e6, 1e6, "scale of the merged task vector"},
                               {"rank_fraction", ParamSpec::Scope::Global, 0.0, 0, 1,
                                "rank kept per task as a fraction of min(d_out, d_in); 0 means 1/T"}},
                              /*needs_base=*/true};
    return s;
  }

  Tensor merge(const TensorJob& job) const override {
    return job.shape().size() == 2 ? merge_matrix(job) : mean_task_vector(job);
  }

 private:
  static Tensor mean_task_vector(const TensorJob& job) {
    Tensor out = job.base_f32();
    float* res = out.mutable_data<float>().data();
    const size_t models = job.model_count();
    parallel_chunks(job.numel(), kStreamChunk, [&](size_t b, size_t e) {
      thread_local std::vector<float> buffer(kStreamChunk), acc(kStreamChunk);
      float* buf = buffer.data();
      std::fill(acc.begin(), acc.begin() + static_cast<std::ptrdiff_t>(e - b), 0.0f);
      for (size_t t = 0; t < models; ++t) {
        job.read_model(t, b, e, buf);
        for (size_t i = 0; i < e - b; ++i) acc[i] += buf[i] - res[b + i];
      }
      for (size_t i = 0; i < e - b; ++i) res[b + i] += acc[i] / static_cast<float>(models);
    });
    return out;
  }

  static Tensor merge_matrix(const TensorJob& job) {
    const int64_t m = job.shape()[0], n = job.shape()[1], r = std::min(m, n);
    const int64_t tasks = static_cast<int64_t>(job.model_count());
    const double fraction = job.param("rank_fraction");
    int64_t k = fraction > 0 ? static_cast<int64_t>(fraction * static_cast<double>(r)) : r / tasks;
    k = std::clamp<int64_t>(k, 1, std::max<int64_t>(r, 1));
    Tensor out = job.base_f32();
    if (r == 0) return out;
    float* res = out.mutable_data<float>().data();

    Matrix u_all(m, tasks * k), vt_all(tasks * k, n);
    std::vector<float> s_all(static_cast<size_t>(tasks * k));
    Matrix delta(m, n);
    for (int64_t t = 0; t < tasks; ++t) {
      job.read_model(static_cast<size_t>(t), 0, job.numel(), delta.data.data());
      for (size_t i = 0; i < job.numel(); ++i) delta.data[i] -= res[i];
      const Svd d = svd(delta);
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(u_all.row(i) + t * k, d.u.row(i), static_cast<size_t>(k) * sizeof(float));
      for (int64_t j = 0; j < k; ++j) {
        s_all[static_cast<size_t>(t * k + j)] = d.s[static_cast<size_t>(j)];
        std::memcpy(vt_all.row(t * k + j), d.vt.row(j), static_cast<size_t>(n) * sizeof(float));
      }
    }
    Matrix u_orth = polar_factor(u_all);
    const Matrix vt_orth = polar_factor(vt_all);  // polar(V^T) = polar(V)^T
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < tasks * k; ++j) u_orth(i, j) *= s_all[static_cast<size_t>(j)];
    const float alpha = static_cast<float>(job.param("alpha"));
    Matrix merged(m, n);
    std::memcpy(merged.data.data(), res, job.numel() * sizeof(float));
    gemm(false, false, alpha, u_orth, vt_orth, 1.0f, merged);  // W0 + alpha * U S V^T
    std::memcpy(res, merged.data.data(), job.numel() * sizeof(float));
    return out;
  }
};

AMALGAM_REGISTER_METHOD(Tsv);

}  // namespace
}  // namespace amalgam
