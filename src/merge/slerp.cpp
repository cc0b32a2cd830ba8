// slerp: spherical interpolation between the base (t = 0) and one other model (t = 1), on
// each tensor flattened to a vector, as mergekit computes it: the angle comes from the
// normalised vectors, the interpolation applies to the originals, and nearly colinear
// vectors (|cos| > 0.9995) fall back to linear interpolation.
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "merge/method.h"
#include "merge/reductions.h"

namespace amalgam {
namespace {

class Slerp final : public MergeMethod {
 public:
  static constexpr const char* kName = "slerp";

  const MethodSpec& spec() const override {
    static const MethodSpec s{kName,
                              "spherical interpolation between the base and one model",
                              {{"t", ParamSpec::Scope::Global, std::nullopt, 0, 1, "0 gives the base, 1 the model"}},
                              /*needs_base=*/true,
                              /*min_models=*/1,
                              /*max_models=*/1};
    return s;
  }

  Tensor merge(const TensorJob& job) const override {
    const size_t n = job.numel();
    const double t = job.param("t");
    // Dot product and norms, summed per chunk and then in chunk order: the same bits
    // whatever the thread count.
    const size_t chunks = (n + kStreamChunk - 1) / kStreamChunk;
    std::vector<double> dot(chunks), norm0(chunks), norm1(chunks);
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      const auto [v0, v1] = base_and_model_chunk(job, b, e);
      double d = 0, a = 0, c = 0;
      for (size_t i = 0; i < e - b; ++i) {
        d += static_cast<double>(v0[i]) * v1[i];
        a += static_cast<double>(v0[i]) * v0[i];
        c += static_cast<double>(v1[i]) * v1[i];
      }
      dot[b / kStreamChunk] = d;
      norm0[b / kStreamChunk] = a;
      norm1[b / kStreamChunk] = c;
    });
    double d = 0, a = 0, c = 0;
    for (size_t i = 0; i < chunks; ++i) d += dot[i], a += norm0[i], c += norm1[i];
    const double scale0 = std::sqrt(a) > kEps ? std::sqrt(a) : 1.0;
    const double scale1 = std::sqrt(c) > kEps ? std::sqrt(c) : 1.0;
    const double cosine = d / (scale0 * scale1);

    double s0 = 1 - t, s1 = t;
    if (std::fabs(cosine) <= kColinear) {
      const double theta = std::acos(cosine);
      s0 = std::sin((1 - t) * theta) / std::sin(theta);
      s1 = std::sin(t * theta) / std::sin(theta);
    }
    Tensor out = Tensor::uninitialized(DType::F32, job.shape());
    float* res = out.mutable_data<float>().data();
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      const auto [v0, v1] = base_and_model_chunk(job, b, e);
      for (size_t i = 0; i < e - b; ++i) res[b + i] = static_cast<float>(s0 * v0[i] + s1 * v1[i]);
    });
    return out;
  }

 private:
  static constexpr double kEps = 1e-8;
  static constexpr double kColinear = 0.9995;
};

AMALGAM_REGISTER_METHOD(Slerp);

}  // namespace
}  // namespace amalgam
