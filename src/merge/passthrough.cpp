// passthrough (mergekit's): one model's tensor as it is, times its `scale` when given. Used
// alone it copies (or rescales) a model; in `slices` it is how frankenmerges stack layers.
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "merge/method.h"

namespace amalgam {
namespace {

class Passthrough final : public MergeMethod {
 public:
  static constexpr const char* kName = "passthrough";

  const MethodSpec& spec() const override {
    static const MethodSpec s{kName,
                              "one model's tensors, optionally scaled",
                              {{"scale", ParamSpec::Scope::Model, 1.0, -1e6, 1e6, "factor applied to the tensor"}},
                              /*needs_base=*/false,
                              /*min_models=*/1,
                              /*max_models=*/1};
    return s;
  }

  Tensor merge(const TensorJob& job) const override {
    // mergekit adds a base_model to the inputs, and passthrough refuses two.
    if (job.has_base())
      throw InputError(job.config_source(), job.name(), "passthrough takes one model and no base_model");
    const auto scale = static_cast<float>(job.param("scale", 0));
    Tensor out = Tensor::uninitialized(DType::F32, job.shape());
    float* res = out.mutable_data<float>().data();
    parallel_chunks(job.numel(), kStreamChunk, [&](size_t b, size_t e) {
      job.read_model(0, b, e, res + b);
      if (scale != 1.0f)
        for (size_t i = b; i < e; ++i) res[i] *= scale;
    });
    return out;
  }
};

AMALGAM_REGISTER_METHOD(Passthrough);

}  // namespace
}  // namespace amalgam
