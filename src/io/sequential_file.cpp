#include "io/sequential_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

namespace amalgam {

namespace {

// Memory, offsets and lengths of O_DIRECT writes must be multiples of the device's logical
// block size; 4096 covers every common one.
constexpr size_t kAlign = 4096;
// Large enough that a write is mostly transfer, small enough to stay out of the way.
constexpr size_t kBufferBytes = size_t{8} << 20;

}  // namespace

void SequentialFile::FreeAligned::operator()(std::byte* p) const {
  std::free(p);
}

SequentialFile::SequentialFile(const std::filesystem::path& path, bool bypass_cache) : path_(path) {
  constexpr int kFlags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
  errno = EINVAL;
  if (bypass_cache) fd_ = ::open(path.c_str(), kFlags | O_DIRECT, 0644);
  direct_ = fd_ >= 0;
  if (fd_ < 0 && errno == EINVAL) fd_ = ::open(path.c_str(), kFlags, 0644);
  if (fd_ < 0) throw_system_error(path, "cannot create");
  buffer_.reset(static_cast<std::byte*>(std::aligned_alloc(kAlign, kBufferBytes)));
  if (!buffer_) throw std::bad_alloc();
}

SequentialFile::~SequentialFile() {
  if (fd_ >= 0) ::close(fd_);
}

void SequentialFile::append(std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    const size_t n = std::min(bytes.size(), kBufferBytes - fill_);
    std::memcpy(buffer_.get() + fill_, bytes.data(), n);
    fill_ += n;
    bytes = bytes.subspan(n);
    if (fill_ == kBufferBytes) {
      write_block(kBufferBytes);
      flushed_ += kBufferBytes;
      fill_ = 0;
    }
  }
}

// Writes the first `bytes` of the buffer at the end of what is flushed.
void SequentialFile::write_block(size_t bytes) {
  size_t done = 0;
  while (done < bytes) {
    const ssize_t w = ::pwrite(fd_, buffer_.get() + done, bytes - done, static_cast<off_t>(flushed_ + done));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EINVAL && direct_) {
      // Opened with O_DIRECT but refused at write time (an alignment this file system
      // wants and we do not meet): go on through the page cache.
      if (::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_DIRECT) != 0) throw_system_error(path_, "fcntl failed");
      direct_ = false;
      continue;
    }
    if (w <= 0) throw_system_error(path_, "write failed");
    done += static_cast<size_t>(w);
  }
  // Through the page cache, start writing back now so that finish()'s fsync finds most of
  // the file on disk already.
  if (!direct_) ::sync_file_range(fd_, static_cast<off_t>(flushed_), static_cast<off_t>(bytes), SYNC_FILE_RANGE_WRITE);
}

void SequentialFile::finish() {
  const uint64_t length = size();
  if (fill_ > 0) {
    // O_DIRECT writes whole blocks: pad the last one, then trim the file to its length.
    size_t bytes = fill_;
    if (direct_) {
      bytes = (fill_ + kAlign - 1) / kAlign * kAlign;
      std::memset(buffer_.get() + fill_, 0, bytes - fill_);
    }
    write_block(bytes);
    if (bytes != fill_ && ::ftruncate(fd_, static_cast<off_t>(length)) != 0)
      throw_system_error(path_, "truncate failed");
    flushed_ += fill_;
    fill_ = 0;
  }
  if (::fsync(fd_) != 0) throw_system_error(path_, "fsync failed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw_system_error(path_, "close failed");
}

}  // namespace amalgam
