// multislerp (mergekit's Multi-SLERP): barycentric interpolation on the hypersphere of the
// flattened tensors (task vectors when a base_model is given): the directions u_i = X_i /
// (|X_i| + eps) are averaged with the normalized weights w_i, projected to the tangent space
// at their mean direction m, mapped back by the exponential map, and scaled by the weighted
// mean norm sum_i w_i |X_i|. When the weighted directions cancel (|mean| < eps), two models
// fall back to their weighted sum and more are an input error, as in mergekit.
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "merge/method.h"
#include "merge/reductions.h"

namespace amalgam {
namespace {

class MultiSlerp final : public MergeMethod {
 public:
  static constexpr const char* kName = "multislerp";

  const MethodSpec& spec() const override {
    static const MethodSpec s{
        kName,
        "spherical barycentre of the models (of their task vectors with a base)",
        {{"weight", ParamSpec::Scope::Model, std::nullopt, -1e6, 1e6, "the model's weight"},
         {"normalize_weights", ParamSpec::Scope::Global, 1.0, 0, 1, "divide the weights by their sum"},
         {"eps", ParamSpec::Scope::Global, 1e-8, 0, 1, "added to norms before dividing"}},
        /*needs_base=*/false};
    return s;
  }

  Tensor merge(const TensorJob& job) const override {
    const size_t models = job.model_count(), n = job.numel();
    std::vector<Tensor> inputs = job_inputs_f32(job, false);
    if (models == 1) return inputs.front().to(DType::F32);
    const bool with_base = job.has_base();
    const Tensor base = with_base ? job.base_f32() : Tensor();
    const float* b0 = with_base ? base.data<float>().data() : nullptr;
    // X_i = W_i - base, in place of the F32 copies.
    std::vector<std::vector<float>> x(models);
    for (size_t i = 0; i < models; ++i) {
      const float* w = inputs[i].data<float>().data();
      x[i].resize(n);
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
        for (size_t k = b; k < e; ++k) x[i][k] = b0 ? w[k] - b0[k] : w[k];
      });
    }
    inputs.clear();
    const double eps = job.param("eps");
    std::vector<double> w(models), norms(models), inv(models);
    double total = 0;
    for (size_t i = 0; i < models; ++i) total += w[i] = job.param("weight", i);
    if (job.param("normalize_weights") != 0)
      for (auto& v : w) v /= total;
    for (size_t i = 0; i < models; ++i) {
      norms[i] = std::sqrt(dot(x[i], x[i]));
      inv[i] = 1 / (norms[i] + eps);
    }
    std::vector<float> mean(n);
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      for (size_t k = b; k < e; ++k) {
        double s = 0;
        for (size_t i = 0; i < models; ++i) s += w[i] * x[i][k] * inv[i];
        mean[k] = static_cast<float>(s);
      }
    });
    const double mean_norm = std::sqrt(dot(mean, mean));
    Tensor out = Tensor::uninitialized(DType::F32, job.shape());
    float* res = out.mutable_data<float>().data();
    if (mean_norm < eps) {
      if (models != 2)
        throw InputError(job.config_source(), job.name(),
                         "multislerp: the weighted directions cancel out (antipodal models with balancing weights); "
                         "change the weights");
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
        for (size_t k = b; k < e; ++k)
          res[k] = static_cast<float>(w[0] * x[0][k] + w[1] * x[1][k] + (b0 ? b0[k] : 0.0f));
      });
      return out;
    }
    // The tangent vectors u_i - (u_i . m) m, weighted and summed.
    std::vector<double> along(models);
    for (size_t i = 0; i < models; ++i) along[i] = dot(x[i], mean) * inv[i] / (mean_norm * mean_norm);
    std::vector<float> tangent(n);
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      for (size_t k = b; k < e; ++k) {
        double s = 0;
        for (size_t i = 0; i < models; ++i) s += w[i] * (x[i][k] * inv[i] - along[i] * mean[k]);
        tangent[k] = static_cast<float>(s);
      }
    });
    const double tangent_norm = std::sqrt(dot(tangent, tangent)) + eps;
    double avg_norm = 0;
    for (size_t i = 0; i < models; ++i) avg_norm += norms[i] * w[i];
    const double c = std::cos(tangent_norm) / mean_norm, s = std::sin(tangent_norm) / tangent_norm;
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      for (size_t k = b; k < e; ++k)
        res[k] = static_cast<float>((c * mean[k] + s * tangent[k]) * avg_norm + (b0 ? b0[k] : 0.0f));
    });
    return out;
  }

 private:
  static double dot(const std::vector<float>& a, const std::vector<float>& b) {
    return chunked_sums<1>(a.size(), [&](size_t begin, size_t end, double* s) {
      for (size_t k = begin; k < end; ++k) s[0] += static_cast<double>(a[k]) * b[k];
    })[0];
  }
};

AMALGAM_REGISTER_METHOD(MultiSlerp);

}  // namespace
}  // namespace amalgam
