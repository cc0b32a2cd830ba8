#include "core/error.h"

#include <cerrno>
#include <cstring>
#include <iostream>
#include <mutex>
#include <system_error>

namespace amalgam {

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c != 0x7f) {
      out += ch;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

void throw_system_error(const std::filesystem::path& file, std::string_view what) {
  const int err = errno;
  throw std::system_error(err, std::generic_category(), printable(file.string() + ": " + std::string(what)));
}

void warn(std::string_view message) {
  static std::mutex mutex;  // whole lines, even from threads
  const std::lock_guard lock(mutex);
  std::cerr << "amalgam: warning: " << message << "\n";
}

}  // namespace amalgam
