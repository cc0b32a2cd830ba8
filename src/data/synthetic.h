// Synthetic checkpoint families for demos and benchmarks: a decoder-style base model and
// N fine-tunes (base plus a small, partly low-rank task vector each), written as Hugging
// Face checkpoints. The values are seeded noise: good for exercising and timing merges, not
// for measuring accuracy (the zoo is for that).
#pragma once

#include <cstdint>
#include <filesystem>

#include "core/dtype.h"

namespace amalgam {

struct SyntheticFamily {
  int models = 3;
  int layers = 4;
  int64_t hidden = 256;
  int64_t intermediate = 688;
  int64_t vocab = 1000;
  DType dtype = DType::BF16;
  uint64_t seed = 0;
  uint64_t max_shard_bytes = 5'000'000'000ULL;
};

// Writes DIR/base and DIR/model_1 .. DIR/model_N (atomically, as one directory).
void write_synthetic_family(const std::filesystem::path& dir, const SyntheticFamily& spec, bool force);

// Bytes of one checkpoint of the family.
uint64_t synthetic_checkpoint_bytes(const SyntheticFamily& spec);

}  // namespace amalgam
