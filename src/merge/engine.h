// The merge engine: opens the checkpoints a config names, checks that they fit together,
// and streams the merge tensor by tensor into an atomic output directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "merge/config.h"
#include "merge/plan.h"  // layer_position, find_layer_stacks

namespace amalgam {

struct MergeOptions {
  std::filesystem::path output;
  bool force = false;
  uint64_t max_shard_bytes = kDefaultMaxShardBytes;
  bool allow_missing = false;  // a tensor missing from a candidate is taken from the base
  bool check_finite = true;    // NaN or Inf in an input is an error
  bool quiet = false;
  std::optional<uint64_t> seed;  // overrides the config's seed
  // What a method may hold in memory (RegMean++'s hidden states spill to disk beyond half
  // of it); 0 means half of the machine's physical memory.
  uint64_t max_memory = 0;
  // Write merge_report.json (merge/audit.h) into the output.
  bool audit = true;
  // Carry the reference model's tokenizer files (mergekit's --copy-tokenizer, on by default),
  // and write README.md, the merge's model card (--write-model-card).
  bool copy_tokenizer = true;
  bool model_card = true;
};

// Half of the machine's physical memory: the default --max-memory.
uint64_t default_max_memory();

struct MergeSummary {
  size_t tensors_merged = 0;
  size_t tensors_copied = 0;  // integer buffers, taken from the base
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  size_t shards = 0;
  double seconds = 0;
  std::vector<std::string> audit_summary;  // a few lines from merge_report.json
  uint64_t nonfinite_written = 0;          // NaN and Inf written, with check_finite off
};

MergeSummary run_merge(const MergeConfig& config, const MergeOptions& options);

}  // namespace amalgam
