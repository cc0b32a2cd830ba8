#include "text/unicode.h"

#include <utf8proc.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>

#include "core/utf8.h"

namespace amalgam::text {

std::string normalize(std::string_view text, NormalForm form) {
  if (text.empty()) return {};
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::NFC:
      options |= UTF8PROC_COMPOSE;
      break;
    case NormalForm::NFD:
      options |= UTF8PROC_DECOMPOSE;
      break;
    case NormalForm::NFKC:
      options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
      break;
    case NormalForm::NFKD:
      options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
      break;
  }
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), static_cast<utf8proc_ssize_t>(text.size()),
                   &out, static_cast<utf8proc_option_t>(options));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(out, &std::free);
  if (n < 0) throw std::runtime_error(std::string("Unicode normalization failed: ") + utf8proc_errmsg(n));
  return std::string(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
}

std::string lowercase(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  uint32_t cp = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t len = decode_utf8(text, i, cp);
    if (len == 0) throw std::runtime_error("lowercase: text is not UTF-8");
    utf8proc_uint8_t buffer[4];
    const auto n = utf8proc_encode_char(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp)), buffer);
    out.append(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
    i += len;
  }
  return out;
}

namespace {

bool is_white_space(uint32_t cp) {
  // Unicode's White_Space property: the tabs and line breaks, and the space separators.
  if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x85) return true;
  const auto category = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return category == UTF8PROC_CATEGORY_ZS || category == UTF8PROC_CATEGORY_ZL || category == UTF8PROC_CATEGORY_ZP;
}

}  // namespace

std::string_view strip_whitespace(std::string_view text, bool left, bool right) {
  uint32_t cp = 0;
  if (left) {
    size_t i = 0;
    while (i < text.size()) {
      const size_t len = decode_utf8(text, i, cp);
      if (len == 0 || !is_white_space(cp)) break;
      i += len;
    }
    text.remove_prefix(i);
  }
  if (right) {
    size_t end = text.size();
    while (end > 0) {
      size_t start = end - 1;
      while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
      const size_t len = decode_utf8(text, start, cp);
      if (len == 0 || !is_white_space(cp)) break;
      end = start;
    }
    text = text.substr(0, end);
  }
  return text;
}

}  // namespace amalgam::text
