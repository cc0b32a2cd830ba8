// tsv (TSV-M, Task Singular Vectors: Merging, Gargiulo et al., CVPR 2025).
// For every 2-D matrix: SVD each task vector D_t = U_t S_t V_t^T and keep rank k (a
// 1/T share of min(d_out, d_in) by default); concatenate the factors of all tasks,
// replace U and V by their nearest orthonormal matrices (polar factor), which removes the
// interference between tasks' subspaces, and add alpha * U S V^T to the base (the math is
// in tsv_math.h, shared with MASS). Other tensors: the base plus the mean task vector.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/parallel.h"
#include "merge/audit.h"
#include "merge/method.h"
#include "merge/tsv_math.h"

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
    const int64_t m = job.shape()[0], n = job.shape()[1];
    const int64_t k = factor_rank(m, n, static_cast<int64_t>(job.model_count()), job.param("rank_fraction"));
    Tensor out = job.base_f32();
    if (k == 0) return out;
    const std::span<float> res = out.mutable_data<float>();
    // One task's SVD per thread, as MASS does: LAPACK runs single-threaded inside a parallel
    // region, so the bits do not depend on the thread count (a threaded SVD's reductions
    // did: 12,338 of 13.2M entries differed between 1 and 2 threads), and a thread that
    // shares its core with another process takes fewer tasks instead of holding up every
    // step of every SVD.
    std::vector<LowRankFactors> factors(job.model_count());
    std::vector<double> energy_kept(job.model_count());
    parallel_for(job.model_count(), [&](size_t t) {
      Matrix delta(m, n);
      job.read_model(t, 0, job.numel(), delta.data.data());
      for (size_t i = 0; i < job.numel(); ++i) delta.data[i] -= res[i];
      factors[t] = truncated_svd(delta, k);
      if (job.audit()) energy_kept[t] = kept_energy(delta.data, factor_view(factors[t]));
    });
    std::vector<FactorView> views;
    for (const auto& f : factors) views.push_back(factor_view(f));
    if (TensorAudit* audit = job.audit()) record_tsv_audit(*audit, k, energy_kept, views);
    add_tsv_merge(views, static_cast<float>(job.param("alpha")), m, n, res);  // W0 + alpha * U S V^T
    return out;
  }
};

AMALGAM_REGISTER_METHOD(Tsv);

}  // namespace
}  // namespace amalgam
