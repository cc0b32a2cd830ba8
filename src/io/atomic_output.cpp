#include "io/atomic_output.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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

// The process that made a sibling ".NAME.TAG.PID.N" of `target`, when `entry` is one.
std::optional<pid_t> sibling_owner(const std::string& entry, const fs::path& target, const char* tag) {
  std::string prefix(1, '.');  // appended piecewise: GCC 12 warns falsely on "." + string
  prefix.append(target.filename().string()).append(1, '.').append(tag).append(1, '.');
  if (!entry.starts_with(prefix)) return std::nullopt;
  const char* begin = entry.data() + prefix.size();
  const char* end = entry.data() + entry.size();
  pid_t pid = 0;
  const auto [rest, err] = std::from_chars(begin, end, pid);
  if (err != std::errc() || rest == begin || pid <= 0 || rest == end || *rest != '.') return std::nullopt;
  const std::string_view counter(rest + 1, static_cast<size_t>(end - rest - 1));
  if (counter.empty() || counter.find_first_not_of("0123456789") != std::string_view::npos) return std::nullopt;
  return pid;
}

bool process_is_gone(pid_t pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

// A killed amalgam (SIGKILL, power loss) leaves its staging directory beside the target, and
// one killed inside commit()'s fallback path may leave the previous output moved aside. The
// next output for the same target removes what dead processes staged, and puts a previous
// output back if it was moved aside and never replaced. Live processes' siblings are theirs.
void clean_up_after_dead_processes(const fs::path& target) {
  const fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::error_code ec;
  std::vector<fs::path> staged, moved_aside;
  for (const auto& entry : fs::directory_iterator(parent, ec)) {
    const std::string name = entry.path().filename().string();
    if (const auto pid = sibling_owner(name, target, "amalgam-tmp"); pid && process_is_gone(*pid))
      staged.push_back(entry.path());
    if (const auto pid = sibling_owner(name, target, "amalgam-old"); pid && process_is_gone(*pid))
      moved_aside.push_back(entry.path());
  }
  for (const auto& p : staged) fs::remove_all(p, ec);
  for (const auto& p : moved_aside) {
    if (!fs::exists(fs::symlink_status(target, ec))) fs::rename(p, target, ec);
    if (fs::exists(fs::symlink_status(p, ec))) fs::remove_all(p, ec);
  }
}

// Swaps two paths in one step (renameat2 RENAME_EXCHANGE), so that no instant exists
// without an output at the target. False where the file system cannot (then the caller
// renames twice).
bool exchange(const fs::path& a, const fs::path& b) {
  return ::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0;
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
  clean_up_after_dead_processes(target_);  // first: it may put a previous output back
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
    const bool replacing = fs::exists(fs::symlink_status(target_, ec));
    if (replacing && exchange(staging_, target_)) {
      // The staging path now holds the previous output.
      fs::remove_all(staging_, ec);
      committed_ = true;
      sync_directory(parent);
      return;
    }
    if (replacing) {
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
