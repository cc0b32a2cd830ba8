// Synthetic checkpoint families for demos and benchmarks: a decoder-style base model and
// N fine-tunes (base plus a small, partly low-rank task vector each), written as Hugging
// Face checkpoints. The values are seeded noise: good for exercising and timing merges and
// forwards, not for measuring accuracy (the zoo is for that).
//
// Without an architecture the layout is a plain Llama-style table of the given sizes (no
// heads in its config.json: data-free merging only). With one (`llama-3.2-1b`, `qwen3-0.6b`,
// `gpt2`, ...: decoder_shape_names()) the checkpoints are the real model's config.json and
// every tensor its family has, so that `amalgam lm eval` and `amalgam stats` run on them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "core/dtype.h"

namespace amalgam {

struct SyntheticFamily {
  std::string architecture;  // a decoder shape, or empty: the plain layout below
  int models = 3;
  int layers = 4;  // with an architecture: 0 keeps the real model's count
  int64_t hidden = 256;
  int64_t intermediate = 688;
  int64_t vocab = 1000;
  DType dtype = DType::BF16;
  uint64_t seed = 0;
  uint64_t max_shard_bytes = 5'000'000'000ULL;
  std::filesystem::path tokenizer;  // a directory whose tokenizer files each checkpoint gets, or empty
};

// Writes DIR/base and DIR/model_1 .. DIR/model_N (atomically, as one directory).
void write_synthetic_family(const std::filesystem::path& dir, const SyntheticFamily& spec, bool force);

// Bytes of one checkpoint of the family.
uint64_t synthetic_checkpoint_bytes(const SyntheticFamily& spec);

}  // namespace amalgam
