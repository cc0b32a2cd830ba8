// Small whole-file helpers for JSON and text files (configs, indexes, reports).
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace amalgam {

// Reads and parses a JSON file (at most 100 MB); InputError naming the file otherwise.
nlohmann::json read_json_file(const std::filesystem::path& path);
std::string read_text_file(const std::filesystem::path& path, size_t max_bytes = 100'000'000);
// Writes `text` to `path` and flushes it to disk; throws on any failure (a full disk).
void write_text_file(const std::filesystem::path& path, std::string_view text);

}  // namespace amalgam
