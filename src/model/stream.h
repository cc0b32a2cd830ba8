// The residual stream of a batch, one type for every family: sequences packed one after
// another, sequence s holding rows [offsets[s], offsets[s + 1]) of data [rows, width]. An
// image is a sequence of its tokens (CLS first), all of one length; texts have their own
// lengths and no padding rows, so every linear layer runs on valid tokens only.
#pragma once

#include <cstdint>
#include <vector>

namespace amalgam {

struct Stream {
  std::vector<int64_t> offsets{0};
  int64_t width = 0;
  std::vector<float> data;

  // Buffers the blocks reuse (norm output, q/k/v, attention context, MLP), so that a
  // forward allocates them once: fresh buffers of a block's size cost page faults and
  // zeroing on every call.
  struct Scratch {
    std::vector<float> normed, weights, qkv, q, k, v, context, hidden, gate;
  } scratch;

  int64_t rows() const { return offsets.back(); }
  int64_t sequences() const { return static_cast<int64_t>(offsets.size()) - 1; }
  float* row(int64_t i) { return data.data() + i * width; }
  const float* row(int64_t i) const { return data.data() + i * width; }

  // `count` sequences of `tokens` rows each, of `width` (values left as they were).
  void set_uniform(int64_t count, int64_t tokens, int64_t width_) {
    width = width_;
    offsets.resize(static_cast<size_t>(count) + 1);
    for (int64_t s = 0; s <= count; ++s) offsets[static_cast<size_t>(s)] = s * tokens;
    data.resize(static_cast<size_t>(count * tokens * width));
  }
  // The rows of every sequence, when they are all the same length (an image batch).
  int64_t tokens_per_sequence() const { return sequences() > 0 ? rows() / sequences() : 0; }
};

}  // namespace amalgam
