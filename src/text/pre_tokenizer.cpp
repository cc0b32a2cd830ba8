#include "text/pre_tokenizer.h"

#include <array>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/regex.h"

namespace amalgam::text {

namespace {

// GPT-2's word pattern, which ByteLevel applies when use_regex is true.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Span {
  size_t begin, end;
  bool is_match;
};

// The text as alternating spans of matches and the gaps between them.
std::vector<Span> spans_of(const std::string& text, const std::vector<Match>& matches) {
  std::vector<Span> spans;
  size_t at = 0;
  for (const auto& m : matches) {
    if (m.begin > at) spans.push_back({at, m.begin, false});
    spans.push_back({m.begin, m.end, true});
    at = m.end;
  }
  if (at < text.size()) spans.push_back({at, text.size(), false});
  return spans;
}

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior behavior_of(const std::string& name, const std::filesystem::path& file) {
  if (name == "Removed") return Behavior::Removed;
  if (name == "Isolated") return Behavior::Isolated;
  if (name == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::MergedWithNext;
  if (name == "Contiguous") return Behavior::Contiguous;
  throw InputError(file, "pre_tokenizer Split: behavior '" + name +
                             "' is not one of Removed, Isolated, "
                             "MergedWithPrevious, MergedWithNext, Contiguous");
}

// Cuts the text at its delimiters as the tokenizers library does for each behaviour.
std::vector<std::string> split(const std::string& text, std::vector<Span> spans, Behavior behavior) {
  std::vector<Span> pieces;
  switch (behavior) {
    case Behavior::Removed:
      for (const auto& s : spans)
        if (!s.is_match) pieces.push_back(s);
      break;
    case Behavior::Isolated:
      pieces = std::move(spans);
      break;
    case Behavior::MergedWithPrevious: {
      bool previous_match = false;
      for (const auto& s : spans) {
        if (s.is_match && !previous_match && !pieces.empty())
          pieces.back().end = s.end;
        else
          pieces.push_back(s);
        previous_match = s.is_match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool next_match = false;
      for (auto s = spans.rbegin(); s != spans.rend(); ++s) {
        if (s->is_match && !next_match && !pieces.empty())
          pieces.back().begin = s->begin;
        else
          pieces.push_back(*s);
        next_match = s->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    }
    case Behavior::Contiguous:
      for (const auto& s : spans) {
        if (!pieces.empty() && pieces.back().is_match == s.is_match)
          pieces.back().end = s.end;
        else
          pieces.push_back(s);
      }
      break;
  }
  std::vector<std::string> words;
  for (const auto& p : pieces)
    if (p.end > p.begin) words.push_back(text.substr(p.begin, p.end - p.begin));
  return words;
}

std::vector<Match> literal_matches(const std::string& text, const std::string& needle) {
  std::vector<Match> matches;
  if (needle.empty()) return matches;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size()))
    matches.push_back({at, at + needle.size()});
  return matches;
}

std::vector<Span> inverted(std::vector<Span> spans) {
  for (auto& s : spans) s.is_match = !s.is_match;
  return spans;
}

}  // namespace

std::string byte_level_encode(std::string_view bytes) {
  static const std::array<std::string, 256> alphabet = [] {
    std::array<std::string, 256> table;
    uint32_t next_free = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? b : next_free++;
      // Every code point here is below U+0800: one or two UTF-8 bytes.
      table[b] = cp < 0x80 ? std::string(1, static_cast<char>(cp))
                           : std::string{static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
    }
    return table;
  }();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) out += alphabet[static_cast<unsigned char>(c)];
  return out;
}

PreTokenizer make_pre_tokenizer(const nlohmann::json& config, const std::filesystem::path& file) {
  if (config.is_null()) return [](std::string s, bool) { return std::vector<std::string>{std::move(s)}; };
  const std::string type = config.value("type", "");
  if (type == "Sequence") {
    std::vector<PreTokenizer> steps;
    for (const auto& step : config.value("pretokenizers", nlohmann::json::array()))
      steps.push_back(make_pre_tokenizer(step, file));
    return [steps](std::string s, bool first) {
      std::vector<std::string> words{std::move(s)};
      for (const auto& step : steps) {
        std::vector<std::string> next;
        for (auto& w : words)
          for (auto& piece : step(std::move(w), first)) next.push_back(std::move(piece));
        words = std::move(next);
      }
      return words;
    };
  }
  if (type == "Split") {
    const auto behavior = behavior_of(config.value("behavior", "Isolated"), file);
    const bool invert = config.value("invert", false);
    const auto& pattern = config.value("pattern", nlohmann::json::object());
    if (pattern.contains("Regex")) {
      auto regex = std::make_shared<Regex>(pattern["Regex"].get<std::string>(), file.string() + ": pre_tokenizer");
      return [regex, behavior, invert](std::string s, bool) {
        auto spans = spans_of(s, regex->find_all(s));
        return split(s, invert ? inverted(std::move(spans)) : std::move(spans), behavior);
      };
    }
    if (pattern.contains("String")) {
      const std::string needle = pattern["String"].get<std::string>();
      return [needle, behavior, invert](std::string s, bool) {
        auto spans = spans_of(s, literal_matches(s, needle));
        return split(s, invert ? inverted(std::move(spans)) : std::move(spans), behavior);
      };
    }
    throw InputError(file, "pre_tokenizer Split: 'pattern' needs 'String' or 'Regex'");
  }
  if (type == "ByteLevel") {
    const bool add_prefix_space = config.value("add_prefix_space", true);
    std::shared_ptr<Regex> words;
    if (config.value("use_regex", true)) words = std::make_shared<Regex>(kGpt2Pattern, "ByteLevel");
    return [add_prefix_space, words](std::string s, bool) {
      if (add_prefix_space && !s.starts_with(' ')) s.insert(0, " ");
      std::vector<std::string> out;
      if (words) {
        // GPT-2's pattern matches every character, so the matches are the words.
        for (const auto& m : words->find_all(s)) out.push_back(byte_level_encode(s.substr(m.begin, m.end - m.begin)));
      } else {
        out.push_back(byte_level_encode(s));
      }
      return out;
    };
  }
  if (type == "Metaspace") {
    const std::string replacement = config.value("replacement", "\u2581");
    // prepend_scheme (tokenizers >= 0.14) or the older add_prefix_space.
    std::string scheme = config.value("prepend_scheme", "");
    if (scheme.empty()) scheme = config.value("add_prefix_space", true) ? "always" : "never";
    if (scheme != "always" && scheme != "first" && scheme != "never")
      throw InputError(file, "pre_tokenizer Metaspace: prepend_scheme '" + scheme + "' is not always, first or never");
    const bool split_words = config.value("split", true);
    return [replacement, scheme, split_words](std::string s, bool first) {
      std::string replaced;
      for (const char c : s) c == ' ' ? replaced += replacement : replaced += c;
      if ((scheme == "always" || (scheme == "first" && first)) && !replaced.starts_with(replacement))
        replaced.insert(0, replacement);
      if (!split_words) return std::vector<std::string>{replaced};
      return split(replaced, spans_of(replaced, literal_matches(replaced, replacement)), Behavior::MergedWithNext);
    };
  }
  if (type == "Digits") {
    const bool individual = config.value("individual_digits", false);
    auto digits = std::make_shared<Regex>(R"(\p{N})", "Digits");
    return [digits, individual](std::string s, bool) {
      return split(s, spans_of(s, digits->find_all(s)), individual ? Behavior::Isolated : Behavior::Contiguous);
    };
  }
  throw InputError(file, "pre_tokenizer type '" + type + "' is not supported");
}

}  // namespace amalgam::text
