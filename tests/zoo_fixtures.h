// Zoos for the tests that build one: the small preset, and a tiny one (a few seconds) for
// tests that only need every artifact to exist.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "zoo/build.h"

namespace amalgam::testing {

// Training a zoo under the sanitizers takes minutes; those tests run in Release builds only.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// `amalgam zoo build --small`, reading the data the set-up script cached.
inline ZooBuildOptions small_zoo_options() {
  ZooBuildOptions o = ZooBuildOptions::preset(true);
  o.data.data_dir = std::filesystem::path(AMALGAM_SOURCE_DIR) / ".cache/zoo-data";
  if (const char* env = std::getenv("AMALGAM_DATA_DIR")) o.data.data_dir = env;
  o.quiet = true;
  return o;
}

// The small zoo with 120/60/60 images per task and one epoch of each training stage.
inline ZooBuildOptions tiny_zoo_options() {
  ZooBuildOptions o = small_zoo_options();
  o.data.sizes = {120, 60, 60};
  o.pool.per_task = 60;
  o.pool.extra = 120;
  o.pretrain.epochs = 1;
  o.finetune.epochs = 1;
  o.probe.epochs = 5;
  o.finetune_examples = 120;
  return o;
}

// The small zoo, built once per build tree and shared by the tests that read it (about two
// minutes of training saved per test). A file lock serializes ctest processes asking at
// once; build_zoo's cache makes every later call free, and rebuilds when the options change.
inline std::filesystem::path shared_small_zoo() {
  const std::filesystem::path dir = std::filesystem::path(AMALGAM_BIN).parent_path() / "test-small-zoo";
  const int fd = ::open((dir.string() + ".lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (fd < 0 || ::flock(fd, LOCK_EX) != 0) throw std::runtime_error(dir.string() + ".lock: cannot lock");
  try {
    build_zoo(dir, small_zoo_options(), true);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);  // releases the lock
  return dir;
}

}  // namespace amalgam::testing
