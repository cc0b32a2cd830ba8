// Unicode text operations the tokenizers need, on utf8proc: normalization forms and case
// mapping by the Unicode tables, never hand-written ones.
#pragma once

#include <string>
#include <string_view>

namespace amalgam::text {

enum class NormalForm { NFC, NFD, NFKC, NFKD };

// `text` (valid UTF-8) in the normal form.
std::string normalize(std::string_view text, NormalForm form);

// `text` (valid UTF-8) with every code point mapped to its simple lowercase.
std::string lowercase(std::string_view text);

// `text` with each code point in ASCII/Unicode White_Space removed from the left, the
// right, or both ends.
std::string_view strip_whitespace(std::string_view text, bool left, bool right);

}  // namespace amalgam::text
