// A Hugging Face tokenizer, read from a model directory's tokenizer.json and (if present)
// tokenizer_config.json: the text is split at added tokens, each other section normalized,
// pre-tokenized into words and encoded by BPE, then the special tokens are added.
//
// Matches the tokenizers library (and transformers.js) id for id on the real Llama 2,
// Llama 3 and Qwen 3 tokenizers over a 2,400-string corpus (tests/test_tokenizer.cpp).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "text/bpe.h"
#include "text/normalizer.h"
#include "text/pre_tokenizer.h"

namespace amalgam::text {

class Tokenizer {
 public:
  // Reads DIR/tokenizer.json (required) and DIR/tokenizer_config.json (optional).
  static Tokenizer load(const std::filesystem::path& dir);

  // The ids of `text` (valid UTF-8, else InputError). `add_special_tokens`: the BOS/EOS (or
  // other template tokens) the tokenizer adds around a sequence.
  std::vector<TokenId> encode(std::string_view text, bool add_special_tokens = true) const;

  // The token strings of ids, as the vocabulary spells them ("Ġhello", "▁the", "<0x0A>").
  std::vector<std::string> tokens(const std::vector<TokenId>& ids) const;

  // How many ids encode() adds after a text (an EOS), with add_special_tokens.
  size_t special_suffix_length() const { return suffix_.size(); }

  std::optional<TokenId> bos() const { return bos_; }
  std::optional<TokenId> eos() const { return eos_; }

 private:
  struct AddedToken {
    std::string content;
    TokenId id;
    bool lstrip, rstrip;
  };
  // A section of the input: an added token's id, or text to normalize and encode.
  struct Section {
    std::string text;
    std::optional<TokenId> added;
  };
  explicit Tokenizer(BpeModel model) : model_(std::move(model)) {}
  static Tokenizer load_checked(const std::filesystem::path& dir);
  std::vector<Section> split_at_added_tokens(std::string_view text) const;

  BpeModel model_;
  Normalizer normalize_;
  PreTokenizer pre_tokenize_;
  std::vector<AddedToken> added_;  // longest first, so the longest match wins
  // The template around a single sequence: ids before and after it.
  std::vector<TokenId> prefix_, suffix_;
  std::optional<TokenId> bos_, eos_;
};

}  // namespace amalgam::text
