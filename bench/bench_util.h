// Timing helpers shared by the benchmark programs.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "linalg/linalg.h"
#include "model/families/clip_vision.h"

namespace amalgam::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Multiply-adds x 2 of a CLIP vision forward on `batch` images: patch embedding, every
// block's projections, MLP and attention products, and the projection when asked.
inline double forward_flops(const ClipVisionConfig& c, int64_t batch, bool projection) {
  const double d = static_cast<double>(c.hidden_size), f = static_cast<double>(c.intermediate_size);
  const double t = static_cast<double>(c.tokens()), p = static_cast<double>(c.patch_size);
  const double patches = t - 1, kernel = static_cast<double>(c.num_channels) * p * p;
  const double block = t * (8 * d * d + 4 * d * f) + 4 * t * t * d;
  const double per_image = 2 * patches * kernel * d + static_cast<double>(c.num_hidden_layers) * block +
                           (projection ? 2 * d * static_cast<double>(c.projection_dim) : 0);
  return per_image * static_cast<double>(batch);
}

// The machine's SGEMM peak for one shape ([m, k] x [n, k]^T): the best of 7 runs, GFLOP/s.
inline double sgemm_peak_gflops(int64_t m, int64_t n, int64_t k) {
  std::vector<float> a(static_cast<size_t>(m * k), 0.5f), b(static_cast<size_t>(n * k), 0.25f),
      c(static_cast<size_t>(m * n));
  double best = 0;
  for (int i = 0; i < 7; ++i) {
    const auto t0 = Clock::now();
    sgemm(false, true, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f, c.data(), n);
    best = std::max(best, 2.0 * static_cast<double>(m * n * k) / seconds_since(t0) / 1e9);
  }
  return best;
}

}  // namespace amalgam::bench
