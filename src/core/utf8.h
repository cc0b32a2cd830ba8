// UTF-8, strictly: what amalgam accepts as text in configs (overlong forms, surrogates and
// code points past U+10FFFF are not UTF-8).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace amalgam {

// The code point starting at text[i] into `code_point`; returns its length in bytes (1 to 4),
// or 0 when the bytes there are not UTF-8.
size_t decode_utf8(std::string_view text, size_t i, uint32_t& code_point);

// The offset of the first byte that does not start a UTF-8 character, or npos.
size_t first_invalid_utf8(std::string_view text);

}  // namespace amalgam
