// Task data: labelled images for evaluating, calibrating and training models.
//
// A task is a directory holding `task.json` (name, class names, image shape [H, W, C],
// splits and their sizes) and one safetensors file per split (`train.safetensors`,
// `test.safetensors`, optionally `val.safetensors`) with `images` U8 [N, H, W, C] and
// `labels` I64 [N]. Images are stored as decoded bytes, before any model's preprocessing,
// so one task serves models of any input size.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace amalgam {

inline constexpr const char* kTaskFile = "task.json";
inline constexpr int kTaskFormatVersion = 1;

// The shape of one image, height x width x channels (interleaved, as stored).
struct ImageShape {
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;

  int64_t bytes() const { return height * width * channels; }
  bool operator==(const ImageShape&) const = default;
};

// "28x28x1".
std::string to_string(const ImageShape& shape);

struct SplitInfo {
  std::string name;
  int64_t size = 0;
};

// What task.json says, validated.
struct TaskInfo {
  std::string name;
  std::vector<std::string> classes;
  ImageShape image;
  std::vector<SplitInfo> splits;  // train, val, test first, then others by name

  int64_t num_classes() const { return static_cast<int64_t>(classes.size()); }
  const SplitInfo* find_split(std::string_view split) const;

  nlohmann::ordered_json to_json() const;
  // Parses and validates; errors are InputErrors naming `file` and the key.
  static TaskInfo from_json(const nlohmann::json& j, const std::filesystem::path& file);
};

// Reads and validates DIR/task.json.
TaskInfo read_task_info(const std::filesystem::path& dir);
// DIR/<split>.safetensors.
std::filesystem::path split_path(const std::filesystem::path& dir, std::string_view split);

// One split: images U8 [N, H, W, C] (a zero-copy view of the mapped file when loaded) and
// their labels.
struct TaskSplit {
  std::string name;
  Tensor images;
  std::vector<int64_t> labels;

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  ImageShape image_shape() const;
  // Image i's H*W*C bytes.
  std::span<const uint8_t> image(int64_t i) const;
};

// Loads and validates a split of the task in `dir`: dtypes, shapes against task.json,
// labels in [0, num_classes). InputError naming the file and tensor otherwise.
TaskSplit load_split(const std::filesystem::path& dir, const TaskInfo& info, std::string_view split);

// Checks `split` against `info` as load_split does; `file` names it in errors.
void validate_split(const TaskSplit& split, const TaskInfo& info, const std::filesystem::path& file);

// Writes a task directory whole or not at all (staged beside `dir`, renamed into place);
// an existing `dir` is replaced only with `force`. The splits written are `splits`:
// `info.splits` is ignored and rewritten from them.
void write_task(const std::filesystem::path& dir, TaskInfo info, std::span<const TaskSplit> splits, bool force);

// Examples per class.
std::vector<int64_t> class_counts(const TaskSplit& split, int64_t num_classes);

// A fixed pseudo-random generator (SplitMix64), so that seeded draws are the same on every
// machine and standard library (std::uniform_int_distribution's are not).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next();
  // Uniform in [0, bound), without modulo bias; bound > 0.
  uint64_t below(uint64_t bound);

 private:
  uint64_t state_;
};

// k distinct indices drawn uniformly from [0, n), sorted ascending; the same for the same
// (n, k, seed) everywhere. k >= n gives all of [0, n).
std::vector<int64_t> sample_indices(int64_t n, int64_t k, uint64_t seed);

// A random permutation of [0, n) (Fisher-Yates), drawn from `rng`, which advances: an epoch
// loop shuffles again with the same generator.
std::vector<int64_t> permutation(int64_t n, SplitMix64& rng);

}  // namespace amalgam
