// karcher (mergekit's Karcher mean): the Riemannian mean on the unit sphere of the flattened
// tensors' directions, scaled by their mean norm. The inputs are the models and, as mergekit
// gathers it, the base_model when one is given and not listed among them; all weigh 1/N.
//
//   u_i = W_i / |W_i| (inputs with |W_i| <= tol left out of the direction, not the norm)
//   u   = normalize(sum a_i u_i), then max_iter times:
//         T = sum a_i theta_i / sin(theta_i) (u_i - cos(theta_i) u), theta_i = acos(u . u_i)
//             (terms with theta_i < tol skipped); stop when |T| < tol;
//         u = normalize(cos|T| u + sin|T| T / |T|)
//   result = (sum_i |W_i| / N) u
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "core/parallel.h"
#include "merge/config.h"
#include "merge/method.h"
#include "merge/reductions.h"

namespace amalgam {
namespace {

class Karcher final : public MergeMethod {
 public:
  static constexpr const char* kName = "karcher";

  const MethodSpec& spec() const override {
    static const MethodSpec s{
        kName,
        "Riemannian (Karcher) mean of the models' directions, scaled by their mean norm",
        {{"max_iter", ParamSpec::Scope::Global, 10.0, 0, 1e6, "iterations of the mean's fixed point"},
         {"tol", ParamSpec::Scope::Global, 1e-5, 0, 1, "convergence and zero-norm tolerance"}},
        /*needs_base=*/false};
    return s;
  }

  void prepare(const MergeContext& ctx) override {
    include_base_ = ctx.base.has_value();
    for (const auto& c : ctx.candidates)
      if (ctx.base && std::filesystem::equivalent(c, *ctx.base)) include_base_ = false;
  }

  Tensor merge(const TensorJob& job) const override {
    const std::vector<Tensor> inputs = job_inputs_f32(job, include_base_ && job.has_base());
    if (inputs.size() == 1) return inputs.front().to(DType::F32);
    const size_t n = job.numel(), count = inputs.size();
    const double tol = job.param("tol");
    const auto max_iter = static_cast<int>(job.param("max_iter"));
    std::vector<const float*> x;
    std::vector<double> norms;
    for (const auto& t : inputs) {
      x.push_back(t.data<float>().data());
      const float* v = x.back();
      norms.push_back(std::sqrt(chunked_sums<1>(n, [&](size_t b, size_t e, double* s) {
        for (size_t i = b; i < e; ++i) s[0] += static_cast<double>(v[i]) * v[i];
      })[0]));
    }
    std::vector<size_t> valid;
    for (size_t i = 0; i < count; ++i)
      if (norms[i] > tol) valid.push_back(i);
    Tensor out = Tensor::zeros(DType::F32, job.shape());
    if (valid.empty()) return out;
    const double alpha = 1.0 / static_cast<double>(valid.size());

    // u and T in float (a double copy of an embedding table would cost gigabytes), every
    // sum over them in double.
    std::vector<float> u(n, 0.0f), step(n);
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      for (size_t k = b; k < e; ++k) {
        double sum = 0;
        for (size_t i : valid) sum += alpha * x[i][k] / norms[i];
        u[k] = static_cast<float>(sum);
      }
    });
    const double u_norm = norm(u);
    if (u_norm < tol) {
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
        for (size_t k = b; k < e; ++k) u[k] = static_cast<float>(x[valid[0]][k] / norms[valid[0]]);
      });
    } else {
      scale(u, 1 / u_norm);
    }
    for (int iter = 0; iter < max_iter; ++iter) {
      std::vector<double> coefficient(count, 0.0), cosine(count, 0.0);
      for (size_t i : valid) {
        const float* v = x[i];
        const double c = chunked_sums<1>(n,
                                         [&](size_t b, size_t e, double* s) {
                                           for (size_t k = b; k < e; ++k) s[0] += static_cast<double>(u[k]) * v[k];
                                         })[0] /
                         norms[i];
        cosine[i] = std::clamp(c, -1.0, 1.0);
        const double theta = std::acos(cosine[i]);
        if (theta >= tol) coefficient[i] = alpha * theta / std::sin(theta);
      }
      // T = sum_i c_i (u_i - cos_i u)
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
        for (size_t k = b; k < e; ++k) {
          double t = 0;
          for (size_t i : valid) t += coefficient[i] * (x[i][k] / norms[i] - cosine[i] * u[k]);
          step[k] = static_cast<float>(t);
        }
      });
      const double t_norm = norm(step);
      if (t_norm < tol) break;
      const double c = std::cos(t_norm), s = std::sin(t_norm) / t_norm;
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
        for (size_t k = b; k < e; ++k) u[k] = static_cast<float>(c * u[k] + s * step[k]);
      });
      const double renorm = norm(u);
      if (renorm > tol) scale(u, 1 / renorm);
    }
    double mean_norm = 0;
    for (double v : norms) mean_norm += v / static_cast<double>(count);
    float* res = out.mutable_data<float>().data();
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      for (size_t k = b; k < e; ++k) res[k] = static_cast<float>(mean_norm * u[k]);
    });
    return out;
  }

 private:
  static double norm(const std::vector<float>& v) {
    return std::sqrt(chunked_sums<1>(v.size(), [&](size_t b, size_t e, double* s) {
      for (size_t k = b; k < e; ++k) s[0] += static_cast<double>(v[k]) * v[k];
    })[0]);
  }
  static void scale(std::vector<float>& v, double f) {
    parallel_chunks(v.size(), kStreamChunk, [&](size_t b, size_t e) {
      for (size_t k = b; k < e; ++k) v[k] = static_cast<float>(v[k] * f);
    });
  }

  bool include_base_ = false;
};

AMALGAM_REGISTER_METHOD(Karcher);

}  // namespace
}  // namespace amalgam
