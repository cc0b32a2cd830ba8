#include "io/json_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "io/mapped_file.h"

namespace amalgam {

std::string read_text_file(const std::filesystem::path& path, size_t max_bytes) {
  MappedFile file(path);
  if (file.size() > max_bytes)
    throw InputError(path, "file is " + std::to_string(file.size()) + " bytes, more than the " +
                               std::to_string(max_bytes) + " allowed");
  return {reinterpret_cast<const char*>(file.bytes().data()), file.size()};
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  const std::string text = read_text_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path, std::string("not valid JSON: ") + e.what());
  }
}

void write_text_file(const std::filesystem::path& path, std::string_view text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw_system_error(path, "cannot create");
  const char* p = text.data();
  size_t left = text.size();
  while (left > 0) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      errno = err;
      throw_system_error(path, "write failed");
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  const bool synced = ::fsync(fd) == 0;
  if (::close(fd) != 0 || !synced) throw_system_error(path, "cannot flush to disk");
}

}  // namespace amalgam
