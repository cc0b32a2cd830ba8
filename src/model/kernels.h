// The transformer's building blocks, shared by every model family and by training: norms,
// linear layers, activations, softmax and attention on [rows, width] row-major buffers. Each
// product is a BLAS call, and row loops run on all cores.
//
// The templates run in float (inference, training) and double (the training ops' gradient
// checks); the forward kernels keep what a backward pass needs when given somewhere to put
// it (train/ops.h has the backward passes). Inference calls the same functions with nothing
// to keep, so a trained model computes at inference exactly what it computed in training.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "linalg/linalg.h"
#include "model/activations.h"

namespace amalgam {

// sgemm or dgemm, as T says.
template <class T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b, int64_t ldb,
          T beta, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  else
    dgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

struct LayerNormParams {
  std::vector<float> weight;  // [D]
  std::vector<float> bias;    // [D]; empty for RMSNorm
};

// y = x W^T + b, W: [out, in] as PyTorch stores it.
struct LinearParams {
  Matrix weight;
  std::vector<float> bias;  // [out], or empty: no bias
};

// Row by row: y = xhat * g + b with xhat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps),
// the biased variance (PyTorch's LayerNorm). x == y works in place; xhat [rows, d] and rstd
// [rows] are kept for backward when not null.
template <class T>
void layer_norm_forward(const T* x, int64_t rows, int64_t d, const T* g, const T* b, double eps, T* y,
                        T* xhat = nullptr, T* rstd = nullptr);
inline void layer_norm(const float* x, float* y, int64_t rows, int64_t width, const LayerNormParams& ln, double eps) {
  layer_norm_forward<float>(x, rows, width, ln.weight.data(), ln.bias.data(), eps, y);
}

// Row by row (in place when x == y): y = x / sqrt(mean(x^2) + eps) * weight (Llama's RMSNorm,
// mean of squares in double).
void rms_norm(const float* x, float* y, int64_t rows, int64_t width, std::span<const float> weight, double eps);

// y[rows, out] = x[rows, in] W[out, in]^T + b + residual[rows, out] (b, residual may be
// null; residual may be y itself), one GEMM on the calling thread's BLAS: for callers that
// split a batch across threads themselves (training's shards).
template <class T>
void linear_forward(const T* x, int64_t rows, int64_t in, const T* w, const T* b, int64_t out, T* y,
                    const T* residual = nullptr);
// y = x W^T + b (beta = 0), or y += x W^T + b (accumulate: the residual connections), with
// W as PyTorch stores it, threaded in fixed blocks (sgemm_fixed_blocks): the same bits on
// any thread count, for a whole batch on every core.
void linear(const float* x, int64_t rows, const LinearParams& l, float* y, bool accumulate);

// y = act(x) elementwise (x == y works in place).
template <class T>
void activation_forward(Activation act, const T* x, T* y, size_t n);
inline void activate(float* x, size_t n, Activation act) {
  activation_forward<float>(act, x, x, n);
}

// One row replaced by its softmax (max subtracted first).
template <class T>
void softmax_row(T* row, int64_t n) {
  T mx = row[0];
  for (int64_t j = 1; j < n; ++j) mx = std::max(mx, row[j]);
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    row[j] = exp_of<T>(row[j] - mx);
    sum += row[j];
  }
  const T inv = T(1) / sum;
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
}
inline void softmax_rows(float* s, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) softmax_row(s + r * cols, cols);
}

// Bidirectional multi-head self-attention (a ViT's) on the packed projections qkv
// [batch * tokens, 3 * width] (each row q | k | v, as one GEMM makes them): context
// [batch * tokens, width] = softmax(scale q k^T) v per image and head. probs [batch * heads,
// tokens, tokens] keeps the attention weights for backward when not null.
template <class T>
void attention_forward(const T* qkv, int64_t batch, int64_t tokens, int64_t width, int64_t heads, T scale, T* probs,
                       T* context);

}  // namespace amalgam
