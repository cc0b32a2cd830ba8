#include "core/error.h"

#include <cerrno>
#include <cstring>
#include <iostream>
#include <mutex>

namespace amalgam {

void throw_system_error(const std::filesystem::path& file, std::string_view what) {
  const int err = errno;
  throw std::runtime_error(file.string() + ": " + std::string(what) + ": " + std::strerror(err));
}

void warn(std::string_view message) {
  static std::mutex mutex;  // whole lines, even from threads
  const std::lock_guard lock(mutex);
  std::cerr << "amalgam: warning: " << message << "\n";
}

}  // namespace amalgam
