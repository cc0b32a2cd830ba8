// Outputs that appear whole or not at all.
//
// Everything is written into a staging path beside the target (same directory, so the
// final rename stays on one file system and is atomic), and renamed into place by
// commit(). If anything throws first, the destructor removes the staging path and the
// target, including a previous output there, is untouched.
#pragma once

#include <filesystem>

namespace amalgam {

class AtomicOutput {
 public:
  enum class Kind { Directory, File };

  // Refuses (InputError) an existing target, unless it is an empty directory or `force`.
  // Creates the target's parent directories and, for Kind::Directory, the staging
  // directory.
  AtomicOutput(const std::filesystem::path& target, bool force, Kind kind = Kind::Directory);
  ~AtomicOutput();
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;

  // Where to write: a directory, or the file's path for Kind::File.
  const std::filesystem::path& staging() const { return staging_; }
  const std::filesystem::path& target() const { return target_; }
  // Moves the staging path onto the target (replacing what was there).
  void commit();

 private:
  std::filesystem::path target_;
  std::filesystem::path staging_;
  Kind kind_;
  bool committed_ = false;
};

// fsyncs a directory so that renames inside it survive a crash.
void sync_directory(const std::filesystem::path& dir);

}  // namespace amalgam
