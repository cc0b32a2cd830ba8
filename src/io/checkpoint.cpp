#include "io/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/json_file.h"

namespace amalgam {

namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A shard named in an index must be a plain file name inside the checkpoint directory:
// anything with a path separator or "..", or a control character, could escape it.
bool is_plain_file_name(const std::string& name) {
  if (name.empty() || name == "." || name == "..") return false;
  for (unsigned char c : name)
    if (c == '/' || c == '\\' || c < 0x20 || c == 0x7f) return false;
  return true;
}

// Other weight formats are never carried into an output: they would hold the base's
// unmerged weights under a name a loader might prefer.
bool is_weight_file(const std::string& name) {
  for (const char* ext : {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf"})
    if (ends_with(name, ext)) return true;
  return ends_with(name, ".index.json");
}

}  // namespace

CheckpointReader::CheckpointReader(const fs::path& path) : path_(path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) throw InputError(path, "cannot be reached: " + ec.message());
  if (ec || !fs::exists(status)) throw InputError(path, "no such file or directory");
  if (fs::is_regular_file(status)) {
    dir_ = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    shards_.push_back(std::make_unique<SafetensorsReader>(path));
  } else if (fs::is_directory(status)) {
    dir_ = path;
    std::vector<fs::path> indexes;
    for (const auto& entry : fs::directory_iterator(path))
      if (entry.is_regular_file() && ends_with(entry.path().filename().string(), ".safetensors.index.json"))
        indexes.push_back(entry.path());
    std::sort(indexes.begin(), indexes.end());
    if (fs::exists(path / "model.safetensors.index.json")) {
      open_sharded(path / "model.safetensors.index.json");
    } else if (fs::exists(path / "model.safetensors")) {
      shards_.push_back(std::make_unique<SafetensorsReader>(path / "model.safetensors"));
    } else if (indexes.size() == 1) {
      open_sharded(indexes.front());
    } else {
      std::string hint;
      if (fs::exists(path / "pytorch_model.bin") || fs::exists(path / "pytorch_model.bin.index.json"))
        hint = " (pytorch_model.bin is not supported: convert it to safetensors)";
      throw InputError(path, "no model.safetensors or model.safetensors.index.json in this directory" + hint);
    }
  } else {
    throw InputError(path, "not a file or directory");
  }

  for (size_t s = 0; s < shards_.size(); ++s)
    for (const auto& t : shards_[s]->tensors()) {
      if (!location_.emplace(t.name, s).second)
        throw InputError(shards_[s]->path(), t.name, "also present in another shard");
      names_.push_back(t.name);
    }
  if (fs::exists(dir_ / "config.json")) config_ = read_json_file(dir_ / "config.json");
}

void CheckpointReader::open_sharded(const fs::path& index_path) {
  index_path_ = index_path;
  const nlohmann::json index = read_json_file(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw InputError(index_path, "no \"weight_map\" object");
  std::map<std::string, std::set<std::string>> tensors_of_shard;
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) throw InputError(index_path, tensor, "weight_map value is not a string");
    const std::string file = shard.get<std::string>();
    if (!is_plain_file_name(file))
      throw InputError(index_path, tensor, "shard '" + file + "' is not a plain file name in the checkpoint directory");
    tensors_of_shard[file].insert(tensor);
  }
  if (tensors_of_shard.empty()) throw InputError(index_path, "weight_map is empty");
  for (const auto& [file, expected] : tensors_of_shard) {
    const fs::path shard_path = dir_ / file;
    if (!fs::exists(shard_path))
      throw InputError(index_path, *expected.begin(), "its shard '" + file + "' does not exist");
    auto reader = std::make_unique<SafetensorsReader>(shard_path);
    for (const auto& name : expected)
      if (!reader->contains(name))
        throw InputError(shard_path, name, "listed in the index but missing from this shard");
    for (const auto& t : reader->tensors())
      if (!expected.contains(t.name))
        throw InputError(shard_path, t.name, "present in the shard but not listed for it in the index");
    shards_.push_back(std::move(reader));
  }
}

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  return *shard_of(name).find(name);
}

const SafetensorsReader& CheckpointReader::shard_of(const std::string& name) const {
  const auto it = location_.find(name);
  if (it == location_.end()) throw InputError(path_, name, "not in this checkpoint");
  return *shards_[it->second];
}

Tensor CheckpointReader::tensor(const std::string& name) const {
  return shard_of(name).tensor(name);
}

uint64_t CheckpointReader::total_tensor_bytes() const {
  uint64_t total = 0;
  for (const auto& s : shards_)
    for (const auto& t : s->tensors()) total += t.nbytes();
  return total;
}

std::vector<fs::path> CheckpointReader::auxiliary_files() const {
  std::vector<fs::path> files;
  if (!fs::is_directory(path_)) {
    if (fs::exists(dir_ / "config.json")) files.push_back(dir_ / "config.json");
    return files;
  }
  for (const auto& entry : fs::directory_iterator(dir_)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.starts_with(".") || is_weight_file(name)) continue;
    files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

namespace {
std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}
}  // namespace

CheckpointWriter::CheckpointWriter(const fs::path& dir, const std::vector<TensorSpec>& plan, uint64_t max_shard_bytes,
                                   const Metadata& metadata, WriteOrder order)
    : dir_(dir) {
  if (max_shard_bytes == 0) throw InputError("--max-shard-size must be positive");
  std::vector<std::vector<TensorSpec>> groups;
  uint64_t current = 0;
  for (const auto& spec : plan) {
    const uint64_t n = spec.nbytes();
    if (groups.empty() || (current > 0 && current + n > max_shard_bytes)) {
      groups.emplace_back();
      current = 0;
    }
    groups.back().push_back(spec);
    current += n;
    total_bytes_ += n;
  }
  if (groups.empty()) groups.emplace_back();
  for (size_t g = 0; g < groups.size(); ++g) {
    const std::string file = groups.size() == 1 ? "model.safetensors" : shard_name(g, groups.size());
    shards_.push_back(std::make_unique<SafetensorsWriter>(dir / file, groups[g], metadata, order));
    for (const auto& spec : groups[g]) {
      shard_of_[spec.name] = g;
      order_.push_back(spec.name);
    }
  }
}

void CheckpointWriter::write(const std::string& name, const Tensor& tensor) {
  shard_writing(name).write(name, tensor);
}

SafetensorsWriter& CheckpointWriter::shard_writing(const std::string& name) {
  const auto it = shard_of_.find(name);
  if (it == shard_of_.end()) throw std::logic_error("CheckpointWriter: tensor '" + name + "' not planned");
  return *shards_[it->second];
}

void CheckpointWriter::append(const std::string& name, std::span<const std::byte> bytes) {
  shard_writing(name).append(name, bytes);
}

std::span<std::byte> CheckpointWriter::reserve(const std::string& name, size_t max) {
  return shard_writing(name).reserve(name, max);
}

void CheckpointWriter::commit(const std::string& name, size_t n) {
  shard_writing(name).commit(name, n);
}

void CheckpointWriter::finish() {
  for (auto& s : shards_) s->finish();
  if (shards_.size() <= 1) return;
  nlohmann::ordered_json index;
  index["metadata"]["total_size"] = total_bytes_;
  auto& map = index["weight_map"] = nlohmann::ordered_json::object();
  std::vector<std::string> sorted = order_;
  std::sort(sorted.begin(), sorted.end());
  for (const auto& name : sorted) map[name] = shards_[shard_of_.at(name)]->path().filename().string();
  write_text_file(dir_ / "model.safetensors.index.json", index.dump(2) + "\n");
}

void copy_files_into(const std::vector<fs::path>& files, const fs::path& dir) {
  for (const auto& f : files) {
    std::error_code ec;
    fs::copy_file(f, dir / f.filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) throw std::runtime_error(f.string() + ": cannot copy into " + dir.string() + ": " + ec.message());
  }
}

}  // namespace amalgam
