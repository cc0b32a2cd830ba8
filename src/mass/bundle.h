// A MASS bundle: everything routed inference needs besides the base checkpoint.
//
//   BUNDLE/bundle.json              format, the base's absolute path, tasks, ranks, sizes
//   BUNDLE/router.json              routing layer, token, mode, threshold, temperature, ...
//   BUNDLE/first_pass/              TSV-M of every task (alpha 1): a Hugging Face checkpoint
//   BUNDLE/factors/<task>.safetensors  "<name>.U" / ".S" / ".Vt" per 2-D tensor, "<name>.delta"
//                                      per other floating tensor, in the base tensor's dtype
//   BUNDLE/heads/<task>.safetensors    the task's classifier head, copied
//   BUNDLE/merge_report.json        the audit (merge/audit.h): the task vectors against the
//                                   first pass, ranks, energy kept, subspace interference
//
// The bundle refers to the base instead of copying it: a deployment keeps one base next to
// several bundles. It is written whole or not at all (AtomicOutput).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "mass/config.h"
#include "mass/router.h"

namespace amalgam::mass {

inline constexpr const char* kBundleFile = "bundle.json";
inline constexpr const char* kBundleFormat = "amalgam-mass";
inline constexpr int kBundleVersion = 1;

// Bytes on disk (tensor files; configs are negligible).
struct BundleSizes {
  uint64_t base = 0;           // the base checkpoint's tensors
  uint64_t factors = 0;        // every task's factors file
  uint64_t first_pass = 0;     // the first-pass model's tensor files
  uint64_t heads = 0;          // the copied heads
  uint64_t all_finetunes = 0;  // T x base: what storing every fine-tune would take

  uint64_t bundle() const { return factors + first_pass + heads; }
  nlohmann::ordered_json to_json() const;
};

// A task's delta of one tensor left out of the first pass by the redundancy filter: its
// cosine with the delta of `like`, accepted before it, exceeded the threshold.
struct FilteredDelta {
  std::string tensor;
  std::string task;
  std::string like;
  double cosine = 0;
};

struct BundleInfo {
  std::filesystem::path dir;
  std::filesystem::path base;  // absolute
  std::vector<std::string> tasks;
  double rank_fraction = 0;
  std::map<std::string, int64_t> ranks;  // per 2-D tensor: the rank kept per task
  BundleSizes sizes;
  RouterConfig router;
  std::optional<double> similarity_threshold;  // the first pass's redundancy filter, when on
  std::vector<FilteredDelta> filtered;

  std::filesystem::path first_pass_dir() const { return dir / "first_pass"; }
  std::filesystem::path factors_path(size_t task) const;
  std::filesystem::path head_path(size_t task) const;

  // Reads and validates bundle.json and router.json; InputError naming the file and key.
  static BundleInfo read(const std::filesystem::path& dir);
};

struct BuildOptions {
  std::filesystem::path output;
  bool force = false;
  bool quiet = false;
  bool audit = true;  // write merge_report.json
};

struct BuildSummary {
  BundleInfo info;
  int64_t tensors_factored = 0;            // 2-D: rank-k factors per task
  int64_t tensors_whole = 0;               // other floating tensors: the whole delta per task
  int64_t tensors_copied = 0;              // integer tensors: taken from the base
  std::vector<std::string> audit_summary;  // a few lines from merge_report.json
  double seconds = 0;
};

// Decomposes every task vector, writes the first-pass model, the factors, the heads and
// the router config. Every input is checked first (shapes, dtypes, heads, names): bad
// input is an InputError naming the file and tensor, and leaves no output.
BuildSummary build_bundle(const MassConfig& config, const BuildOptions& options);

}  // namespace amalgam::mass
