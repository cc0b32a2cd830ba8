// Text data sets: JSONL files, one record per line, either {"text": ...} or {"prompt": ...,
// "completion": ...} (a language model's loss then counts the completion's tokens only).
// Other keys are ignored; blank lines are skipped.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace amalgam::text {

struct TextRecord {
  std::string prompt;  // empty for a {"text"} record
  std::string text;    // the text, or the completion
  size_t line = 0;     // 1-based, for messages
};

// Every record of the file; InputError naming the file and line for a line that is not a
// JSON object with a string "text" or string "prompt" and "completion", or not UTF-8.
std::vector<TextRecord> read_text_records(const std::filesystem::path& file);

}  // namespace amalgam::text
