// A read-only memory map of a whole file (RAII). Checkpoints are read through maps so that
// tensors are zero-copy views and the page cache, not amalgam, decides what stays in RAM.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>

namespace amalgam {

class MappedFile {
 public:
  // Throws InputError when the file cannot be opened or is not a regular file.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

  // Drops the pages of `range` from this process's page tables once a caller is done with
  // them (the page cache keeps them; a later read faults them back in). Streaming through a
  // large checkpoint this way keeps resident memory at the size of the tensors in flight
  // instead of growing to the size of every input.
  void release(std::span<const std::byte> range) const;

 private:
  std::filesystem::path path_;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace amalgam
