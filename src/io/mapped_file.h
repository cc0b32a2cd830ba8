// A read-only memory map of a whole file (RAII). Checkpoints are read through maps so that
// tensors are zero-copy views and the page cache, not amalgam, decides what stays in RAM.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>

#include "core/tensor.h"

namespace amalgam {

class MappedFile final : public ByteSource {
 public:
  // Throws InputError when the file cannot be opened or is not a regular file.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile() override;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }
  // pread into `dst` (see ByteSource); the descriptor stays open for this.
  void read(uint64_t offset, std::span<std::byte> dst) const override;

  // Drops the pages of `range` from this process's page tables once a caller is done with
  // them (the page cache keeps them; a later read faults them back in). Streaming through a
  // large checkpoint this way keeps resident memory at the size of the tensors in flight
  // instead of growing to the size of every input.
  void release(std::span<const std::byte> range) const;
  // Asks the kernel to start reading bytes [offset, offset + size) into the page cache, so
  // that a cold checkpoint is read from disk while earlier tensors are being merged.
  void will_need(uint64_t offset, uint64_t size) const;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace amalgam
