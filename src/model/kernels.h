// The transformer's building blocks, shared by every model family: norms, linear layers,
// activations, softmax and attention, in F32 on [rows, width] row-major buffers. Each product
// is a BLAS call (sgemm_fixed_blocks for the linear layers: the same bits on any thread
// count), and row loops run on all cores.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "linalg/linalg.h"

namespace amalgam {

enum class Activation { QuickGelu, Gelu, GeluTanh, Silu };

struct LayerNormParams {
  std::vector<float> weight;  // [D]
  std::vector<float> bias;    // [D]; empty for RMSNorm
};

// y = x W^T + b, W: [out, in] as PyTorch stores it.
struct LinearParams {
  Matrix weight;
  std::vector<float> bias;  // [out], or empty: no bias
};

// Row by row (in place when x == y): y = (x - mean) / sqrt(var + eps) * weight + bias, with
// the biased variance (PyTorch's LayerNorm).
void layer_norm(const float* x, float* y, int64_t rows, int64_t width, const LayerNormParams& ln, double eps);

// Row by row (in place when x == y): y = x / sqrt(mean(x^2) + eps) * weight (Llama's RMSNorm,
// mean of squares in double).
void rms_norm(const float* x, float* y, int64_t rows, int64_t width, std::span<const float> weight, double eps);

// y = x W^T + b (beta = 0), or y += x W^T + b (accumulate: the residual connections).
void linear(const float* x, int64_t rows, const LinearParams& l, float* y, bool accumulate);

void activate(float* x, size_t n, Activation act);

// Each row of s [rows, cols] replaced by its softmax.
void softmax_rows(float* s, int64_t rows, int64_t cols);

}  // namespace amalgam
