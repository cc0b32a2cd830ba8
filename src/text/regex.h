// A compiled regular expression over UTF-8 text, on PCRE2 with Unicode properties: the
// pre-tokenizers' patterns (GPT-2's, Llama 3's, Qwen's) use \p{L}, \p{N}, (?i:...) and
// lookahead, which PCRE2 reads as Hugging Face's tokenizers (Oniguruma) and JavaScript do.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace amalgam::text {

struct Match {
  size_t begin = 0;  // byte offsets into the searched text
  size_t end = 0;
};

class Regex {
 public:
  // Throws InputError naming `where` (for example "tokenizer.json: pre_tokenizer") when the
  // pattern does not compile.
  Regex(std::string_view pattern, std::string_view where);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // Every non-empty, non-overlapping match, left to right. After an empty match the search
  // moves on by one character, as JavaScript's matchAll does.
  std::vector<Match> find_all(std::string_view text) const;

 private:
  struct Compiled;
  std::unique_ptr<Compiled> compiled_;
  std::string where_;
};

}  // namespace amalgam::text
