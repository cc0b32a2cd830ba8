// nuslerp (mergekit's NuSLERP): slerp between exactly two models at t = w_2 / (w_1 + w_2)
// (0.5 when the weights sum to zero), on their task vectors when a base_model is given.
// With nuslerp_flatten (the default) each tensor is one vector; without it, each vector
// along the last dimension (its rows) is slerped on its own, or with nuslerp_row_wise each
// vector along the first dimension. Directions are normalized with norms clamped at 1e-7;
// vectors whose sin(theta) is below 1e-8 are interpolated linearly.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "merge/method.h"
#include "merge/reductions.h"

namespace amalgam {
namespace {

class NuSlerp final : public MergeMethod {
 public:
  static constexpr const char* kName = "nuslerp";

  const MethodSpec& spec() const override {
    static const MethodSpec s{
        kName,
        "slerp between two models by their weights, per tensor or per row/column, on task vectors with a base",
        {{"weight", ParamSpec::Scope::Model, std::nullopt, -1e6, 1e6, "the model's weight"},
         {"nuslerp_flatten", ParamSpec::Scope::Global, 1.0, 0, 1, "one vector per tensor"},
         {"nuslerp_row_wise", ParamSpec::Scope::Global, 0.0, 0, 1,
          "without flatten: vectors along the first dimension instead of the last"}},
        /*needs_base=*/false,
        /*min_models=*/2,
        /*max_models=*/2};
    return s;
  }

  Tensor merge(const TensorJob& job) const override {
    const double w0 = job.param("weight", 0), w1 = job.param("weight", 1);
    const double t = std::abs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1);
    const size_t n = job.numel();
    const Tensor a = job.model_f32(0), b = job.model_f32(1);
    const Tensor base = job.has_base() ? job.base_f32() : Tensor();
    const float* pa = a.data<float>().data();
    const float* pb = b.data<float>().data();
    const float* p0 = job.has_base() ? base.data<float>().data() : nullptr;
    auto v0 = [&](size_t k) { return p0 ? static_cast<double>(pa[k]) - p0[k] : static_cast<double>(pa[k]); };
    auto v1 = [&](size_t k) { return p0 ? static_cast<double>(pb[k]) - p0[k] : static_cast<double>(pb[k]); };

    // Vector j holds elements j * outer_stride + i * inner_stride, i < length.
    const Shape& shape = job.shape();
    size_t vectors = 1, length = n, outer_stride = 0, inner_stride = 1;
    if (job.param("nuslerp_flatten") == 0 && shape.size() >= 2) {
      if (job.param("nuslerp_row_wise") != 0) {
        length = static_cast<size_t>(shape.front());
        vectors = n / length;
        outer_stride = 1;
        inner_stride = vectors;
      } else {
        length = static_cast<size_t>(shape.back());
        vectors = n / length;
        outer_stride = length;
      }
    }
    Tensor out = Tensor::uninitialized(DType::F32, shape);
    float* res = out.mutable_data<float>().data();
    auto slerp_vector = [&](size_t j, double dot, double n0, double n1) {
      const double u0 = std::max(std::sqrt(n0), 1e-7), u1 = std::max(std::sqrt(n1), 1e-7);
      const double theta = std::acos(std::clamp(dot / (u0 * u1), -1.0, 1.0));
      const double sin_theta = std::sin(theta);
      const bool colinear = std::abs(sin_theta) < 1e-8;
      const double s0 = colinear ? 1 - t : std::sin((1 - t) * theta) / sin_theta;
      const double s1 = colinear ? t : std::sin(t * theta) / sin_theta;
      for (size_t i = 0; i < length; ++i) {
        const size_t k = j * outer_stride + i * inner_stride;
        res[k] = static_cast<float>(s0 * v0(k) + s1 * v1(k) + (p0 ? p0[k] : 0.0f));
      }
    };
    if (vectors == 1) {
      const auto [dot, n0, n1] = chunked_sums<3>(n, [&](size_t b, size_t e, double* s) {
        for (size_t k = b; k < e; ++k) {
          s[0] += v0(k) * v1(k);
          s[1] += v0(k) * v0(k);
          s[2] += v1(k) * v1(k);
        }
      });
      slerp_vector(0, dot, n0, n1);
      return out;
    }
    parallel_chunks(vectors, 1, [&](size_t begin, size_t end) {
      for (size_t j = begin; j < end; ++j) {
        double dot = 0, n0 = 0, n1 = 0;
        for (size_t i = 0; i < length; ++i) {
          const size_t k = j * outer_stride + i * inner_stride;
          dot += v0(k) * v1(k);
          n0 += v0(k) * v0(k);
          n1 += v1(k) * v1(k);
        }
        slerp_vector(j, dot, n0, n1);
      }
    });
    return out;
  }
};

AMALGAM_REGISTER_METHOD(NuSlerp);

}  // namespace
}  // namespace amalgam
