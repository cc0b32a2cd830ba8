#include "text/normalizer.h"

#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/regex.h"
#include "text/unicode.h"

namespace amalgam::text {

namespace {

std::string replace_all(const std::string& text, const std::string& from, const std::string& to) {
  if (from.empty()) return text;
  std::string out;
  size_t start = 0;
  for (size_t at; (at = text.find(from, start)) != std::string::npos; start = at + from.size())
    out.append(text, start, at - start).append(to);
  return out.append(text, start);
}

}  // namespace

Normalizer make_normalizer(const nlohmann::json& config, const std::filesystem::path& file) {
  if (config.is_null()) return [](std::string s) { return s; };
  const std::string type = config.value("type", "");
  if (type == "NFC") return [](std::string s) { return normalize(s, NormalForm::NFC); };
  if (type == "NFD") return [](std::string s) { return normalize(s, NormalForm::NFD); };
  if (type == "NFKC") return [](std::string s) { return normalize(s, NormalForm::NFKC); };
  if (type == "NFKD") return [](std::string s) { return normalize(s, NormalForm::NFKD); };
  if (type == "Lowercase") return [](std::string s) { return lowercase(s); };
  if (type == "Prepend") {
    // Prepended to a non-empty text only (the tokenizers library's rule).
    const std::string prefix = config.value("prepend", "");
    return [prefix](std::string s) { return s.empty() ? s : prefix + s; };
  }
  if (type == "Strip") {
    const bool left = config.value("strip_left", true), right = config.value("strip_right", true);
    return [left, right](std::string s) { return std::string(strip_whitespace(s, left, right)); };
  }
  if (type == "Replace") {
    const std::string to = config.value("content", "");
    const auto& pattern = config.value("pattern", nlohmann::json::object());
    if (pattern.contains("String")) {
      const std::string from = pattern["String"].get<std::string>();
      return [from, to](std::string s) { return replace_all(s, from, to); };
    }
    if (pattern.contains("Regex")) {
      auto regex = std::make_shared<Regex>(pattern["Regex"].get<std::string>(), file.string() + ": normalizer");
      return [regex, to](std::string s) {
        std::string out;
        size_t start = 0;
        for (const auto& m : regex->find_all(s)) {
          out.append(s, start, m.begin - start).append(to);
          start = m.end;
        }
        return out.append(s, start);
      };
    }
    throw InputError(file, "normalizer Replace: 'pattern' needs 'String' or 'Regex'");
  }
  if (type == "Sequence") {
    std::vector<Normalizer> steps;
    for (const auto& step : config.value("normalizers", nlohmann::json::array()))
      steps.push_back(make_normalizer(step, file));
    return [steps](std::string s) {
      for (const auto& step : steps) s = step(std::move(s));
      return s;
    };
  }
  throw InputError(file, "normalizer type '" + type + "' is not supported");
}

}  // namespace amalgam::text
