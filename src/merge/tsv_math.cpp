#include "merge/tsv_math.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "core/parallel.h"
#include "merge/audit.h"

namespace amalgam {

int64_t factor_rank(int64_t d_out, int64_t d_in, int64_t tasks, double rank_fraction) {
  const int64_t full = std::min(d_out, d_in);
  if (full <= 0) return 0;
  const int64_t k = rank_fraction > 0 ? static_cast<int64_t>(rank_fraction * static_cast<double>(full))
                                      : full / std::max<int64_t>(tasks, 1);
  return std::clamp<int64_t>(k, 1, full);
}

LowRankFactors truncated_svd(const Matrix& delta, int64_t k) {
  const Svd full = svd(delta);
  k = std::min<int64_t>(k, static_cast<int64_t>(full.s.size()));
  LowRankFactors f{Matrix(delta.rows, k), std::vector<float>(full.s.begin(), full.s.begin() + k),
                   Matrix(k, delta.cols)};
  for (int64_t i = 0; i < delta.rows; ++i) std::copy(full.u.row(i), full.u.row(i) + k, f.u.row(i));
  std::copy(full.vt.data.begin(), full.vt.data.begin() + k * delta.cols, f.vt.data.begin());
  return f;
}

FactorView factor_view(const LowRankFactors& f) {
  return {f.u.data, f.s, f.vt.data};
}

void add_tsv_merge(std::span<const FactorView> tasks, float alpha, int64_t d_out, int64_t d_in,
                   std::span<float> weight) {
  if (static_cast<int64_t>(weight.size()) != d_out * d_in) throw std::invalid_argument("add_tsv_merge: weight size");
  int64_t total = 0;
  for (const FactorView& f : tasks) {
    if (static_cast<int64_t>(f.u.size()) != d_out * f.rank() || static_cast<int64_t>(f.vt.size()) != f.rank() * d_in)
      throw std::invalid_argument("add_tsv_merge: factor shapes do not fit the weight");
    total += f.rank();
  }
  if (total == 0) return;
  Matrix u_all(d_out, total), vt_all(total, d_in);
  std::vector<float> s_all;
  int64_t offset = 0;
  for (const FactorView& f : tasks) {
    const int64_t k = f.rank();
    for (int64_t i = 0; i < d_out; ++i)
      std::memcpy(u_all.row(i) + offset, f.u.data() + i * k, static_cast<size_t>(k) * sizeof(float));
    std::memcpy(vt_all.row(offset), f.vt.data(), static_cast<size_t>(k * d_in) * sizeof(float));
    s_all.insert(s_all.end(), f.s.begin(), f.s.end());
    offset += k;
  }
  if (tasks.size() > 1) {  // one task's U and V^T are orthonormal already: their own polar factors
    // The two SVDs side by side, each single-threaded (bits independent of the thread count).
    Matrix* factors[] = {&u_all, &vt_all};  // polar(V^T) = polar(V)^T
    parallel_for(2, [&](size_t i) { *factors[i] = polar_factor(*factors[i]); });
  }
  for (int64_t i = 0; i < d_out; ++i)
    for (int64_t j = 0; j < total; ++j) u_all(i, j) *= s_all[static_cast<size_t>(j)];
  sgemm_fixed_blocks(false, false, d_out, d_in, total, alpha, u_all.data.data(), total, vt_all.data.data(), d_in, 1.0f,
                     weight.data(), d_in);
}

double kept_energy(std::span<const float> delta, const FactorView& kept) {
  double total = 0, inside = 0;
  for (float x : delta) total += static_cast<double>(x) * x;
  for (float s : kept.s) inside += static_cast<double>(s) * s;
  return total > 0 ? std::min(1.0, inside / total) : 1.0;
}

std::vector<std::vector<double>> subspace_interference(std::span<const FactorView> tasks) {
  const size_t n = tasks.size();
  std::vector<std::vector<double>> out(n, std::vector<double>(n, 0.0));
  std::vector<float> cross;
  for (size_t i = 0; i < n; ++i)
    for (size_t j = i; j < n; ++j) {
      const int64_t ki = tasks[i].rank(), kj = tasks[j].rank();
      if (ki == 0 || kj == 0) continue;
      const int64_t d_out = static_cast<int64_t>(tasks[i].u.size()) / ki;
      cross.assign(static_cast<size_t>(ki * kj), 0.0f);  // U_i^T U_j
      sgemm(true, false, ki, kj, d_out, 1.0f, tasks[i].u.data(), ki, tasks[j].u.data(), kj, 0.0f, cross.data(), kj);
      double sum = 0;
      for (float x : cross) sum += static_cast<double>(x) * x;
      out[i][j] = out[j][i] = std::sqrt(sum);
    }
  return out;
}

void record_tsv_audit(TensorAudit& audit, int64_t rank, const std::vector<double>& energy_kept,
                      std::span<const FactorView> tasks) {
  audit.set("rank", rank);
  audit.set("energy_kept", energy_kept);
  audit.set("subspace_interference", subspace_interference(tasks));
}

}  // namespace amalgam
