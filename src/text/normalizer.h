// tokenizer.json's "normalizer": what happens to a text before it is split into words.
// Supported: NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace (a string or a regex), Strip,
// and Sequence of them; anything else is an input error naming the type.
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace amalgam::text {

using Normalizer = std::function<std::string(std::string)>;

// The normalizer a tokenizer.json object describes; null means the identity.
Normalizer make_normalizer(const nlohmann::json& config, const std::filesystem::path& file);

}  // namespace amalgam::text
