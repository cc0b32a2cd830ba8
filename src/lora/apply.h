// A PEFT LoRA adapter applied to its base, as PEFT's merge_and_unload computes it: mergekit's
// `model: BASE+ADAPTER` candidates, which it merges into a cached copy before merging.
//
//   linear module m:    W += s (B A)            (fan_in_fan_out: W += s (B A)^T)
//   embedding module m: W += s (B A)^T           (lora_embedding_A [r, vocab], _B [hidden, r])
//   lora_B.bias:        b += s lora_B.bias
//   modules_to_save:    the saved tensor replaces the base's
// with s = alpha / r (use_rslora: alpha / sqrt(r)), r and alpha from rank_pattern and
// alpha_pattern where they name the module. Computed in F32 a tensor at a time, stored in the
// base's dtype.
#pragma once

#include <filesystem>
#include <optional>

#include "io/atomic_output.h"

namespace amalgam {

// Writes BASE with ADAPTER applied into `out` (a directory): the base's files with their
// tensors changed. InputError naming the adapter's file, key or tensor when the adapter is
// not a LoRA adapter of this base (an unknown PEFT type, DoRA, a module the base lacks, a
// shape that does not fit).
void apply_lora(const std::filesystem::path& base, const std::filesystem::path& adapter,
                const std::filesystem::path& out);

// A base with its adapter applied, written beside `output` for the length of a run (a hidden
// sibling that AtomicOutput stages and, never committed, removes; a crashed run's is removed
// by the next one).
class AppliedAdapter {
 public:
  // `tag` tells a run's applied models apart ("base", "0", ...).
  AppliedAdapter(const std::filesystem::path& base, const std::filesystem::path& adapter,
                 const std::filesystem::path& output, const std::string& tag);
  const std::filesystem::path& path() const { return scratch_.staging(); }

 private:
  AtomicOutput scratch_;
};

}  // namespace amalgam
