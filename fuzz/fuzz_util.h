// Shared by the libFuzzer targets (one per file format amalgam reads from strangers).
//
// A target feeds one input to a reader exactly as the command line would (through a file on
// disk, since the readers map files), and accepts only InputError: that is amalgam's
// documented answer to bad input (exit code 2). Anything else escapes LLVMFuzzerTestOneInput
// and libFuzzer reports it as a crash: a sanitizer report, a std::bad_alloc from a size taken
// on trust, a nlohmann or yaml-cpp exception that was not turned into an InputError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/error.h"
#include "test_util.h"

namespace amalgam::fuzz {

namespace fs = std::filesystem;

// A private directory under $TMPDIR for this process's files, made on first use and removed
// at exit (scripts/fuzz.sh also points TMPDIR at a folder it deletes, for runs that crash).
inline const fs::path& work_dir() {
  static const testing::TempDir dir;
  return dir.path();
}

using testing::write_bytes;

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs `body`; an InputError is the expected answer to most inputs, anything else escapes.
template <class Body>
void accept_input_errors(Body&& body) {
  try {
    body();
  } catch (const InputError&) {
  }
}

}  // namespace amalgam::fuzz
