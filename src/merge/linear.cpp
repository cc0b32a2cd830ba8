// linear: sum_t w_t W_t / sum_t w_t (the division only with normalize, the default).
// The models are merged as listed; a base_model not among them only supplies the layout.
#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "merge/audit.h"
#include "merge/method.h"

namespace amalgam {
namespace {

class Linear final : public MergeMethod {
 public:
  static constexpr const char* kName = "linear";

  const MethodSpec& spec() const override {
    static const MethodSpec s{kName,
                              "weighted average of the models",
                              {{"weight", ParamSpec::Scope::Model, std::nullopt, -1e6, 1e6, "the model's weight"},
                               {"normalize", ParamSpec::Scope::Global, 1.0, 0, 1, "divide by the sum of the weights"}},
                              /*needs_base=*/false};
    return s;
  }

  Tensor merge(const TensorJob& job) const override {
    const size_t n = job.numel(), models = job.model_count();
    std::vector<float> w(models);
    double sum = 0;
    for (size_t t = 0; t < models; ++t) sum += w[t] = static_cast<float>(job.param("weight", t));
    if (job.param("normalize") != 0) {
      if (std::abs(sum) < 1e-12) throw InputError("linear: the weights for tensor '" + job.name() + "' sum to zero");
      for (auto& x : w) x = static_cast<float>(x / sum);
    }
    Tensor out = Tensor::uninitialized(DType::F32, job.shape());
    float* acc = out.mutable_data<float>().data();
    if (TensorAudit* audit = job.audit()) {
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) { merge_and_audit(job, w, b, e, acc, *audit); });
      return out;
    }
    // Chunks small enough that the accumulator stays in cache while every model streams by.
    parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
      thread_local std::vector<float> buffer(kStreamChunk);
      float* buf = buffer.data();
      float* a = acc + b;
      job.read_model(0, b, e, buf);
      for (size_t i = 0; i < e - b; ++i) a[i] = w[0] * buf[i];
      for (size_t t = 1; t < models; ++t) {
        job.read_model(t, b, e, buf);
        for (size_t i = 0; i < e - b; ++i) a[i] += w[t] * buf[i];
      }
    });
    return out;
  }

 private:
  // The same sum over one chunk, keeping every model's chunk for the audit: the rows are the
  // models' deltas from the base (the weights themselves without one) and the merged delta.
  static void merge_and_audit(const TensorJob& job, const std::vector<float>& w, size_t b, size_t e, float* acc,
                              TensorAudit& audit) {
    const size_t models = job.model_count(), len = e - b;
    thread_local std::vector<float> scratch;
    scratch.resize((models + 2) * kStreamChunk);
    float* rows = scratch.data();
    float* base = rows + (models + 1) * kStreamChunk;
    float* a = acc + b;
    for (size_t t = 0; t < models; ++t) {
      float* row = rows + t * kStreamChunk;
      job.read_model(t, b, e, row);
      for (size_t i = 0; i < len; ++i) a[i] = t == 0 ? w[0] * row[i] : a[i] + w[t] * row[i];
    }
    float* merged = rows + models * kStreamChunk;
    if (!job.has_base()) {  // the rows are the weights themselves already
      std::copy(a, a + len, merged);
    } else {
      job.read_base(b, e, base);
      for (size_t t = 0; t <= models; ++t) {
        float* row = rows + t * kStreamChunk;
        const float* source = t < models ? row : a;
        for (size_t i = 0; i < len; ++i) row[i] = source[i] - base[i];
      }
    }
    audit.add_deltas(b, rows, kStreamChunk, len);
  }
};

AMALGAM_REGISTER_METHOD(Linear);

}  // namespace
}  // namespace amalgam
