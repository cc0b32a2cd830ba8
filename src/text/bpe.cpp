#include "text/bpe.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <queue>

#include "core/error.h"
#include "core/utf8.h"

namespace amalgam::text {

BpeModel::BpeModel(const nlohmann::json& model, const std::filesystem::path& file) : file_(file) {
  if (model.value("type", "BPE") != "BPE")
    throw InputError(file, "model type '" + model.value("type", "") + "' is not supported (only BPE)");
  if (!model.contains("vocab") || !model["vocab"].is_object() || !model.contains("merges"))
    throw InputError(file, "model: a BPE model needs 'vocab' (an object) and 'merges'");
  if (!model.value("dropout", nlohmann::json()).is_null() && model["dropout"].get<double>() != 0.0)
    throw InputError(file, "model.dropout: BPE dropout is random; amalgam tokenizes deterministically");
  for (const auto& [token, id] : model["vocab"].items()) {
    const auto value = id.get<TokenId>();
    if (value < 0 || value > kMaxTokenId)
      throw InputError(file, "model.vocab: token '" + token + "' has id " + std::to_string(value) + ", out of range");
    ids_.emplace(token, value);
    if (static_cast<size_t>(value) >= tokens_.size()) tokens_.resize(static_cast<size_t>(value) + 1);
    tokens_[static_cast<size_t>(value)] = token;
  }
  auto text = [&](const char* key) {
    return model.contains(key) && model[key].is_string() ? model[key].get<std::string>() : std::string();
  };
  continuing_subword_prefix_ = text("continuing_subword_prefix");
  end_of_word_suffix_ = text("end_of_word_suffix");
  if (const auto unk = text("unk_token"); !unk.empty()) unknown_ = find(unk);
  auto flag = [&](const char* key) { return model.contains(key) && model[key].is_boolean() && model[key].get<bool>(); };
  byte_fallback_ = flag("byte_fallback");
  fuse_unknown_ = flag("fuse_unk");
  ignore_merges_ = flag("ignore_merges");

  // Merges are "left right" strings (tokenizers < 0.20) or [left, right] pairs; the merged
  // token drops the right part's continuing-subword prefix.
  int32_t rank = 0;
  for (const auto& entry : model["merges"]) {
    std::string left, right;
    if (entry.is_string()) {
      const auto line = entry.get<std::string>();
      const auto space = line.find(' ');
      if (space == std::string::npos) throw InputError(file, "model.merges: '" + line + "' is not 'left right'");
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      throw InputError(file, "model.merges: entry " + std::to_string(rank) + " is neither a string nor a pair");
    }
    const auto left_id = find(left), right_id = find(right);
    std::string merged = left + right.substr(std::min(continuing_subword_prefix_.size(), right.size()));
    if (right.rfind(continuing_subword_prefix_, 0) != 0) merged = left + right;
    const auto merged_id = find(merged);
    if (!left_id || !right_id || !merged_id)
      throw InputError(file, "model.merges: '" + left + " " + right + "' names a token the vocabulary lacks");
    merges_.try_emplace(pair_key(*left_id, *right_id), Merge{rank, *merged_id});
    ++rank;
  }
}

std::optional<TokenId> BpeModel::find(std::string_view token) const {
  const auto it = ids_.find(std::string(token));
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::add_token(const std::string& token, TokenId id) {
  ids_.insert_or_assign(token, id);
  if (static_cast<size_t>(id) >= tokens_.size()) tokens_.resize(static_cast<size_t>(id) + 1);
  tokens_[static_cast<size_t>(id)] = token;
}

const std::string& BpeModel::token(TokenId id) const {
  static const std::string none;
  return id >= 0 && static_cast<size_t>(id) < tokens_.size() ? tokens_[static_cast<size_t>(id)] : none;
}

std::vector<TokenId> BpeModel::initial_symbols(std::string_view word) const {
  std::vector<TokenId> symbols;
  symbols.reserve(word.size());
  uint32_t cp = 0;
  for (size_t i = 0; i < word.size();) {
    const size_t len = decode_utf8(word, i, cp);
    if (len == 0) throw std::logic_error("BPE input is not UTF-8");
    std::string piece(word.substr(i, len));
    if (i > 0) piece.insert(0, continuing_subword_prefix_);
    if (i + len == word.size()) piece += end_of_word_suffix_;
    if (const auto id = find(piece)) {
      symbols.push_back(*id);
    } else if (byte_fallback_ && [&] {
                 for (size_t b = 0; b < len; ++b) {
                   char name[8];
                   std::snprintf(name, sizeof name, "<0x%02X>", static_cast<unsigned char>(word[i + b]));
                   if (!find(name)) return false;
                 }
                 return true;
               }()) {
      for (size_t b = 0; b < len; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", static_cast<unsigned char>(word[i + b]));
        symbols.push_back(*find(name));
      }
    } else if (unknown_) {
      // Consecutive unknown characters become one unknown token where the model fuses them.
      if (!(fuse_unknown_ && !symbols.empty() && symbols.back() == *unknown_)) symbols.push_back(*unknown_);
    } else {
      throw InputError(file_, "the vocabulary has no token for '" + std::string(word.substr(i, len)) +
                                  "' and the model no unk_token");
    }
    i += len;
  }
  return symbols;
}

// The merge loop: a heap of candidate pairs by (rank, position); a popped pair whose symbols
// changed since it was pushed is stale and skipped. O(n log n) in the word's length, which
// matters for SentencePiece-style tokenizers (Llama 2), where a whole text is one word.
void BpeModel::merge(std::vector<TokenId>& symbols) const {
  const auto n = static_cast<int32_t>(symbols.size());
  if (n < 2) return;
  std::vector<int32_t> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  std::vector<bool> alive(static_cast<size_t>(n), true);
  for (int32_t i = 0; i < n; ++i) {
    prev[static_cast<size_t>(i)] = i - 1;
    next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank, position;
    TokenId merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : position > o.position; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int32_t left) {
    const int32_t right = next[static_cast<size_t>(left)];
    if (right < 0) return;
    const auto it = merges_.find(pair_key(symbols[static_cast<size_t>(left)], symbols[static_cast<size_t>(right)]));
    if (it != merges_.end()) heap.push({it->second.rank, left, it->second.merged});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    const auto left = static_cast<size_t>(top.position);
    if (!alive[left] || next[left] < 0) continue;
    const auto right = static_cast<size_t>(next[left]);
    const auto it = merges_.find(pair_key(symbols[left], symbols[right]));
    if (it == merges_.end() || it->second.merged != top.merged) continue;  // stale
    symbols[left] = top.merged;
    alive[right] = false;
    next[left] = next[right];
    if (next[left] >= 0) prev[static_cast<size_t>(next[left])] = top.position;
    if (prev[left] >= 0) push(prev[left]);
    push(top.position);
  }
  size_t kept = 0;
  for (int32_t i = 0; i >= 0; i = next[static_cast<size_t>(i)]) symbols[kept++] = symbols[static_cast<size_t>(i)];
  symbols.resize(kept);
}

void BpeModel::encode_word(std::string_view word, std::vector<TokenId>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto id = find(word)) {
      out.push_back(*id);
      return;
    }
  }
  auto symbols = initial_symbols(word);
  merge(symbols);
  out.insert(out.end(), symbols.begin(), symbols.end());
}

}  // namespace amalgam::text
