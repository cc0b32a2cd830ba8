// MASS's stored task vectors: every 2-D task vector D_t = W_t - W0 is kept as its rank-k
// truncated SVD U_t S_t V_t^T, other tensors keep the whole delta. A model for a set of
// tasks is W0 + TSV-M of their factors, computed by the same code as the `tsv` merge method
// (merge/tsv_math.h), so the first-pass model is what `amalgam merge` with `tsv` writes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "linalg/linalg.h"
#include "merge/tsv_math.h"

namespace amalgam::mass {

// Suffixes of the tensors of a factors file: "<name>.U" [d_out, k], "<name>.S" [k],
// "<name>.Vt" [k, d_in] for a 2-D tensor, "<name>.delta" (its shape) for any other.
inline constexpr const char* kFactorU = ".U";
inline constexpr const char* kFactorS = ".S";
inline constexpr const char* kFactorVt = ".Vt";
inline constexpr const char* kFactorDelta = ".delta";

// weight (W0 on entry) += the mean of the deltas, summed in order (as tsv.cpp sums them).
void add_mean_delta(std::span<const std::span<const float>> deltas, std::span<float> weight);

}  // namespace amalgam::mass
