#include "io/sequential_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "core/error.h"

namespace amalgam {

namespace {

// Memory, offsets and lengths of O_DIRECT writes must be multiples of the device's logical
// block size; 4096 covers every common one.
constexpr size_t kAlign = 4096;
// A write is mostly transfer at this size, and the device splits it into several requests.
constexpr size_t kBlockBytes = size_t{8} << 20;
constexpr size_t kWriters = 2;
// How much is written between the writers' fdatasync calls.
constexpr uint64_t kSyncBytes = uint64_t{32} << 20;

}  // namespace

SequentialFile::SequentialFile(const std::filesystem::path& path, bool bypass_cache) : path_(path) {
  constexpr int kFlags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
  errno = EINVAL;
  if (bypass_cache) fd_ = ::open(path.c_str(), kFlags | O_DIRECT, 0644);
  direct_ = fd_ >= 0;
  if (fd_ < 0 && errno == EINVAL) fd_ = ::open(path.c_str(), kFlags, 0644);
  if (fd_ < 0) throw_system_error(path, "cannot create");
}

SequentialFile::~SequentialFile() {
  stop_writers();
  if (fd_ >= 0) ::close(fd_);
}

bool SequentialFile::direct() const {
  std::lock_guard lock(mutex_);
  return direct_;
}

void SequentialFile::append(std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    const std::span<std::byte> space = reserve(bytes.size());
    std::memcpy(space.data(), bytes.data(), space.size());
    commit(space.size());
    bytes = bytes.subspan(space.size());
  }
}

std::span<std::byte> SequentialFile::reserve(size_t max) {
  if (fd_ < 0) throw std::logic_error("SequentialFile: write after finish");
  if (allocated_ == 0) {
    std::unique_lock lock(mutex_);
    take_free_block(lock);
  }
  return {blocks_[current_].mutable_bytes().data() + fill_, std::min(max, kBlockBytes - fill_)};
}

void SequentialFile::commit(size_t n) {
  if (n > kBlockBytes - fill_) throw std::logic_error("SequentialFile: commit past the reserved bytes");
  fill_ += n;
  if (fill_ == kBlockBytes) submit(kBlockBytes);
}

void SequentialFile::submit(size_t bytes) {
  std::unique_lock lock(mutex_);
  if (error_) std::rethrow_exception(error_);
  if (writers_.empty())
    for (size_t i = 0; i < kWriters; ++i) writers_.emplace_back([this] { write_loop(); });
  queue_.push_back({current_, queued_, bytes});
  queued_ += fill_;
  fill_ = 0;
  changed_.notify_all();
  take_free_block(lock);
}

// Makes current_ a block nobody writes: a returned one, a new one while there are fewer
// than kBlocks, or else the first the writers return.
void SequentialFile::take_free_block(std::unique_lock<std::mutex>& lock) {
  if (free_.empty() && allocated_ < kBlocks) {
    Tensor block = Tensor::uninitialized(DType::U8, {static_cast<int64_t>(kBlockBytes)});
    if (reinterpret_cast<uintptr_t>(block.bytes().data()) % kAlign != 0)
      throw std::logic_error("SequentialFile: a block buffer is not aligned for O_DIRECT");
    blocks_[allocated_] = std::move(block);
    current_ = allocated_++;
    return;
  }
  changed_.wait(lock, [&] { return !free_.empty() || error_; });
  if (error_) std::rethrow_exception(error_);
  current_ = free_.back();
  free_.pop_back();
}

void SequentialFile::write_loop() {
  std::unique_lock lock(mutex_);
  while (true) {
    changed_.wait(lock, [&] { return !queue_.empty() || stopping_; });
    if (queue_.empty()) return;  // stopping: stop_writers() empties the queue
    const Write w = queue_.front();
    queue_.pop_front();
    ++in_flight_;
    lock.unlock();
    std::exception_ptr failed;
    try {
      write_block(w);
    } catch (...) {
      failed = std::current_exception();
    }
    lock.lock();
    --in_flight_;
    free_.push_back(w.block);
    if (failed && !error_) error_ = failed;
    changed_.notify_all();
    unsynced_ += w.bytes;
    if (unsynced_ >= kSyncBytes && !syncing_ && !error_) {
      // Make the written part durable now, while the caller goes on, so that finish()'s
      // fsync finds little left: on the measured VM the device's flush of a gigabyte
      // written past the page cache took 0.45 s, all of it at the end.
      unsynced_ = 0;
      syncing_ = true;
      lock.unlock();
      const bool synced = ::fdatasync(fd_) == 0;
      lock.lock();
      syncing_ = false;
      if (!synced && !error_) {
        try {
          throw_system_error(path_, "fdatasync failed");
        } catch (...) {
          error_ = std::current_exception();
        }
        changed_.notify_all();
      }
    }
  }
}

void SequentialFile::write_block(const Write& w) {
  const std::byte* data = blocks_[w.block].bytes().data();
  size_t done = 0;
  while (done < w.bytes) {
    const ssize_t n = ::pwrite(fd_, data + done, w.bytes - done, static_cast<off_t>(w.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL) {
      std::lock_guard lock(mutex_);
      if (direct_) {
        // Opened with O_DIRECT but refused at write time (an alignment this file system
        // wants and we do not meet): go on through the page cache.
        if (::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_DIRECT) != 0) throw_system_error(path_, "fcntl failed");
        direct_ = false;
        continue;
      }
    }
    if (n <= 0) throw_system_error(path_, "write failed");
    done += static_cast<size_t>(n);
  }
  // Through the page cache, start writing back now so that finish()'s fsync finds most of
  // the file on disk already.
  if (!direct())
    ::sync_file_range(fd_, static_cast<off_t>(w.offset), static_cast<off_t>(w.bytes), SYNC_FILE_RANGE_WRITE);
}

void SequentialFile::finish() {
  if (fd_ < 0) throw std::logic_error("SequentialFile: finish twice");
  const uint64_t length = size();
  if (fill_ > 0) {
    // O_DIRECT writes whole blocks: pad the last one, and trim the file below.
    const size_t padded = (fill_ + kAlign - 1) / kAlign * kAlign;
    std::memset(blocks_[current_].mutable_bytes().data() + fill_, 0, padded - fill_);
    submit(padded);
  }
  {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return (queue_.empty() && in_flight_ == 0) || error_; });
    if (error_) std::rethrow_exception(error_);
  }
  stop_writers();
  for (auto& b : blocks_) b = Tensor();
  allocated_ = 0;
  if (::ftruncate(fd_, static_cast<off_t>(length)) != 0) throw_system_error(path_, "truncate failed");
  if (::fsync(fd_) != 0) throw_system_error(path_, "fsync failed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw_system_error(path_, "close failed");
}

void SequentialFile::stop_writers() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    queue_.clear();  // after finish() it is empty; on unwinding, nothing more is wanted
  }
  changed_.notify_all();
  for (auto& t : writers_) t.join();
  writers_.clear();
}

}  // namespace amalgam
