// tokenizer.json's "pre_tokenizer": how a normalized text is cut into the words BPE sees.
// Supported: Split (a string or regex, every delimiter behaviour, invert), ByteLevel (GPT-2's
// regex and its byte-to-character alphabet), Metaspace (SentencePiece's "▁"), Digits, and
// Sequence of them; anything else is an input error naming the type.
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace amalgam::text {

// `first` says whether the text is the first section of the input (before any added token):
// Metaspace's prepend_scheme "first" prepends only there.
using PreTokenizer = std::function<std::vector<std::string>(std::string text, bool first)>;

// The pre-tokenizer a tokenizer.json object describes; null keeps the text one word.
PreTokenizer make_pre_tokenizer(const nlohmann::json& config, const std::filesystem::path& file);

// GPT-2's byte-level alphabet: each byte as one printable character (UTF-8), so that BPE
// never sees spaces or control bytes ("Ġ" is the space byte).
std::string byte_level_encode(std::string_view bytes);

}  // namespace amalgam::text
