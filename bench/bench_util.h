// Timing helpers shared by the benchmark programs.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "linalg/linalg.h"

namespace amalgam::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
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
