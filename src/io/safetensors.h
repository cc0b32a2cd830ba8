// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON
// ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}),
// then the data, offsets relative to its start.
//
// SafetensorsReader maps a file and validates all of it before handing out any tensor:
// every later layer may assume names are unique, offsets are in the file and sizes match.
// SafetensorsWriter streams: the header is written from a plan of every tensor up front,
// then tensors are written (in any order, from any thread) straight to their offsets, or,
// when they come in plan order, appended past the page cache (io/sequential_file.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "io/mapped_file.h"
#include "io/sequential_file.h"

namespace amalgam {

using Metadata = std::map<std::string, std::string>;

// The largest header amalgam accepts (the safetensors reference's limit).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets relative to the data section
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
};

class SafetensorsReader {
 public:
  // Maps and validates the file; throws InputError naming the file (and tensor).
  explicit SafetensorsReader(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_->path(); }
  // Tensors in file order (by offset).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const Metadata& metadata() const { return metadata_; }
  const TensorInfo* find(std::string_view name) const;
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  // A zero-copy view of the tensor's bytes; throws InputError if the name is unknown.
  Tensor tensor(std::string_view name) const;
  // Done with this tensor for now: see MappedFile::release.
  void release(std::string_view name) const;
  // About to read this tensor: see MappedFile::will_need.
  void prefetch(std::string_view name) const;
  uint64_t header_bytes() const { return header_bytes_; }
  uint64_t file_bytes() const { return file_->size(); }

 private:
  void parse_header(std::string_view json_text);
  void validate_layout(uint64_t data_bytes);
  // Where a tensor's data starts in the file: after the length prefix and the header.
  uint64_t file_offset(const TensorInfo& info) const { return 8 + header_bytes_ + info.begin; }

  std::shared_ptr<MappedFile> file_;
  uint64_t header_bytes_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
  Metadata metadata_;
};

// What the writer needs to know of a tensor before its data exists.
struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t nbytes() const;
};

// How a writer's tensors arrive: in any order (written at their offsets through the page
// cache), or exactly in plan order (appended through a SequentialFile: large outputs).
enum class WriteOrder { Any, Plan };

class SafetensorsWriter {
 public:
  // Creates `path` and writes its header for `plan` (tensors laid out in plan order).
  SafetensorsWriter(const std::filesystem::path& path, const std::vector<TensorSpec>& plan,
                    const Metadata& metadata = {{"format", "pt"}}, WriteOrder order = WriteOrder::Any);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Writes one planned tensor; dtype and shape must match the plan. Thread-safe for
  // distinct tensors; with WriteOrder::Plan, a tensor out of plan order is a logic error.
  void write(std::string_view name, const Tensor& tensor);
  // WriteOrder::Plan only: the next bytes of a tensor, which must be the next in plan
  // order (or the one partly appended); it is written once all its bytes are.
  void append(std::string_view name, std::span<const std::byte> bytes);
  // The same in place: the next bytes of tensor `name` in the file's buffer (at least one,
  // at most `max`), then commit(name, n) once the first n are filled.
  std::span<std::byte> reserve(std::string_view name, size_t max);
  void commit(std::string_view name, size_t n);
  // Checks every planned tensor was written, flushes to disk and closes. (With
  // WriteOrder::Plan the file is flushed and closed as its last tensor is written.)
  void finish();

  const std::filesystem::path& path() const { return path_; }
  uint64_t file_bytes() const { return data_start_ + data_bytes_; }

 private:
  const TensorInfo& stream_slot(std::string_view name, uint64_t bytes) const;

  std::filesystem::path path_;
  int fd_ = -1;                             // WriteOrder::Any
  std::unique_ptr<SequentialFile> stream_;  // WriteOrder::Plan
  std::string stream_header_;               // written before the stream's first tensor
  size_t next_ = 0;                         // the next tensor the stream takes
  uint64_t next_filled_ = 0;                // its bytes appended so far
  bool header_streamed_ = false;
  uint64_t data_start_ = 0;
  uint64_t data_bytes_ = 0;
  std::vector<TensorInfo> layout_;
  std::unordered_map<std::string, size_t> index_;
  std::vector<bool> written_;
  std::mutex mutex_;
};

// Serialises the header the writer puts in front of the data: compact JSON,
// "__metadata__" first, then the tensors in the given order, padded with spaces to a
// multiple of 8 bytes. Exposed for tests that check exact bytes.
std::string safetensors_header(const std::vector<TensorInfo>& layout, const Metadata& metadata);

// Writes a whole set of tensors at once (small files: heads, statistics, tests).
void save_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const Metadata& metadata = {{"format", "pt"}});

// True when `path` is a safetensors file whose metadata says amalgam wrote it (`written_by`
// "amalgam ...", or a statistics file's format): what --force may replace.
bool safetensors_written_by_amalgam(const std::filesystem::path& path);

}  // namespace amalgam
