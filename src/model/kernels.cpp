#include "model/kernels.h"

#include <algorithm>
#include <cmath>

#include "core/lane_sum.h"
#include "core/parallel.h"
#include "model/activations.h"

namespace amalgam {

void layer_norm(const float* x, float* y, int64_t rows, int64_t width, const LayerNormParams& ln, double eps) {
  const float* g = ln.weight.data();
  const float* b = ln.bias.data();
  parallel_chunks(static_cast<size_t>(rows), 128, [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const float* xr = x + r * static_cast<size_t>(width);
      float* yr = y + r * static_cast<size_t>(width);
      const float m = lane_sum<float>(width, [xr](int64_t i) { return xr[i]; }) / static_cast<float>(width);
      const float sq = lane_sum<float>(width, [xr, m](int64_t i) { return (xr[i] - m) * (xr[i] - m); });
      const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(sq) / static_cast<double>(width) + eps));
      for (int64_t i = 0; i < width; ++i) yr[i] = (xr[i] - m) * inv * g[i] + b[i];
    }
  });
}

void rms_norm(const float* x, float* y, int64_t rows, int64_t width, std::span<const float> weight, double eps) {
  const float* g = weight.data();
  parallel_chunks(static_cast<size_t>(rows), 128, [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const float* xr = x + r * static_cast<size_t>(width);
      float* yr = y + r * static_cast<size_t>(width);
      double sq = 0;
      for (int64_t i = 0; i < width; ++i) sq += static_cast<double>(xr[i]) * xr[i];
      const auto inv = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(width) + eps));
      for (int64_t i = 0; i < width; ++i) yr[i] = xr[i] * inv * g[i];
    }
  });
}

void linear(const float* x, int64_t rows, const LinearParams& l, float* y, bool accumulate) {
  const int64_t out = l.weight.rows, in = l.weight.cols;
  sgemm_fixed_blocks(false, true, rows, out, in, 1.0f, x, in, l.weight.data.data(), in, accumulate ? 1.0f : 0.0f, y,
                     out);
  if (l.bias.empty()) return;
  const float* b = l.bias.data();
  parallel_chunks(static_cast<size_t>(rows), 256, [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      float* yr = y + r * static_cast<size_t>(out);
      for (int64_t i = 0; i < out; ++i) yr[i] += b[i];
    }
  });
}

void activate(float* x, size_t n, Activation act) {
  parallel_chunks(n, 1 << 14, [&](size_t begin, size_t end) {
    switch (act) {
      case Activation::QuickGelu:
        for (size_t i = begin; i < end; ++i) x[i] = quick_gelu(x[i]);
        break;
      case Activation::Gelu:
        for (size_t i = begin; i < end; ++i) x[i] = gelu_erf(x[i]);
        break;
      case Activation::GeluTanh:
        for (size_t i = begin; i < end; ++i) x[i] = gelu_tanh(x[i]);
        break;
      case Activation::Silu:
        for (size_t i = begin; i < end; ++i) x[i] = silu(x[i]);
        break;
    }
  });
}

void softmax_rows(float* s, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * cols;
    float mx = row[0];
    for (int64_t j = 1; j < cols; ++j) mx = std::max(mx, row[j]);
    float sum = 0;
    for (int64_t j = 0; j < cols; ++j) {
      row[j] = exp_approx(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < cols; ++j) row[j] *= inv;
  }
}

}  // namespace amalgam
