// The files this run reads, so that no output can replace the directory that holds them.
//
// Every file amalgam opens for reading goes through MappedFile, which notes it here; readers
// of other kinds (gzip, image folders) note theirs themselves. AtomicOutput asks before it
// replaces anything: `--force -o models/` where models/ holds the inputs is refused instead
// of deleting them.
#pragma once

#include <filesystem>
#include <vector>

namespace amalgam {

// Records `path` (made absolute and canonical) as read by this process. Thread-safe.
void note_input(const std::filesystem::path& path);

// Every path noted so far, canonical, sorted.
std::vector<std::filesystem::path> run_inputs();

// The first noted input at or under `dir` (both canonical), or an empty path.
std::filesystem::path input_within(const std::filesystem::path& dir);

// What the output checks share with this file: `p` absolute and canonical (weakly: the tail
// that does not exist yet kept as written), and whether `inner` is `outer` or lies under it,
// by whole components ("/a/bc" is not under "/a/b").
std::filesystem::path canonical_or_absolute(const std::filesystem::path& p);
bool is_within(const std::filesystem::path& inner, const std::filesystem::path& outer);

// Forgets every noted path: for a process that runs several commands one after another
// (the tests), each then protects only its own inputs.
void forget_run_inputs();

}  // namespace amalgam
