// What RegMean and RegMean++ share: the closed-form merge of one linear layer, the mean of
// every other parameter, and their parameters. (methods.md, "RegMean")
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "calibration/images.h"
#include "calibration/texts.h"
#include "linalg/linalg.h"
#include "merge/method.h"

namespace amalgam {

// One candidate's linear layer: its weight [out, in], the Gram of its input [in, in], and
// its weight in the merge (w_t, multiplying the Gram).
struct RegMeanCandidate {
  std::span<const float> weight;
  std::span<const float> gram;
  double factor = 1.0;
};

struct RegMeanLinear {
  std::vector<float> weight;  // merged [out, in]
  SymmetricSolve solve;
  // With `audit`, per candidate: tr((W - W_t) G_t (W - W_t)^T) / tr(W_t G_t W_t^T), the
  // merged layer's regression residual on the candidate's own inputs relative to its
  // outputs' energy; and w_t tr(G_t) / sum_s w_s tr(G_s), its share of the summed Gram.
  std::vector<double> relative_residuals;
  std::vector<double> gram_trace_share;
};

// W^T = (sum_t w_t G~_t)^{-1} sum_t w_t G~_t W_t^T with G~ = alpha G + (1 - alpha) diag(G).
// The right-hand side is built with SGEMM, the system is solved in double (Cholesky, or the
// eigendecomposition fallback, which is reported with warn() naming `name`). The audit
// costs one more GEMM per candidate, of the right-hand side's size.
RegMeanLinear regmean_linear(std::span<const RegMeanCandidate> candidates, int64_t out, int64_t in, double alpha,
                             const std::string& name, bool audit = false);

// The fields of a solved layer in the merge report (merge/audit.h).
void record_regmean_audit(TensorAudit& audit, const RegMeanLinear& solved);

// sum_t w_t X_t / sum_t w_t over a job's candidates: every parameter that is not a linear
// weight with statistics.
Tensor weighted_mean(const TensorJob& job);

// alpha (global), weight (per model), examples, batch_size and max_length (global,
// calibration), and
// embeddings (global: mean 0, base 1).
std::vector<ParamSpec> regmean_params();
// `embeddings: base` needs a base_model: InputError naming the config otherwise.
void check_embeddings_source(const MergeContext& ctx);

// How both methods draw a candidate's `data:`: `examples` and `batch_size` (images per
// forward, or texts per block call) and max_length (tokens per text) from the parameters,
// the merge's seed.
struct RegMeanCalibrationOptions {
  CalibrationOptions images;
  TextCalibrationOptions texts;
};
RegMeanCalibrationOptions regmean_calibration_options(const MergeContext& ctx);

// [rows, cols] row-major -> [cols, rows]: weights stored [in, out] (GPT-2's Conv1D) are solved
// as [out, in] and written back as stored.
std::vector<float> transpose_matrix(std::span<const float> m, int64_t rows, int64_t cols);

}  // namespace amalgam
