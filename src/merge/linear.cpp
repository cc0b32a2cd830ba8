// linear: sum_t w_t W_t / sum_t w_t (the division only with normalize, the default).
// The models are merged as listed; a base_model not among them only supplies the layout.
#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
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
    static const MethodSpec s = [] {
      MethodSpec m{kName,
                   "weighted average of the models",
                   {{"weight", ParamSpec::Scope::Model, std::nullopt, -1e6, 1e6, "the model's weight"},
                    {"normalize", ParamSpec::Scope::Global, 1.0, 0, 1, "divide by the sum of the weights"}},
                   /*needs_base=*/false};
      m.streams = true;
      return m;
    }();
    return s;
  }

  Tensor merge(const TensorJob& job) const override { return merge_whole(*this, job); }

  std::unique_ptr<RangeMerge> start(const TensorJob& job) const override {
    const size_t models = job.model_count();
    std::vector<float> w(models);
    double sum = 0;
    for (size_t t = 0; t < models; ++t) sum += w[t] = static_cast<float>(job.param("weight", t));
    if (job.param("normalize") != 0) {
      if (std::abs(sum) < 1e-12)
        throw InputError(job.config_source(), job.name(),
                         "linear: the models' weights sum to zero, and normalize (the default) divides by their sum; "
                         "change a weight or set normalize: false");
      for (auto& x : w) x = static_cast<float>(x / sum);
    }
    // The audit's merged delta is sum_t w_t D_t, D_t = W_t - W0, when the weights sum to one
    // (W0 = 0 without a base: any weights); otherwise it gets its own row.
    const bool combination = !job.has_base() || job.param("normalize") != 0;
    if (job.audit() && combination)
      job.audit()->set_merged_combination(std::vector<double>(models, 1.0), {w.begin(), w.end()});
    return std::make_unique<Ranges>(job, std::move(w), combination);
  }

 private:
  class Ranges final : public RangeMerge {
   public:
    Ranges(const TensorJob& job, std::vector<float> w, bool combination)
        : job_(job),
          w_(std::move(w)),
          combination_(combination),
          stored_rows_(job.audit() && !job.has_base() && combination && all_bf16(job)) {}
    void merge_range(size_t begin, size_t end, std::span<std::byte> out) override {
      parallel_chunks_spread(end - begin, kStreamChunk,
                             [&](size_t b, size_t e) { merge_chunk(begin + b, begin + e, out, begin); });
    }

   private:
    // The sum over one chunk: read as stored, then converted, added and stored in the output
    // dtype piece by piece, so that the accumulator and the rows stay in L1. With the audit
    // every model's row of a piece is kept (its delta from the base, the weight itself
    // without one), and the merged delta too unless it is their combination. `out` holds
    // the range that starts at element `first`.
    void merge_chunk(size_t b, size_t e, std::span<std::byte> out, size_t first) const {
      TensorAudit* audit = job_.audit();
      const size_t models = job_.model_count();
      const bool with_base = audit && job_.has_base();
      thread_local StoredChunk chunk;
      thread_local std::vector<float> scratch;
      chunk.load(job_, b, e, with_base);
      scratch.resize((models + 3) * kStreamPiece);
      float* rows = scratch.data();
      float* merged = rows + models * kStreamPiece;
      float* base = merged + kStreamPiece;
      float* a = base + kStreamPiece;
      for (size_t p = b; p < e; p += kStreamPiece) {
        const size_t len = std::min(kStreamPiece, e - p);
        for (size_t t = 0; t < models; ++t) {
          const float w = w_[t];
          float* row = rows + t * kStreamPiece;  // kept for the audit
          if (t == 0 && (!audit || stored_rows_))
            chunk.visit(t, p - b, len, [&](size_t i, float x) { a[i] = w * x; });
          else if (!audit || stored_rows_)
            chunk.visit(t, p - b, len, [&](size_t i, float x) { a[i] = std::fma(w, x, a[i]); });
          else if (t == 0)
            chunk.visit(t, p - b, len, [&](size_t i, float x) { row[i] = x, a[i] = w * x; });
          else
            chunk.visit(t, p - b, len, [&](size_t i, float x) { row[i] = x, a[i] = std::fma(w, x, a[i]); });
        }
        job_.store_output(out, p - first, a, len);
        if (stored_rows_ && ((p + len - b) % kStoredRowsSpan == 0 || p + len == e)) {
          // The last span of pieces, while it is still in L2.
          const size_t span_begin = (p - b) / kStoredRowsSpan * kStoredRowsSpan;
          std::array<const uint16_t*, kMaxStoredRows> weights;
          for (size_t t = 0; t < models; ++t) weights[t] = chunk.bf16(t, span_begin);
          audit->add_bf16_deltas(b + span_begin, std::span(weights.data(), models), p + len - b - span_begin);
        }
        if (!audit || stored_rows_) continue;
        if (with_base) {
          chunk.to_f32(models, p - b, len, base);
          for (size_t t = 0; t < models; ++t)
            for (size_t i = 0; i < len; ++i) rows[t * kStreamPiece + i] -= base[i];
        }
        if (!combination_)  // a base, and weights that need not sum to one
          for (size_t i = 0; i < len; ++i) merged[i] = a[i] - base[i];
        audit->add_deltas(p, rows, kStreamPiece, len);
      }
    }

    static bool all_bf16(const TensorJob& job) {
      if (job.model_count() > kMaxStoredRows) return false;
      for (size_t t = 0; t < job.model_count(); ++t)
        if (job.input_dtype(t) != DType::BF16) return false;
      return true;
    }
    static constexpr size_t kMaxStoredRows = 64;
    static constexpr size_t kStoredRowsSpan = 4 * kStreamPiece;

    const TensorJob& job_;
    std::vector<float> w_;
    bool combination_;
    // Without a base the audit's rows are the weights: BF16 ones go to it as stored.
    bool stored_rows_;
  };
};

AMALGAM_REGISTER_METHOD(Linear);

}  // namespace
}  // namespace amalgam
