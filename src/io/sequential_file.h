// A file written once, front to back, past the page cache (O_DIRECT).
//
// A merge writes gigabytes it will not read back. Buffered writes copy every byte into
// freshly allocated page-cache pages and then write them back: on the measured VM that
// cost more CPU than the merge's own arithmetic (about 1 s of kernel time for a 1.27 GB
// output, against 0.15 s through O_DIRECT). Appended bytes gather in an aligned block
// buffer that goes to the disk a few megabytes at a time; the last, partial block is
// padded and the file trimmed back to its length. Where the file system refuses O_DIRECT
// (tmpfs, some network file systems) the same blocks go through the page cache instead.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>

namespace amalgam {

class SequentialFile {
 public:
  // Creates `path`, or truncates it. `bypass_cache` false writes the same blocks through the
  // page cache from the start (what a file system without O_DIRECT gets; tests use it).
  explicit SequentialFile(const std::filesystem::path& path, bool bypass_cache = true);
  ~SequentialFile();
  SequentialFile(const SequentialFile&) = delete;
  SequentialFile& operator=(const SequentialFile&) = delete;

  void append(std::span<const std::byte> bytes);
  // Writes what is buffered, trims the padding, fsyncs and closes. Nothing may follow.
  void finish();

  uint64_t size() const { return flushed_ + fill_; }
  // Whether the file is written past the page cache (false after a fallback).
  bool direct() const { return direct_; }

 private:
  void write_block(size_t bytes);

  struct FreeAligned {
    void operator()(std::byte* p) const;
  };

  std::filesystem::path path_;
  int fd_ = -1;
  bool direct_ = false;
  std::unique_ptr<std::byte, FreeAligned> buffer_;
  size_t fill_ = 0;       // bytes in the buffer
  uint64_t flushed_ = 0;  // bytes already in the file, a multiple of the alignment
};

}  // namespace amalgam
