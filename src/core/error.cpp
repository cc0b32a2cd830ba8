#include "core/error.h"

#include <cerrno>
#include <cstring>

namespace amalgam {

void throw_system_error(const std::filesystem::path& file, std::string_view what) {
  const int err = errno;
  throw std::runtime_error(file.string() + ": " + std::string(what) + ": " + std::strerror(err));
}

}  // namespace amalgam
