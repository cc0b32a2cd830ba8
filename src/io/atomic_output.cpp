#include "io/atomic_output.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "core/error.h"

namespace amalgam {

namespace fs = std::filesystem;

namespace {

fs::path sibling(const fs::path& target, const char* tag) {
  static std::atomic<unsigned> counter{0};
  const fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::string name = target.filename().string();
  name.insert(0, 1, '.');
  for (const std::string& part : {std::string(tag), std::to_string(::getpid()), std::to_string(counter++)})
    name.append(1, '.').append(part);
  return parent / name;
}

bool occupied(const fs::path& target) {
  std::error_code ec;
  const auto status = fs::symlink_status(target, ec);
  if (!fs::exists(status)) return false;
  return !(fs::is_directory(status) && fs::is_empty(target, ec));
}

}  // namespace

void sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some file systems refuse to open directories
  ::fsync(fd);
  ::close(fd);
}

AtomicOutput::AtomicOutput(const fs::path& target, bool force, Kind kind) : kind_(kind) {
  if (target.empty()) throw InputError("output path is empty");
  // "out/" names the directory "out": drop the trailing separator so filename() is set.
  target_ = target.has_filename() ? target : target.parent_path();
  if (occupied(target_) && !force) throw InputError(target_, "already exists; pass --force to replace it");
  std::error_code ec;
  if (!target_.parent_path().empty()) {
    fs::create_directories(target_.parent_path(), ec);
    if (ec) throw InputError(target_, "cannot create parent directory: " + ec.message());
  }
  staging_ = sibling(target_, "amalgam-tmp");
  if (kind_ == Kind::Directory && !fs::create_directory(staging_, ec))
    throw InputError(staging_, "cannot create staging directory: " + (ec ? ec.message() : "it exists"));
}

AtomicOutput::~AtomicOutput() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void AtomicOutput::commit() {
  std::error_code ec;
  const fs::path parent = target_.parent_path().empty() ? fs::path(".") : target_.parent_path();
  if (kind_ == Kind::File) {
    if (fs::is_directory(fs::symlink_status(target_, ec))) fs::remove_all(target_, ec);
    fs::rename(staging_, target_, ec);  // replaces an existing file atomically
    if (ec) throw std::runtime_error(target_.string() + ": cannot move output into place: " + ec.message());
  } else {
    sync_directory(staging_);
    fs::path old;
    if (fs::exists(fs::symlink_status(target_, ec))) {
      old = sibling(target_, "amalgam-old");
      fs::rename(target_, old, ec);
      if (ec) throw std::runtime_error(target_.string() + ": cannot move the previous output aside: " + ec.message());
    }
    fs::rename(staging_, target_, ec);
    if (ec) {
      std::error_code restore;
      if (!old.empty()) fs::rename(old, target_, restore);
      throw std::runtime_error(target_.string() + ": cannot move output into place: " + ec.message());
    }
    if (!old.empty()) fs::remove_all(old, ec);
  }
  committed_ = true;
  sync_directory(parent);
}

}  // namespace amalgam
