// Byte-pair encoding, the model of every tokenizer amalgam reads (GPT-2, Llama 2 and 3,
// Mistral, Qwen): a word is split into characters, then the pair of neighbours with the
// lowest merge rank is merged, leftmost first, until no pair has a rank. This is Hugging Face
// tokenizers' BPE model ("model": {"type": "BPE"} in tokenizer.json) without dropout.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace amalgam::text {

using TokenId = int32_t;
// Larger ids are refused as input errors: the largest vocabularies have about 260,000 tokens,
// and an id sizes the id-to-token table.
constexpr TokenId kMaxTokenId = (1 << 24) - 1;

class BpeModel {
 public:
  // From tokenizer.json's "model" object; `file` names it in errors.
  BpeModel(const nlohmann::json& model, const std::filesystem::path& file);

  // Appends the ids of one pre-tokenized word (valid UTF-8) to `out`.
  void encode_word(std::string_view word, std::vector<TokenId>& out) const;

  std::optional<TokenId> find(std::string_view token) const;
  // Registers an added token that the vocabulary may lack.
  void add_token(const std::string& token, TokenId id);
  // The token's string; empty for an id no token has.
  const std::string& token(TokenId id) const;

 private:
  struct Merge {
    int32_t rank;
    TokenId merged;
  };
  static uint64_t pair_key(TokenId left, TokenId right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  // The word's characters as ids: unknown ones as their UTF-8 bytes (<0xNN>) under byte
  // fallback, else as the unknown token.
  std::vector<TokenId> initial_symbols(std::string_view word) const;
  void merge(std::vector<TokenId>& symbols) const;

  std::unordered_map<std::string, TokenId> ids_;
  std::vector<std::string> tokens_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<TokenId> unknown_;
  std::string continuing_subword_prefix_, end_of_word_suffix_;
  bool byte_fallback_ = false, fuse_unknown_ = false, ignore_merges_ = false;
  std::filesystem::path file_;
};

}  // namespace amalgam::text
