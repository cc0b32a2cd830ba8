// Hugging Face checkpoint directories: `model.safetensors`, or shards
// `model-0000i-of-0000N.safetensors` listed by `model.safetensors.index.json`
// ({"metadata": {"total_size": N}, "weight_map": {tensor: shard}}), beside `config.json`
// and other files (tokenizer, preprocessor config) that a merge carries over.
#pragma once

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/safetensors.h"

namespace amalgam {

inline constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000ULL;

class CheckpointReader {
 public:
  // `path` is a checkpoint directory or a single .safetensors file. Every shard is mapped
  // and validated, and the index is checked against the shards' contents.
  explicit CheckpointReader(const std::filesystem::path& path);

  // The directory holding the checkpoint (for a single file: its directory).
  const std::filesystem::path& dir() const { return dir_; }
  // What the user named, for messages.
  const std::filesystem::path& path() const { return path_; }
  bool sharded() const { return shards_.size() > 1 || index_path_.has_value(); }
  const std::vector<std::unique_ptr<SafetensorsReader>>& shards() const { return shards_; }

  // Tensor names: shards in file-name order, each in file order.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return location_.contains(name); }
  // Throws InputError naming the checkpoint when the tensor is missing.
  const TensorInfo& info(const std::string& name) const;
  const SafetensorsReader& shard_of(const std::string& name) const;
  Tensor tensor(const std::string& name) const;
  // Done with this tensor: its pages leave the process's resident set (the page cache keeps them).
  void release(const std::string& name) const { shard_of(name).release(name); }
  void prefetch(const std::string& name) const { shard_of(name).prefetch(name); }
  uint64_t total_tensor_bytes() const;

  // config.json, parsed, when the directory has one.
  const std::optional<nlohmann::json>& config() const { return config_; }
  // Regular files of the directory that are not weights (config, tokenizer, ...): what an
  // output made from this checkpoint carries over.
  std::vector<std::filesystem::path> auxiliary_files() const;

 private:
  void open_sharded(const std::filesystem::path& index);

  std::filesystem::path path_;
  std::filesystem::path dir_;
  std::optional<std::filesystem::path> index_path_;
  std::vector<std::unique_ptr<SafetensorsReader>> shards_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, size_t> location_;  // name -> shard index
  std::optional<nlohmann::json> config_;
};

// Writes a checkpoint directory: tensors split greedily, in plan order, into shards of at
// most `max_shard_bytes` (a larger tensor alone in its shard), one `model.safetensors`
// when everything fits, otherwise numbered shards and the index. Tensors may be written
// in any order and from several threads, or, with WriteOrder::Plan, strictly in plan
// order (see SafetensorsWriter).
class CheckpointWriter {
 public:
  CheckpointWriter(const std::filesystem::path& dir, const std::vector<TensorSpec>& plan,
                   uint64_t max_shard_bytes = kDefaultMaxShardBytes, const Metadata& metadata = {{"format", "pt"}},
                   WriteOrder order = WriteOrder::Any);
  void write(const std::string& name, const Tensor& tensor);
  // WriteOrder::Plan only: the next bytes of tensor `name` (SafetensorsWriter::append).
  void append(const std::string& name, std::span<const std::byte> bytes);
  std::span<std::byte> reserve(const std::string& name, size_t max);
  void commit(const std::string& name, size_t n);
  void finish();
  size_t shard_count() const { return shards_.size(); }

 private:
  SafetensorsWriter& shard_writing(const std::string& name);

  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsWriter>> shards_;
  std::unordered_map<std::string, size_t> shard_of_;
  std::vector<std::string> order_;
  uint64_t total_bytes_ = 0;
};

// Copies `files` into `dir` (overwriting what is there).
void copy_files_into(const std::vector<std::filesystem::path>& files, const std::filesystem::path& dir);

}  // namespace amalgam
