// Tokenizers: hand-worked examples of each piece (BPE merge order, byte fallback, the
// byte-level alphabet, every split behaviour, added tokens, templates), errors, the CLI, and
// the real Llama 2, Llama 3 and Qwen 3 tokenizers against an independent implementation
// (transformers.js, run with node) over a 2,400-string corpus.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"
#include "text/pre_tokenizer.h"
#include "text/tokenizer.h"

namespace amalgam::testing {
namespace {

using text::TokenId;
using text::Tokenizer;
using Json = nlohmann::json;

// A tokenizer directory from a tokenizer.json object (and optionally a tokenizer_config.json).
fs::path write_tokenizer(const TempDir& dir, const Json& tokenizer, const Json& config = nullptr) {
  write_bytes(dir / "tokenizer.json", tokenizer.dump());
  if (!config.is_null()) write_bytes(dir / "tokenizer_config.json", config.dump());
  return dir.path();
}

// A BPE over the letters a, b, c and the given merges; ids: a 0, b 1, c 2, then the merged
// tokens in the order given.
Json bpe_over_abc(const std::vector<std::string>& merged_tokens, const std::vector<std::string>& merges) {
  Json vocab = {{"a", 0}, {"b", 1}, {"c", 2}};
  for (size_t i = 0; i < merged_tokens.size(); ++i) vocab[merged_tokens[i]] = 3 + static_cast<int>(i);
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
}

std::vector<std::string> pre_tokenize(const Json& config, const std::string& s, bool first = true) {
  return text::make_pre_tokenizer(config, "tokenizer.json")(s, first);
}

TEST(Tokenizer, ByteLevelAlphabetIsGpt2s) {
  // GPT-2's printable bytes stand for themselves; the others take U+0100 upwards in byte
  // order: space (the 33rd) is U+0120 'Ġ', newline U+010A 'Ċ', the soft hyphen 0xAD U+0143.
  EXPECT_EQ(text::byte_level_encode("a!~"), "a!~");
  EXPECT_EQ(text::byte_level_encode(" "), "\u0120");
  EXPECT_EQ(text::byte_level_encode("\n"), "\u010A");
  EXPECT_EQ(text::byte_level_encode("\xAD"), "\u0143");
  EXPECT_EQ(text::byte_level_encode("\xFF"), "\u00FF");
  EXPECT_EQ(text::byte_level_encode("\xC3\xA9"), "\u00C3\u00A9");  // é's two bytes
}

TEST(Tokenizer, BpeMergesTheLowestRankFirst) {
  TempDir dir;
  // "abc": (b, c) has rank 0, so it merges first, and (a, bc) is no merge: a, bc.
  auto t = Tokenizer::load(write_tokenizer(dir, bpe_over_abc({"bc", "ab"}, {"b c", "a b"})));
  EXPECT_EQ(t.encode("abc"), (std::vector<TokenId>{0, 3}));
  // With (a, b) first, then (ab, c): one token.
  TempDir dir2;
  t = Tokenizer::load(write_tokenizer(dir2, bpe_over_abc({"ab", "bc", "abc"}, {"a b", "b c", "ab c"})));
  EXPECT_EQ(t.encode("abc"), (std::vector<TokenId>{5}));
  EXPECT_EQ(t.tokens(t.encode("abcab")), (std::vector<std::string>{"abc", "ab"}));
}

TEST(Tokenizer, BpeBreaksTiesLeftmostFirst) {
  TempDir dir;
  // "aaa" with the one merge (a, a): the left pair merges, leaving aa, a (not a, aa).
  auto t = Tokenizer::load(write_tokenizer(dir, bpe_over_abc({"aa"}, {"a a"})));
  EXPECT_EQ(t.tokens(t.encode("aaa")), (std::vector<std::string>{"aa", "a"}));
  EXPECT_EQ(t.tokens(t.encode("aaaaa")), (std::vector<std::string>{"aa", "aa", "a"}));
  // Merges written as pairs (tokenizers >= 0.20) read the same.
  TempDir dir2;
  Json pairs = bpe_over_abc({"aa"}, {});
  pairs["model"]["merges"] = Json::array({Json::array({"a", "a"})});
  EXPECT_EQ(Tokenizer::load(write_tokenizer(dir2, pairs)).encode("aaa"), (std::vector<TokenId>{3, 0}));
}

TEST(Tokenizer, IgnoreMergesTakesAWordInTheVocabularyWhole) {
  // "abc" is in the vocabulary but no merge builds it: BPE gives a, b, c; Llama 3's
  // ignore_merges looks the word up first.
  Json j = bpe_over_abc({"abc"}, {});
  TempDir dir;
  EXPECT_EQ(Tokenizer::load(write_tokenizer(dir, j)).encode("abc"), (std::vector<TokenId>{0, 1, 2}));
  j["model"]["ignore_merges"] = true;
  TempDir dir2;
  EXPECT_EQ(Tokenizer::load(write_tokenizer(dir2, j)).encode("abc"), (std::vector<TokenId>{3}));
}

TEST(Tokenizer, SentencePieceStyleNormalizationAndByteFallback) {
  // Llama 2's recipe: prepend "▁", spaces to "▁", no pre-tokenizer, bytes for what the
  // vocabulary lacks.
  Json vocab = {{"<unk>", 0},  {"<s>", 1}, {"</s>", 2}, {"<0xC3>", 3}, {"<0xA9>", 4},
                {"\u2581", 5}, {"a", 6},   {"b", 7},    {"\u2581a", 8}};
  Json j = {
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\u2581"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}}},
      {"pre_tokenizer", nullptr},
      {"added_tokens",
       {{{"id", 1}, {"content", "<s>"}, {"special", true}}, {{"id", 2}, {"content", "</s>"}, {"special", true}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"\u2581 a"}}, {"unk_token", "<unk>"}, {"byte_fallback", true}}}};
  TempDir dir;
  auto t = Tokenizer::load(write_tokenizer(dir, j));
  // "a é": ▁a ▁ then é as its bytes C3 A9; BOS first.
  EXPECT_EQ(t.encode("a \u00e9"), (std::vector<TokenId>{1, 8, 5, 3, 4}));
  EXPECT_EQ(t.encode("a \u00e9", false), (std::vector<TokenId>{8, 5, 3, 4}));
  // An added token splits the text; each section is normalized on its own (▁ prepended).
  EXPECT_EQ(t.encode("a</s>a", false), (std::vector<TokenId>{8, 2, 8}));
  EXPECT_EQ(t.encode("", true), (std::vector<TokenId>{1}));

  // tokenizer_config.json's flags decide BOS and EOS where they are given.
  TempDir dir2;
  auto t2 = Tokenizer::load(write_tokenizer(
      dir2, j,
      {{"bos_token", "<s>"}, {"eos_token", {{"content", "</s>"}}}, {"add_bos_token", false}, {"add_eos_token", true}}));
  EXPECT_EQ(t2.encode("a"), (std::vector<TokenId>{8, 2}));
  EXPECT_EQ(t2.bos(), std::optional<TokenId>(1));

  // Without byte tokens or fallback, an unknown character is <unk>, and runs fuse into one.
  j["model"]["byte_fallback"] = false;
  j["model"]["fuse_unk"] = true;
  TempDir dir3;
  EXPECT_EQ(Tokenizer::load(write_tokenizer(dir3, j)).encode("a\u00e9\u00e9", false), (std::vector<TokenId>{8, 0}));
}

TEST(Tokenizer, AddedTokensMatchLongestFirstAndStripWhereTheySay) {
  Json j = bpe_over_abc({}, {});
  j["model"]["vocab"][" "] = 3;
  j["added_tokens"] = {{{"id", 10}, {"content", "<x>"}, {"lstrip", true}, {"rstrip", true}},
                       {{"id", 11}, {"content", "<x>>"}}};
  TempDir dir;
  auto t = Tokenizer::load(write_tokenizer(dir, j));
  EXPECT_EQ(t.encode("a <x> b"), (std::vector<TokenId>{0, 10, 1}));         // the spaces go with <x>
  EXPECT_EQ(t.encode("a <x>> b"), (std::vector<TokenId>{0, 3, 11, 3, 1}));  // <x>> strips nothing
}

TEST(Tokenizer, SplitBehavioursCutAsTheTokenizersLibraryDocumentsThem) {
  // The tokenizers library's own example for each behaviour: "the-final--countdown", '-'.
  auto with = [](const char* behavior) {
    return Json{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", false}};
  };
  using V = std::vector<std::string>;
  const std::string s = "the-final--countdown";
  EXPECT_EQ(pre_tokenize(with("Removed"), s), (V{"the", "final", "countdown"}));
  EXPECT_EQ(pre_tokenize(with("Isolated"), s), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(pre_tokenize(with("MergedWithPrevious"), s), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(pre_tokenize(with("MergedWithNext"), s), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(pre_tokenize(with("Contiguous"), s), (V{"the", "-", "final", "--", "countdown"}));
  // invert: the pattern describes the words.
  Json words = {{"type", "Split"}, {"pattern", {{"Regex", "\\p{L}+"}}}, {"behavior", "Removed"}, {"invert", true}};
  EXPECT_EQ(pre_tokenize(words, "ab, cd!"), (V{"ab", "cd"}));
  // Metaspace: spaces to "▁", prepended always or on the first section only, split before "▁".
  Json meta = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}};
  EXPECT_EQ(pre_tokenize(meta, "hi there", true), (V{"\u2581hi", "\u2581there"}));
  EXPECT_EQ(pre_tokenize(meta, "hi there", false), (V{"hi", "\u2581there"}));
  // Digits, one by one or in runs.
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", true}}, "a12b"), (V{"a", "1", "2", "b"}));
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", false}}, "a12b"), (V{"a", "12", "b"}));
  // ByteLevel with GPT-2's pattern: words keep their leading space, as "Ġ".
  EXPECT_EQ(pre_tokenize({{"type", "ByteLevel"}, {"add_prefix_space", false}}, "I'm  ok"),
            (V{"I", "'m", "\u0120", "\u0120ok"}));
}

TEST(Tokenizer, ErrorsNameTheFileAndWhatIsWrong) {
  auto load_error = [](const Json& j) -> std::string {
    TempDir dir;
    try {
      Tokenizer::load(write_tokenizer(dir, j));
    } catch (const InputError& e) {
      return e.what();
    }
    return "no error";
  };
  Json j = bpe_over_abc({}, {});
  j["normalizer"] = {{"type", "Precompiled"}};
  EXPECT_NE(load_error(j).find("tokenizer.json: normalizer type 'Precompiled' is not supported"), std::string::npos);
  j = bpe_over_abc({}, {"a d"});
  EXPECT_NE(load_error(j).find("'a d' names a token the vocabulary lacks"), std::string::npos);
  j = bpe_over_abc({}, {});
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(load_error(j).find("does not compile"), std::string::npos);
  TempDir empty;
  EXPECT_THROW(Tokenizer::load(empty.path()), InputError);
  TempDir dir;
  const auto t = Tokenizer::load(write_tokenizer(dir, bpe_over_abc({}, {})));
  EXPECT_THROW(t.encode("a\xff"), InputError);
  EXPECT_THROW(t.encode("d"), InputError);  // no token for it and no unk_token
}

TEST(TokenizeCli, PrintsIdsAndTokensPerRecord) {
  TempDir dir;
  write_tokenizer(dir, bpe_over_abc({"ab"}, {"a b"}));
  auto r = run_amalgam("tokenize " + dir.path().string() + " --text abc");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "3 2\n");
  write_bytes(dir / "data.jsonl", "{\"text\": \"ab\"}\n\n{\"prompt\": \"c\", \"completion\": \"ab\"}\n");
  r = run_amalgam("tokenize " + dir.path().string() + " --file " + (dir / "data.jsonl").string() + " --json");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "{\"ids\":[3],\"tokens\":[\"ab\"]}\n{\"ids\":[2,3],\"tokens\":[\"c\",\"ab\"]}\n");
  r = run_amalgam("tokenize " + dir.path().string() + " --text ''");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "\n");

  r = run_amalgam("tokenize " + dir.path().string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("give --text or --file"), std::string::npos) << r.err;
  write_bytes(dir / "bad.jsonl", "{\"text\": \"a\"}\n{\"txt\": \"a\"}\n");
  r = run_amalgam("tokenize " + dir.path().string() + " --file " + (dir / "bad.jsonl").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("bad.jsonl: line 2: a record needs"), std::string::npos) << r.err;
}

// The tokenizer packages (scripts/fetch-tokenizers.sh, which scripts/setup-deps.sh runs).
fs::path tokenizer_packages() {
  const char* env = std::getenv("AMALGAM_TOKENIZERS_DIR");
  return env && *env ? fs::path(env) : fs::path(AMALGAM_SOURCE_DIR) / ".cache" / "tokenizers";
}

std::vector<Json> read_jsonl(const fs::path& file) {
  std::vector<Json> lines;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) lines.push_back(Json::parse(line));
  return lines;
}

TEST(TokenizerCorpus, RealTokenizersGiveTransformersJsIds) {
  const fs::path packages = tokenizer_packages();
  ASSERT_TRUE(fs::exists(packages / "node_modules/@lenml/tokenizers/package.json"))
      << "no tokenizer packages in " << packages << ": run scripts/fetch-tokenizers.sh";
  TempDir out;
  const std::string node = "node " + (fs::path(AMALGAM_SOURCE_DIR) / "tests/reference/tokenizers.mjs").string() + " " +
                           packages.string() + " " + out.path().string();
  ASSERT_EQ(std::system(node.c_str()), 0) << node;
  const auto corpus = read_jsonl(out / "corpus.jsonl");
  ASSERT_GE(corpus.size(), 2000u);
  for (const std::string name : {"llama2", "llama3", "qwen3"}) {
    const auto expected = read_jsonl(out / (name + ".ids.jsonl"));
    ASSERT_EQ(expected.size(), corpus.size());
    const fs::path dir = packages / ("node_modules/@lenml/tokenizer-" + name) / "models";
    const auto r = run_amalgam("tokenize " + dir.string() + " --file " + (out / "corpus.jsonl").string() + " --json");
    ASSERT_EQ(r.code, 0) << name << ": " << r.err;
    std::istringstream lines(r.out);
    size_t mismatches = 0, i = 0;
    for (std::string line; std::getline(lines, line); ++i) {
      ASSERT_LT(i, corpus.size());
      const auto ids = Json::parse(line)["ids"];
      if (ids != expected[i]["ids"] && ++mismatches <= 3)
        ADD_FAILURE() << name << " line " << i + 1 << ": " << corpus[i]["text"].dump() << "\n  transformers.js "
                      << expected[i]["ids"].dump() << "\n  amalgam         " << ids.dump();
    }
    EXPECT_EQ(i, corpus.size()) << name;
    EXPECT_EQ(mismatches, 0u) << name << ": " << mismatches << " of " << corpus.size() << " strings differ";
  }
}

}  // namespace
}  // namespace amalgam::testing
