// ram and ramplus_tl (Reinforced Agent Merging; mergekit's): task vectors D_i = W_i - W0
// merged entry by entry by who changed it. An entry counts for model i when |D_i| > epsilon;
// where only one model changed it, that model's change is taken whole, where several did,
// their mean (of the counted changes). ramplus_tl scales each model's unique changes by
// lambda_i = 1 + r clamp(rho_i, 0, alpha), rho_i = (its shared entries) / max(its unique
// entries, epsilon), counted over the tensor.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "merge/method.h"

namespace amalgam {
namespace {

class RamFamily : public MergeMethod {
 public:
  explicit RamFamily(bool plus) : plus_(plus) {}

  Tensor merge(const TensorJob& job) const override {
    const size_t models = job.model_count(), n = job.numel();
    const Tensor base = job.base_f32();
    const float* w0 = base.data<float>().data();
    std::vector<Tensor> inputs;
    std::vector<const float*> w;
    for (size_t i = 0; i < models; ++i) {
      inputs.push_back(job.model_f32(i));
      w.push_back(inputs.back().data<float>().data());
    }
    const double eps = job.param("epsilon");
    auto changed = [&](size_t i, size_t k) { return std::abs(static_cast<double>(w[i][k]) - w0[k]) > eps; };

    std::vector<double> lambda(models, 1.0);
    if (plus_) {
      // Each model's shared and unique entries, counted per chunk and added in chunk order.
      const size_t chunks = (n + kStreamChunk - 1) / kStreamChunk;
      std::vector<std::vector<int64_t>> shared(chunks, std::vector<int64_t>(models, 0)), unique = shared;
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
        auto& s = shared[b / kStreamChunk];
        auto& u = unique[b / kStreamChunk];
        for (size_t k = b; k < e; ++k) {
          int count = 0;
          for (size_t i = 0; i < models; ++i) count += changed(i, k);
          for (size_t i = 0; i < models; ++i)
            if (changed(i, k)) ++(count > 1 ? s : u)[i];
        }
      });
      for (size_t i = 0; i < models; ++i) {
        int64_t s = 0, u = 0;
        for (size_t c = 0; c < chunks; ++c) s += shared[c][i], u += unique[c][i];
        const double rho = static_cast<double>(s) / std::max(static_cast<double>(u), eps);
        lambda[i] = 1 + job.param("r") * std::clamp(rho, 0.0, job.param("alpha"));
      }
    }
    Tensor out = Tensor::uninitialized(DType::F32, job.shape());
    float* res = out.mutable_data<float>().data();
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      for (size_t k = b; k < e; ++k) {
        int count = 0;
        double sum = 0, unique = 0;
        for (size_t i = 0; i < models; ++i) {
          if (!changed(i, k)) continue;
          ++count;
          const double d = static_cast<double>(w[i][k]) - w0[k];
          sum += d;
          unique = lambda[i] * d;
        }
        res[k] = static_cast<float>(w0[k] + (count == 1 ? unique : count > 1 ? sum / count : 0.0));
      }
    });
    return out;
  }

 private:
  bool plus_;
};

class Ram final : public RamFamily {
 public:
  static constexpr const char* kName = "ram";
  Ram() : RamFamily(false) {}
  const MethodSpec& spec() const override {
    static const MethodSpec s{
        kName,
        "Reinforced Agent Merging: each entry's change from the one model that made it, or the mean of several",
        {{"epsilon", ParamSpec::Scope::Global, 1e-5, 0, 1e6, "a change counts when larger than this"}},
        /*needs_base=*/true};
    return s;
  }
};

class RamPlusTl final : public RamFamily {
 public:
  static constexpr const char* kName = "ramplus_tl";
  RamPlusTl() : RamFamily(true) {}
  const MethodSpec& spec() const override {
    static const MethodSpec s{
        kName,
        "RAM+ (tensor-local): RAM with each model's unique changes boosted by how much it "
        "shares",
        {{"r", ParamSpec::Scope::Global, 0.1, 0, 1e6, "boost per unit of shared/unique ratio"},
         {"alpha", ParamSpec::Scope::Global, 0.2, 0, 1e6, "cap on the shared/unique ratio"},
         {"epsilon", ParamSpec::Scope::Global, 1e-5, 0, 1e6, "a change counts when larger than this"}},
        /*needs_base=*/true};
    return s;
  }
};

AMALGAM_REGISTER_METHOD(Ram);
AMALGAM_REGISTER_METHOD(RamPlusTl);

}  // namespace
}  // namespace amalgam
