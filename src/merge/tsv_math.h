// The math of TSV-M (Task Singular Vectors: Merging, Gargiulo et al., CVPR 2025), shared by
// the `tsv` merge method and MASS: each task vector's rank-k truncated SVD, and the merge of
// several tasks' factors (concatenated U and V^T replaced by their polar factors, which
// removes the interference between the tasks' subspaces, then U diag(S) V^T added).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "linalg/linalg.h"

namespace amalgam {

// The rank kept per task for a [d_out, d_in] matrix: floor(min / tasks), or
// floor(rank_fraction * min) when rank_fraction > 0; at least 1 and at most min
// (0 for an empty matrix).
int64_t factor_rank(int64_t d_out, int64_t d_in, int64_t tasks, double rank_fraction);

// One task's rank-k factors of one matrix.
struct LowRankFactors {
  Matrix u;              // [d_out, k], orthonormal columns
  std::vector<float> s;  // [k], descending
  Matrix vt;             // [k, d_in], orthonormal rows

  int64_t rank() const { return static_cast<int64_t>(s.size()); }
};

// The first k singular triplets of `delta` (LAPACK gesdd through svd()).
LowRankFactors truncated_svd(const Matrix& delta, int64_t k);

// Read-only views of one task's factors of a [d_out, d_in] matrix (file-backed or in memory).
struct FactorView {
  std::span<const float> u;   // [d_out, k]
  std::span<const float> s;   // [k]
  std::span<const float> vt;  // [k, d_in]

  int64_t rank() const { return static_cast<int64_t>(s.size()); }
};
FactorView factor_view(const LowRankFactors& f);

// weight ([d_out, d_in], W0 on entry) += alpha * polar(U) diag(S) polar(V^T), with U, S, V^T
// the tasks' factors concatenated in the given order (TSV-M). With one task, U and V^T are
// already orthonormal and their polar factors are themselves, so the sum is
// W0 + alpha * U S V^T directly.
void add_tsv_merge(std::span<const FactorView> tasks, float alpha, int64_t d_out, int64_t d_in,
                   std::span<float> weight);

// The audit's view of the factors (merge/audit.h). The share of ||delta||_F^2 (the sum of
// all squared singular values) that the kept ones hold.
double kept_energy(std::span<const float> delta, const FactorView& kept);
// ||U_i^T U_j||_F for every pair of tasks: 0 for orthogonal subspaces, sqrt(k) for the same.
std::vector<std::vector<double>> subspace_interference(std::span<const FactorView> tasks);

class TensorAudit;
// rank, energy_kept (per task) and subspace_interference: TSV-M's and MASS's report fields.
void record_tsv_audit(TensorAudit& audit, int64_t rank, const std::vector<double>& energy_kept,
                      std::span<const FactorView> tasks);

}  // namespace amalgam
