#include "io/atomic_output.h"

#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/version.h"
#include "io/json_file.h"
#include "io/run_inputs.h"
#include "io/safetensors.h"

namespace amalgam {

namespace fs = std::filesystem;

namespace {

fs::path parent_of(const fs::path& target) {
  return target.parent_path().empty() ? fs::path(".") : target.parent_path();
}

fs::path sibling(const fs::path& target, const char* tag) {
  static std::atomic<unsigned> counter{0};
  std::string name = target.filename().string();
  name.insert(0, 1, '.');
  for (const std::string& part : {std::string(tag), std::to_string(::getpid()), std::to_string(counter++)})
    name.append(1, '.').append(part);
  return parent_of(target) / name;
}

// ".NAME.amalgam-lock", beside the target.
fs::path lock_path(const fs::path& parent, const std::string& name) {
  std::string lock(1, '.');  // appended piecewise: GCC 12 warns falsely on "." + string
  lock.append(name).append(".amalgam-lock");
  return parent / lock;
}

// What a dead process may have left beside its target: ".NAME.TAG.PID.N".
struct Leftover {
  std::string target_name;   // NAME
  bool moved_aside = false;  // TAG amalgam-old (a previous output), else amalgam-tmp (staging)
  pid_t pid = 0;
};

std::optional<Leftover> parse_leftover(std::string_view entry) {
  if (!entry.starts_with('.')) return std::nullopt;
  for (const bool old : {false, true}) {
    const std::string_view tag = old ? ".amalgam-old." : ".amalgam-tmp.";
    const size_t at = entry.rfind(tag);
    if (at == std::string_view::npos || at < 2) continue;
    const std::string_view rest = entry.substr(at + tag.size());
    pid_t pid = 0;
    const auto [end, err] = std::from_chars(rest.data(), rest.data() + rest.size(), pid);
    if (err != std::errc() || end == rest.data() || pid <= 0 || end == rest.data() + rest.size() || *end != '.')
      continue;
    const std::string_view counter(end + 1, static_cast<size_t>(rest.data() + rest.size() - end - 1));
    if (counter.empty() || counter.find_first_not_of("0123456789") != std::string_view::npos) continue;
    return Leftover{std::string(entry.substr(1, at - 1)), old, pid};
  }
  return std::nullopt;
}

bool process_is_gone(pid_t pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

bool exists_at(const fs::path& p) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(p, ec));
}

}  // namespace

// flock on ".NAME.amalgam-lock" beside the target. The file holds the owner's PID, for the
// message of a second writer. It is unlinked while still locked on release; a process that
// had opened it before then finds, once it holds the lock, that the path no longer names
// the file it locked, and starts again on a new one.
class OutputLock {
 public:
  explicit OutputLock(const fs::path& target) : path_(lock_path(parent_of(target), target.filename().string())) {
    for (;;) {
      fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (fd_ < 0) throw_system_error(path_, "cannot create the output's lock file");
      if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        const std::string owner = read_owner();
        ::close(fd_);
        fd_ = -1;
        if (err != EWOULDBLOCK) throw_system_error(path_, "cannot lock");
        throw InputError(target, "is being written by another amalgam (" + owner +
                                     "); wait for it to finish or choose another output");
      }
      struct stat held {
      }, named{};
      if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
          held.st_dev == named.st_dev)
        break;
      ::close(fd_);  // released and unlinked by its previous owner meanwhile: take the new one
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
      throw_system_error(path_, "cannot write the output's lock file");
  }
  ~OutputLock() {
    ::unlink(path_.c_str());
    ::close(fd_);
  }
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

  // True when nobody holds the lock of `target_name` in `parent` (no lock file, or a stale one).
  static bool is_free(const fs::path& parent, const std::string& target_name) {
    const fs::path path = lock_path(parent, target_name);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT;
    const bool free = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
    ::close(fd);
    return free;
  }

 private:
  std::string read_owner() const {
    char buf[32] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    pid_t pid = 0;
    if (n > 0 && std::from_chars(buf, buf + n, pid).ec == std::errc() && pid > 0)
      return "process " + std::to_string(pid);
    return "a process that holds " + path_.string();
  }

  fs::path path_;
  int fd_ = -1;
};

namespace {

// A killed amalgam (SIGKILL, power loss) leaves its staging path beside its target, and one
// killed inside commit()'s fallback path may leave the previous output moved aside. Every
// output removes what dead processes left in its parent directory, for any target, and puts
// a previous output back if it was moved aside and never replaced. A leftover is a dead
// process's when its PID no longer runs and nobody holds its target's lock (a PID alone
// could be reused, or belong to another PID namespace sharing the directory).
void clean_up_after_dead_processes(const fs::path& parent, const std::string& own_target) {
  std::error_code ec;
  std::vector<std::pair<fs::path, Leftover>> found;
  for (const auto& entry : fs::directory_iterator(parent, ec))
    if (auto leftover = parse_leftover(entry.path().filename().string()))
      found.emplace_back(entry.path(), std::move(*leftover));
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [path, leftover] : found) {
    if (!process_is_gone(leftover.pid)) continue;
    if (leftover.target_name != own_target && !OutputLock::is_free(parent, leftover.target_name)) continue;
    const fs::path target = parent / leftover.target_name;
    if (leftover.moved_aside && !exists_at(target)) {
      fs::rename(path, target, ec);
      if (!ec) {
        std::fprintf(stderr, "amalgam: note: put %s back at %s (moved aside by process %d, which died)\n",
                     printable(path.string()).c_str(), printable(target.string()).c_str(), leftover.pid);
        continue;
      }
    }
    fs::remove_all(path, ec);
    if (!ec)
      std::fprintf(stderr, "amalgam: note: removed %s, left by process %d, which no longer runs\n",
                   printable(path.string()).c_str(), leftover.pid);
  }
}

}  // namespace

namespace {

// Directories no output may replace whatever it holds: `/`, the working directory, home
// directories, and every directory above one of them.
std::string protected_reason(const fs::path& target) {
  const fs::path t = canonical_or_absolute(target);
  if (t == t.root_path()) return "is the root directory";
  std::error_code ec;
  const fs::path cwd = canonical_or_absolute(fs::current_path(ec));
  if (!ec && is_within(cwd, t)) return t == cwd ? "is the working directory" : "holds the working directory";
  std::vector<fs::path> homes;
  if (const char* home = std::getenv("HOME"); home && *home) homes.push_back(canonical_or_absolute(home));
  ::setpwent();
  while (const passwd* pw = ::getpwent())
    if (pw->pw_dir && std::string_view(pw->pw_dir).size() > 1) homes.push_back(canonical_or_absolute(pw->pw_dir));
  ::endpwent();
  for (const auto& home : homes)
    if (is_within(home, t)) return t == home ? "is a home directory" : "holds the home directory " + home.string();
  return {};
}

// Every entry under `dir`, relative to it, with '/' after directories; the marker itself left out.
std::vector<std::string> entries_under(const fs::path& dir) {
  std::vector<std::string> names;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    std::string name = it->path().lexically_relative(dir).generic_string();
    if (name == kOutputMarker) continue;
    if (fs::is_directory(it->symlink_status())) name += '/';
    names.push_back(std::move(name));
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Why the directory `target` is not an output amalgam wrote, or empty when it is.
std::string foreign_directory_reason(const fs::path& target) {
  const fs::path marker = target / kOutputMarker;
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(marker, ec)))
    return "was not written by amalgam (it has no " + std::string(kOutputMarker) + ")";
  // Read directly: through MappedFile it would count as an input of the run.
  std::ifstream in(marker);
  const nlohmann::json written = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!written.is_object() || !written.contains("entries") || !written["entries"].is_array())
    return "has an unreadable " + std::string(kOutputMarker);
  std::set<std::string> ours;
  for (const auto& e : written["entries"])
    if (e.is_string()) ours.insert(e.get<std::string>());
  try {
    for (const auto& name : entries_under(target))
      if (!ours.contains(name)) return "holds '" + name + "', which amalgam did not write";
  } catch (const fs::filesystem_error& e) {
    return std::string("cannot be listed: ") + e.code().message();
  }
  return {};
}

}  // namespace

void sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some file systems refuse to open directories
  ::fsync(fd);
  ::close(fd);
}

namespace {

// Refuses (InputError, naming the target and why) what may not be replaced: see the header.
void check_replaceable(const fs::path& target, AtomicOutput::Kind kind, bool force,
                       const AtomicOutput::Recogniser& ours) {
  std::error_code ec;
  const auto status = fs::symlink_status(target, ec);
  if (!fs::exists(status)) return;
  if (const std::string why = protected_reason(target); !why.empty())
    throw InputError(target, why + "; amalgam never replaces it, even with --force");
  if (kind == AtomicOutput::Kind::Directory && fs::is_directory(status) && fs::is_empty(target, ec)) return;
  if (!force) throw InputError(target, "already exists; pass --force to replace it");
  if (const fs::path input = input_within(canonical_or_absolute(target)); !input.empty())
    throw InputError(target, "holds " + input.string() +
                                 ", an input of this run; --force never replaces an input, choose another output");
  std::string why;
  if (kind == AtomicOutput::Kind::Directory)
    why = fs::is_directory(status) ? foreign_directory_reason(target) : "is not a directory";
  else if (!fs::is_regular_file(status))
    why = fs::is_directory(status) ? "is a directory" : "is not a regular file";
  else if (!ours(target))
    why = "was not written by amalgam";
  if (!why.empty())
    throw InputError(target,
                     why + "; --force replaces only amalgam's own outputs: move it away or choose another output");
}

// The target as given, "out/" read as "out", refused when it cannot be an output at all.
fs::path checked_target(const fs::path& target, AtomicOutput::Kind kind) {
  if (target.empty()) throw InputError("output path is empty");
  // "out/" names the directory "out": drop the trailing separator so filename() is set.
  const fs::path t = target.has_filename() ? target : target.parent_path();
  if (const std::string why = protected_reason(t); !why.empty() && exists_at(t))
    throw InputError(t, why + "; amalgam never replaces it, even with --force");
  const std::string name = t.filename().string();
  if (name.empty() || name == "." || name == "..")
    throw InputError(t, "names a directory by '" + name + "'; give the output directory its own name");
  if (kind == AtomicOutput::Kind::Directory && t.extension() == ".safetensors")
    throw InputError(t,
                     "the output is a directory of shards and config files, not one .safetensors file; give "
                     "a directory, e.g. " +
                         (t.parent_path() / t.stem()).string());
  return t;
}

// The lock of `target`: the one a claim_output of this process holds, shared (flock would
// refuse a second descriptor of the same process), or a new one. Only claims are shared: two
// AtomicOutputs of one target in one process still exclude each other.
std::shared_ptr<OutputLock> lock_target(const fs::path& target, bool for_claim) {
  static std::mutex mutex;
  static std::map<fs::path, std::weak_ptr<OutputLock>> claimed;
  const fs::path key = canonical_or_absolute(target);
  std::lock_guard guard(mutex);
  if (auto lock = claimed[key].lock()) return lock;
  auto lock = std::make_shared<OutputLock>(target);
  if (for_claim) claimed[key] = lock;
  return lock;
}

// Creates the target's parent directories, locks the target, and removes what dead
// processes left beside it (first: that may put a previous output back).
std::shared_ptr<OutputLock> prepare(const fs::path& target, bool for_claim) {
  std::error_code ec;
  if (!target.parent_path().empty()) {
    fs::create_directories(target.parent_path(), ec);
    if (ec) throw InputError(target, "cannot create parent directory: " + ec.message());
  }
  auto lock = lock_target(target, for_claim);
  clean_up_after_dead_processes(parent_of(target), target.filename().string());
  return lock;
}

}  // namespace

AtomicOutput::AtomicOutput(const fs::path& target, bool force, Kind kind, Recogniser ours)
    : target_(checked_target(target, kind)),
      kind_(kind),
      force_(force),
      ours_(ours ? std::move(ours) : Recogniser(safetensors_written_by_amalgam)) {
  lock_ = prepare(target_, false);
  check_replaceable(target_, kind_, force_, ours_);
  staging_ = sibling(target_, "amalgam-tmp");
  std::error_code ec;
  if (kind_ == Kind::Directory && !fs::create_directory(staging_, ec))
    throw InputError(staging_, "cannot create staging directory: " + (ec ? ec.message() : "it exists"));
}

std::shared_ptr<OutputLock> claim_output(const fs::path& target, bool force, AtomicOutput::Kind kind,
                                         AtomicOutput::Recogniser ours) {
  const fs::path t = checked_target(target, kind);
  auto lock = prepare(t, true);
  check_replaceable(t, kind, force, ours ? ours : AtomicOutput::Recogniser(safetensors_written_by_amalgam));
  return lock;
}

AtomicOutput::~AtomicOutput() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void AtomicOutput::commit() {
  std::error_code ec;
  const fs::path parent = parent_of(target_);
  check_replaceable(target_, kind_, force_, ours_);
  if (kind_ == Kind::File) {
    fs::rename(staging_, target_, ec);  // replaces an existing file atomically
    if (ec) throw std::runtime_error(target_.string() + ": cannot move output into place: " + ec.message());
  } else {
    const nlohmann::json marker = {{"written_by", kWrittenBy}, {"entries", entries_under(staging_)}};
    write_text_file(staging_ / kOutputMarker, marker.dump(1) + "\n");
    sync_directory(staging_);
    fs::path old;
    const bool replacing = exists_at(target_);
    if (replacing && ::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
      // Swapped in one step, no instant without an output; the staging path now holds the
      // previous output.
      fs::remove_all(staging_, ec);
    } else {
      // The file system cannot exchange: rename twice.
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
  }
  committed_ = true;
  sync_directory(parent);
  lock_.reset();
}

}  // namespace amalgam
