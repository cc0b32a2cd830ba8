#include "data/task.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <limits>
#include <set>
#include <stdexcept>
#include <unordered_map>

#include "core/error.h"
#include "io/atomic_output.h"
#include "io/json_file.h"
#include "io/safetensors.h"

namespace amalgam {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Images wider or taller than this are certainly a corrupt file, and keeping H*W*C far from
// overflowing lets every later size computation use int64 freely.
constexpr int64_t kMaxImageSide = 1 << 16;

// Split names become file names.
bool valid_split_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; });
}

int split_rank(std::string_view name) {
  if (name == "train") return 0;
  if (name == "val") return 1;
  if (name == "test") return 2;
  return 3;
}

void sort_splits(std::vector<SplitInfo>& splits) {
  std::sort(splits.begin(), splits.end(), [](const SplitInfo& a, const SplitInfo& b) {
    const int ra = split_rank(a.name), rb = split_rank(b.name);
    return ra != rb ? ra < rb : a.name < b.name;
  });
}

[[noreturn]] void bad_key(const fs::path& file, const std::string& key, const std::string& problem) {
  throw InputError(file, "key '" + key + "': " + problem);
}

const json& require(const json& j, const char* key, const fs::path& file) {
  const auto it = j.find(key);
  if (it == j.end()) bad_key(file, key, "missing");
  return *it;
}

// An integer in [lo, hi], or an InputError naming the key.
int64_t integer_in(const json& v, int64_t lo, int64_t hi, const fs::path& file, const std::string& key) {
  const bool fits = v.is_number_integer() && (!v.is_number_unsigned() || v.get<uint64_t>() <= uint64_t(hi));
  const int64_t x = fits ? v.get<int64_t>() : 0;
  if (!fits || x < lo || x > hi)
    bad_key(file, key, v.dump() + " is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

std::vector<std::string> parse_classes(const json& v, const fs::path& file) {
  if (!v.is_array() || v.empty()) bad_key(file, "classes", "must be a non-empty array of class names");
  std::vector<std::string> classes;
  std::set<std::string> seen;
  for (const auto& c : v) {
    if (!c.is_string() || c.get<std::string>().empty()) bad_key(file, "classes", c.dump() + " is not a class name");
    if (!seen.insert(c.get<std::string>()).second) bad_key(file, "classes", "class " + c.dump() + " appears twice");
    classes.push_back(c.get<std::string>());
  }
  return classes;
}

ImageShape parse_image_shape(const json& v, const fs::path& file) {
  if (!v.is_array() || v.size() != 3) bad_key(file, "image_shape", "must be [height, width, channels]");
  ImageShape s;
  s.height = integer_in(v[0], 1, kMaxImageSide, file, "image_shape[0]");
  s.width = integer_in(v[1], 1, kMaxImageSide, file, "image_shape[1]");
  s.channels = integer_in(v[2], 1, 3, file, "image_shape[2]");
  if (s.channels == 2) bad_key(file, "image_shape[2]", "channels must be 1 (gray) or 3 (RGB)");
  return s;
}

std::vector<SplitInfo> parse_splits(const json& v, const fs::path& file) {
  if (!v.is_object() || v.empty()) bad_key(file, "splits", "must be a non-empty object {\"train\": size, ...}");
  std::vector<SplitInfo> splits;
  for (const auto& [name, size] : v.items()) {
    if (!valid_split_name(name)) bad_key(file, "splits", "'" + name + "' is not a split name (letters, digits, _ -)");
    splits.push_back({name, integer_in(size, 1, std::numeric_limits<int64_t>::max(), file, "splits." + name)});
  }
  sort_splits(splits);
  return splits;
}

Tensor labels_tensor(const std::vector<int64_t>& labels) {
  Tensor t = Tensor::uninitialized(DType::I64, {static_cast<int64_t>(labels.size())});
  if (!labels.empty()) std::memcpy(t.mutable_bytes().data(), labels.data(), labels.size() * sizeof(int64_t));
  return t;
}

std::string split_names(const TaskInfo& info) {
  std::string names;
  for (const auto& s : info.splits) names += (names.empty() ? "" : ", ") + s.name;
  return names;
}

}  // namespace

std::string to_string(const ImageShape& shape) {
  return std::to_string(shape.height) + "x" + std::to_string(shape.width) + "x" + std::to_string(shape.channels);
}

const SplitInfo* TaskInfo::find_split(std::string_view split) const {
  for (const auto& s : splits)
    if (s.name == split) return &s;
  return nullptr;
}

nlohmann::ordered_json TaskInfo::to_json() const {
  nlohmann::ordered_json j;
  j["version"] = kTaskFormatVersion;
  j["name"] = name;
  j["classes"] = classes;
  j["image_shape"] = {image.height, image.width, image.channels};
  auto& s = j["splits"] = nlohmann::ordered_json::object();
  for (const auto& split : splits) s[split.name] = split.size;
  return j;
}

TaskInfo TaskInfo::from_json(const json& j, const fs::path& file) {
  if (!j.is_object()) throw InputError(file, "not a task description (expected a JSON object)");
  if (const auto it = j.find("version"); it != j.end() && *it != kTaskFormatVersion)
    bad_key(file, "version",
            it->dump() + " is not a version this amalgam reads (" + std::to_string(kTaskFormatVersion) + ")");
  TaskInfo info;
  const json& name = require(j, "name", file);
  if (!name.is_string() || name.get<std::string>().empty()) bad_key(file, "name", "must be a non-empty string");
  info.name = name.get<std::string>();
  info.classes = parse_classes(require(j, "classes", file), file);
  info.image = parse_image_shape(require(j, "image_shape", file), file);
  info.splits = parse_splits(require(j, "splits", file), file);
  return info;
}

TaskInfo read_task_info(const fs::path& dir) {
  const fs::path file = dir / kTaskFile;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw InputError(dir, "not a task directory (no such directory)");
  if (!fs::exists(file, ec)) throw InputError(file, "missing: a task directory needs a task.json");
  return TaskInfo::from_json(read_json_file(file), file);
}

fs::path split_path(const fs::path& dir, std::string_view split) {
  return dir / (std::string(split) + ".safetensors");
}

ImageShape TaskSplit::image_shape() const {
  if (images.rank() != 4) return {};
  return {images.dim(1), images.dim(2), images.dim(3)};
}

std::span<const uint8_t> TaskSplit::image(int64_t i) const {
  if (i < 0 || i >= images.dim(0)) throw std::out_of_range("TaskSplit::image: index out of range");
  const auto n = static_cast<size_t>(image_shape().bytes());
  const auto bytes = images.bytes().subspan(static_cast<size_t>(i) * n, n);
  return {reinterpret_cast<const uint8_t*>(bytes.data()), n};
}

void validate_split(const TaskSplit& split, const TaskInfo& info, const fs::path& file) {
  const Tensor& images = split.images;
  if (images.dtype() != DType::U8)
    throw InputError(file, "images", "dtype " + std::string(dtype_name(images.dtype())) + ", expected U8");
  const Shape expected = {split.size(), info.image.height, info.image.width, info.image.channels};
  if (images.shape() != expected)
    throw InputError(file, "images",
                     "shape " + shape_to_string(images.shape()) + " does not match " + std::to_string(split.size()) +
                         " labels of images " + to_string(info.image) + " (task.json); expected " +
                         shape_to_string(expected));
  const int64_t classes = info.num_classes();
  for (size_t i = 0; i < split.labels.size(); ++i) {
    const int64_t label = split.labels[i];
    if (label < 0 || label >= classes)
      throw InputError(file, "labels",
                       "label " + std::to_string(label) + " at index " + std::to_string(i) + " is outside [0, " +
                           std::to_string(classes) + ") (task.json has " + std::to_string(classes) + " classes)");
  }
}

TaskSplit load_split(const fs::path& dir, const TaskInfo& info, std::string_view split) {
  const SplitInfo* entry = info.find_split(split);
  if (!entry)
    throw InputError(dir / kTaskFile, "no split '" + std::string(split) + "' (the task has " + split_names(info) + ")");
  const fs::path file = split_path(dir, split);
  std::error_code ec;
  if (!fs::exists(file, ec))
    throw InputError(file, "missing: task.json lists split '" + std::string(split) + "' but the file is not there");
  const SafetensorsReader reader(file);
  TaskSplit out;
  out.name = std::string(split);
  out.images = reader.tensor("images");
  const Tensor labels = reader.tensor("labels");
  if (labels.dtype() != DType::I64)
    throw InputError(file, "labels", "dtype " + std::string(dtype_name(labels.dtype())) + ", expected I64");
  if (labels.rank() != 1)
    throw InputError(file, "labels", "shape " + shape_to_string(labels.shape()) + ", expected [N]");
  out.labels.resize(static_cast<size_t>(labels.numel()));
  if (!out.labels.empty()) std::memcpy(out.labels.data(), labels.bytes().data(), labels.nbytes());
  if (out.size() != entry->size)
    throw InputError(file, "labels",
                     std::to_string(out.size()) + " examples, but task.json says split '" + out.name + "' has " +
                         std::to_string(entry->size));
  validate_split(out, info, file);
  return out;
}

void write_task(const fs::path& dir, TaskInfo info, std::span<const TaskSplit> splits, bool force) {
  info.splits.clear();
  for (const auto& s : splits) {
    if (info.find_split(s.name)) throw std::invalid_argument("write_task: split '" + s.name + "' given twice");
    info.splits.push_back({s.name, s.size()});
  }
  sort_splits(info.splits);
  // Validating what is about to be written as a reader would guarantees it reads back.
  const fs::path task_file = dir / kTaskFile;
  info = TaskInfo::from_json(json::parse(info.to_json().dump()), task_file);
  for (const auto& s : splits) validate_split(s, info, split_path(dir, s.name));

  AtomicOutput out(dir, force);
  for (const auto& s : splits)
    save_safetensors(split_path(out.staging(), s.name), {{"images", s.images}, {"labels", labels_tensor(s.labels)}});
  write_text_file(out.staging() / kTaskFile, info.to_json().dump(2) + "\n");
  out.commit();
}

std::vector<int64_t> class_counts(const TaskSplit& split, int64_t num_classes) {
  std::vector<int64_t> counts(static_cast<size_t>(std::max<int64_t>(num_classes, 0)), 0);
  for (const int64_t label : split.labels)
    if (label >= 0 && label < num_classes) ++counts[static_cast<size_t>(label)];
  return counts;
}

uint64_t SplitMix64::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::below(uint64_t bound) {
  if (bound == 0) throw std::invalid_argument("SplitMix64::below: bound is 0");
  // Draws under 2^64 mod bound are rejected, so that every residue has the same count of
  // accepted draws behind it.
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const uint64_t r = next();
    if (r >= threshold) return r % bound;
  }
}

std::vector<int64_t> permutation(int64_t n, SplitMix64& rng) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<size_t>(rng.below(static_cast<uint64_t>(i + 1)));
    std::swap(p[static_cast<size_t>(i)], p[j]);
  }
  return p;
}

std::vector<int64_t> sample_indices(int64_t n, int64_t k, uint64_t seed) {
  if (n < 0 || k < 0) throw std::invalid_argument("sample_indices: negative count");
  std::vector<int64_t> out(static_cast<size_t>(std::min(n, k)));
  if (k >= n) {
    for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = i;
    return out;
  }
  // A partial Fisher-Yates shuffle of the virtual array [0, n): only displaced entries are
  // stored, so memory is O(k) however large n is.
  SplitMix64 rng(seed);
  std::unordered_map<int64_t, int64_t> moved;
  const auto at = [&](int64_t i) {
    const auto it = moved.find(i);
    return it == moved.end() ? i : it->second;
  };
  for (int64_t i = 0; i < k; ++i) {
    const int64_t j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - i)));
    out[static_cast<size_t>(i)] = at(j);
    moved[j] = at(i);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace amalgam
