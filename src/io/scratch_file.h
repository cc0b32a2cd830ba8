// A temporary file for data that does not fit the memory budget (RegMean++'s hidden
// states): created unlinked in a given directory, so it disappears with the process even
// after a crash, and read and written at offsets with pread/pwrite.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>

namespace amalgam {

class ScratchFile {
 public:
  explicit ScratchFile(const std::filesystem::path& dir);
  ~ScratchFile();
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  ScratchFile(ScratchFile&& other) noexcept;
  ScratchFile& operator=(ScratchFile&&) = delete;

  // Whole reads and writes: a short write (the disk is full) or a short read is an error.
  void write(uint64_t offset, std::span<const std::byte> data);
  void read(uint64_t offset, std::span<std::byte> out) const;

 private:
  std::filesystem::path dir_;
  int fd_ = -1;
};

}  // namespace amalgam
