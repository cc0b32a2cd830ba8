// Outputs that appear whole or not at all, and never at the cost of someone else's files.
//
// Everything is written into a staging path beside the target (same directory, so the
// final rename stays on one file system and is atomic), and renamed into place by
// commit(). If anything throws first, the destructor removes the staging path and the
// target, including a previous output there, is untouched.
//
// What may be replaced, even with --force, is only an output amalgam wrote itself: a
// directory holding amalgam's marker file (kOutputMarker, which lists every entry amalgam
// put there, so a file the user added later also protects it), or a file the caller's
// recogniser accepts (for safetensors: `written_by` in the metadata). Never a directory that
// holds an input of this run (run_inputs.h), the working directory, `/` or a home directory,
// nor anything above them.
//
// For the whole life of the object the target is locked (flock on a hidden lock file beside
// it): a second amalgam writing the same target fails at once, naming the process that
// holds it. The first thing each output does is remove what dead processes left beside it
// (staging directories, a previous output moved aside mid-commit), with a note.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>

namespace amalgam {

class OutputLock;

// The marker file in every directory amalgam writes.
inline constexpr const char* kOutputMarker = ".amalgam-output";

class AtomicOutput {
 public:
  enum class Kind { Directory, File };
  // Tells whether an existing file is an output of amalgam's (Kind::File only).
  using Recogniser = std::function<bool(const std::filesystem::path&)>;

  // Refuses (InputError, naming the target and why) an existing target, unless it is an
  // empty directory, or `force` and the target is amalgam's own output (above). A Directory
  // target named *.safetensors is refused as a likely mistake. Creates the target's parent
  // directories and, for Kind::Directory, the staging directory. `ours` defaults to
  // safetensors_written_by_amalgam.
  AtomicOutput(const std::filesystem::path& target, bool force, Kind kind = Kind::Directory, Recogniser ours = {});
  ~AtomicOutput();
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;

  // Where to write: a directory, or the file's path for Kind::File.
  const std::filesystem::path& staging() const { return staging_; }
  const std::filesystem::path& target() const { return target_; }
  // Writes the marker (directories), checks once more that what is there may be replaced
  // (inputs are noted as they are opened, some after the constructor), then moves the
  // staging path onto the target, and releases the lock.
  void commit();

 private:
  std::filesystem::path target_;
  std::filesystem::path staging_;
  Kind kind_;
  bool force_;
  Recogniser ours_;
  std::shared_ptr<OutputLock> lock_;
  bool committed_ = false;
};

// For commands that make their output at their end (statistics, training): checks at the
// start that `target` may be written, as AtomicOutput would, and holds its lock while the
// returned handle lives, so that hours of work neither end in "already exists" nor race a
// second writer. The AtomicOutput this process makes for the target later shares the lock.
std::shared_ptr<OutputLock> claim_output(const std::filesystem::path& target, bool force,
                                         AtomicOutput::Kind kind = AtomicOutput::Kind::Directory,
                                         AtomicOutput::Recogniser ours = {});

// fsyncs a directory so that renames inside it survive a crash.
void sync_directory(const std::filesystem::path& dir);

}  // namespace amalgam
