// The patch convolution's input as a matrix (im2col): row (image, gy, gx) holds that patch's
// pixels in the kernel's (channel, y, x) order, so the stride-P convolution without bias is
// one GEMM against the kernel flattened to [width, C*P*P]. Shared by inference (float) and
// training (float, or double for gradient checks).
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/parallel.h"

namespace amalgam {

// pixels [batch, channels, side, side] -> out [batch * (side/patch)^2, channels * patch^2].
template <class T>
void im2col_patches(const T* pixels, int64_t batch, int64_t channels, int64_t side, int64_t patch, T* out) {
  const int64_t g = side / patch, kernel = channels * patch * patch;
  parallel_chunks(static_cast<size_t>(batch * g * g), 8, [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const auto row = static_cast<int64_t>(r);
      const int64_t b = row / (g * g), gy = (row / g) % g, gx = row % g;
      T* dst = out + row * kernel;
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t y = 0; y < patch; ++y) {
          const T* src = pixels + ((b * channels + c) * side + gy * patch + y) * side + gx * patch;
          std::copy(src, src + patch, dst + (c * patch + y) * patch);
        }
    }
  });
}

}  // namespace amalgam
