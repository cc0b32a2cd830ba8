// nearswap (mergekit's NearSwap): take the model's value where it lies near the base's, keep
// the base's where they differ: per element, w = clamp(t / max(|b - a|, 1e-6), 0, 1) and the
// result is w b + (1 - w) a, a the base and b the one other model.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "merge/method.h"
#include "merge/reductions.h"

namespace amalgam {
namespace {

class NearSwap final : public MergeMethod {
 public:
  static constexpr const char* kName = "nearswap";

  const MethodSpec& spec() const override {
    static const MethodSpec s{
        kName,
        "the model's values where they lie within t of the base's, blended toward the base's beyond",
        {{"t", ParamSpec::Scope::Global, std::nullopt, 0, 1e6, "distance below which the model's value is taken"}},
        /*needs_base=*/true,
        /*min_models=*/1,
        /*max_models=*/1};
    return s;
  }

  Tensor merge(const TensorJob& job) const override {
    const double t = job.param("t");
    Tensor out = Tensor::uninitialized(DType::F32, job.shape());
    float* res = out.mutable_data<float>().data();
    parallel_chunks(job.numel(), kStreamChunk, [&](size_t b, size_t e) {
      const auto [base, model] = base_and_model_chunk(job, b, e);
      for (size_t i = 0; i < e - b; ++i) {
        const double a = base[i], v = model[i];
        const double w = std::clamp(t / std::max(std::abs(v - a), 1e-6), 0.0, 1.0);
        res[b + i] = static_cast<float>(w * v + (1 - w) * a);
      }
    });
    return out;
  }
};

AMALGAM_REGISTER_METHOD(NearSwap);

}  // namespace
}  // namespace amalgam
