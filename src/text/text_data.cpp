#include "text/text_data.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace amalgam::text {

std::vector<TextRecord> read_text_records(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(file, "cannot be opened for reading");
  std::vector<TextRecord> records;
  std::string line;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto where = "line " + std::to_string(number);
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw InputError(file, where + ": not JSON (" + e.what() + ")");
    }
    auto string_field = [&](const char* key) -> std::string {
      if (!record[key].is_string()) throw InputError(file, where + ": '" + key + "' is not a string");
      return record[key].get<std::string>();
    };
    if (!record.is_object()) throw InputError(file, where + ": not a JSON object");
    if (record.contains("text")) {
      records.push_back({"", string_field("text"), number});
    } else if (record.contains("prompt") && record.contains("completion")) {
      records.push_back({string_field("prompt"), string_field("completion"), number});
    } else {
      throw InputError(file, where + ": a record needs \"text\", or \"prompt\" and \"completion\"");
    }
  }
  if (in.bad()) throw_system_error(file, "read");
  return records;
}

}  // namespace amalgam::text
