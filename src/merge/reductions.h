// Sums over a tensor's elements that give the same bits on any thread count: each
// kStreamChunk chunk is summed in double by whichever thread takes it, and the chunks' sums
// are added in chunk order. The spherical methods (slerp's relatives, karcher, model_stock)
// reduce dot products and norms this way. Also how those methods read their inputs in F32:
// whole, or chunk by chunk.
#pragma once

#include <array>
#include <cstddef>
#include <utility>
#include <vector>

#include "core/parallel.h"
#include "merge/method.h"

namespace amalgam {

// K sums at once: term(begin, end, sums) adds elements [begin, end)'s contributions to
// sums[0..K).
template <size_t K, class Term>
std::array<double, K> chunked_sums(size_t n, Term&& term) {
  const size_t chunks = (n + kStreamChunk - 1) / kStreamChunk;
  std::vector<std::array<double, K>> partial(chunks);
  parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
    std::array<double, K> s{};
    term(b, e, s.data());
    partial[b / kStreamChunk] = s;
  });
  std::array<double, K> total{};
  for (const auto& p : partial)
    for (size_t k = 0; k < K; ++k) total[k] += p[k];
  return total;
}

// Every input of a job (candidates, then the base when `with_base`) in F32, whole: the
// iterative and pairwise methods read each element several times.
inline std::vector<Tensor> job_inputs_f32(const TensorJob& job, bool with_base) {
  std::vector<Tensor> inputs;
  for (size_t t = 0; t < job.model_count(); ++t) inputs.push_back(job.model_f32(t));
  if (with_base) inputs.push_back(job.base_f32());
  return inputs;
}

// Elements [b, e) (at most kStreamChunk) of the base and of candidate 0 in F32, in this
// thread's buffers: for the two-input methods (slerp, nearswap) that read chunk by chunk.
inline std::pair<const float*, const float*> base_and_model_chunk(const TensorJob& job, size_t b, size_t e) {
  thread_local std::vector<float> base(kStreamChunk), model(kStreamChunk);
  job.read_base(b, e, base.data());
  job.read_model(0, b, e, model.data());
  return {base.data(), model.data()};
}

}  // namespace amalgam
