#include "io/scratch_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "core/error.h"

namespace amalgam {

ScratchFile::ScratchFile(const std::filesystem::path& dir) : dir_(dir) {
  std::string templ = (dir / ".amalgam-scratch-XXXXXX").string();
  fd_ = ::mkstemp(templ.data());
  if (fd_ < 0) throw_system_error(dir, "cannot create a scratch file");
  ::unlink(templ.c_str());  // nothing to clean up, whatever happens next
}

ScratchFile::~ScratchFile() {
  if (fd_ >= 0) ::close(fd_);
}

ScratchFile::ScratchFile(ScratchFile&& other) noexcept : dir_(std::move(other.dir_)), fd_(other.fd_) {
  other.fd_ = -1;
}

void ScratchFile::write(uint64_t offset, std::span<const std::byte> data) {
  while (!data.empty()) {
    const ssize_t n = ::pwrite(fd_, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw_system_error(dir_, "writing a scratch file");
    data = data.subspan(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
}

void ScratchFile::read(uint64_t offset, std::span<std::byte> out) const {
  while (!out.empty()) {
    const ssize_t n = ::pread(fd_, out.data(), out.size(), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_system_error(dir_, "reading a scratch file");
    if (n == 0) throw std::runtime_error(dir_.string() + ": scratch file ended early");
    out = out.subspan(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
}

}  // namespace amalgam
