#include "model/kernels.h"

#include <cmath>

#include "core/lane_sum.h"
#include "core/parallel.h"

namespace amalgam {

namespace {

// Row loops are split in chunks of this many rows across threads: smaller chunks of the
// zoo's narrow models cost more in thread wake-ups than they save.
constexpr size_t kRowChunk = 256;
// Attention over (image, head) pairs goes parallel only above this many multiply-adds: small
// batches of small models stay on one thread, where waking the others costs more.
constexpr int64_t kParallelAttentionWork = 1 << 18;

}  // namespace

template <class T>
void layer_norm_forward(const T* x, int64_t rows, int64_t d, const T* g, const T* b, double eps, T* y, T* xhat,
                        T* rstd) {
  parallel_chunks(static_cast<size_t>(rows), kRowChunk, [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const T* xr = x + r * static_cast<size_t>(d);
      const T mean = lane_sum<T>(d, [xr](int64_t i) { return xr[i]; }) / static_cast<T>(d);
      const T sq = lane_sum<T>(d, [xr, mean](int64_t i) { return (xr[i] - mean) * (xr[i] - mean); });
      const T inv = static_cast<T>(1.0 / std::sqrt(static_cast<double>(sq) / static_cast<double>(d) + eps));
      if (rstd) rstd[r] = inv;
      T* yr = y + r * static_cast<size_t>(d);
      if (!xhat) {
        for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mean) * inv * g[i] + b[i];
        continue;
      }
      T* hr = xhat + r * static_cast<size_t>(d);
      for (int64_t i = 0; i < d; ++i) {
        hr[i] = (xr[i] - mean) * inv;
        yr[i] = hr[i] * g[i] + b[i];
      }
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

template <class T>
void linear_forward(const T* x, int64_t rows, int64_t in, const T* w, const T* b, int64_t out, T* y,
                    const T* residual) {
  if (!b && !residual) return gemm<T>(false, true, rows, out, in, T(1), x, in, w, in, T(0), y, out);
  // The bias and residual go in first and the GEMM adds to them (beta = 1): two passes over
  // y, where a GEMM into zeros (OpenBLAS clears y first) and a pass adding them take three.
  parallel_chunks(static_cast<size_t>(rows), kRowChunk, [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      T* yr = y + r * static_cast<size_t>(out);
      const T* rr = residual ? residual + r * static_cast<size_t>(out) : nullptr;
      for (int64_t i = 0; i < out; ++i) yr[i] = (b ? b[i] : T(0)) + (rr ? rr[i] : T(0));
    }
  });
  gemm<T>(false, true, rows, out, in, T(1), x, in, w, in, T(1), y, out);
}

void linear(const float* x, int64_t rows, const LinearParams& l, float* y, bool accumulate) {
  const int64_t out = l.weight.rows, in = l.weight.cols;
  sgemm_fixed_blocks(false, true, rows, out, in, 1.0f, x, in, l.weight.data.data(), in, accumulate ? 1.0f : 0.0f, y,
                     out);
  if (l.bias.empty()) return;
  const float* b = l.bias.data();
  parallel_chunks(static_cast<size_t>(rows), kRowChunk, [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      float* yr = y + r * static_cast<size_t>(out);
      for (int64_t i = 0; i < out; ++i) yr[i] += b[i];
    }
  });
}

template <class T>
void activation_forward(Activation act, const T* x, T* y, size_t n) {
  with_activation(act, [&](auto a) {
    parallel_chunks(n, 1 << 14, [x, y](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) y[i] = activation_value<decltype(a)::value, T>(x[i]);
    });
  });
}

template <class T>
void attention_forward(const T* qkv, int64_t batch, int64_t tokens, int64_t width, int64_t heads, T scale, T* probs,
                       T* context) {
  const int64_t hd = width / heads, pairs = batch * heads, ld = 3 * width;
  // The products are small (tokens x head_dim), so the pairs are spread over threads, each
  // calling single-threaded BLAS (OpenBLAS runs serially inside an OpenMP region).
#pragma omp parallel if (pairs * tokens * tokens * hd > kParallelAttentionWork)
  {
    std::vector<T> scratch(probs ? 0 : static_cast<size_t>(tokens * tokens));
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t b = p / heads, h = p % heads;
      const T* q = qkv + b * tokens * ld + h * hd;
      const T* k = q + width;
      const T* v = q + 2 * width;
      T* s = probs ? probs + p * tokens * tokens : scratch.data();
      gemm<T>(false, true, tokens, tokens, hd, scale, q, ld, k, ld, T(0), s, tokens);
      for (int64_t r = 0; r < tokens; ++r) softmax_row(s + r * tokens, tokens);
      gemm<T>(false, false, tokens, hd, tokens, T(1), s, tokens, v, ld, T(0), context + b * tokens * width + h * hd,
              width);
    }
  }
}

#define AMALGAM_INSTANTIATE_KERNELS(T)                                                                     \
  template void layer_norm_forward<T>(const T*, int64_t, int64_t, const T*, const T*, double, T*, T*, T*); \
  template void linear_forward<T>(const T*, int64_t, int64_t, const T*, const T*, int64_t, T*, const T*);  \
  template void activation_forward<T>(Activation, const T*, T*, size_t);                                   \
  template void attention_forward<T>(const T*, int64_t, int64_t, int64_t, int64_t, T, T*, T*);

AMALGAM_INSTANTIATE_KERNELS(float)
AMALGAM_INSTANTIATE_KERNELS(double)

}  // namespace amalgam
