// mergekit's tokenizer options: the output vocabulary (tokenizer_source base | union | a
// model, the tokenizer: section's tokens and pad_to_multiple_of), each model's embeddings and
// LM head mapped into it by token string, and the tokenizer files written. References are
// computed here, in double, from the stored rows and mergekit's rules (tokenizer/build.py,
// tokenizer/embed.py at a6e4028) as read by hand.
#include <gtest/gtest.h>

#include "clip_fixtures.h"  // tensor_floats
#include "decoder_fixtures.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "merge/config.h"
#include "test_util.h"

namespace amalgam::testing {
namespace {

using Rows = std::vector<std::vector<double>>;

// A BPE tokenizer.json: "<s>" an added special token at id 0, then `plain` tokens, then
// `added` tokens (added, not special) at the ids after them.
void write_tokenizer(const fs::path& dir, const std::vector<std::string>& plain,
                     const std::vector<std::string>& added) {
  Json vocab = Json::object();
  vocab["<s>"] = 0;
  for (size_t i = 0; i < plain.size(); ++i) vocab[plain[i]] = i + 1;
  Json added_tokens = Json::array();
  added_tokens.push_back({{"id", 0},
                          {"content", "<s>"},
                          {"single_word", false},
                          {"lstrip", false},
                          {"rstrip", false},
                          {"normalized", false},
                          {"special", true}});
  for (size_t i = 0; i < added.size(); ++i)
    added_tokens.push_back({{"id", plain.size() + 1 + i},
                            {"content", added[i]},
                            {"single_word", false},
                            {"lstrip", false},
                            {"rstrip", false},
                            {"normalized", true},
                            {"special", false}});
  const Json tokenizer = {{"version", "1.0"},
                          {"added_tokens", added_tokens},
                          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", Json::array({"t 1"})}}}};
  write_bytes(dir / "tokenizer.json", tokenizer.dump());
  write_bytes(dir / "tokenizer_config.json", R"({"bos_token": "<s>", "model_max_length": 2048})");
  write_bytes(dir / "special_tokens_map.json", R"({"bos_token": "<s>"})");
}

std::vector<std::string> plain_tokens(int n) {
  std::vector<std::string> t;
  for (int i = 1; i <= n; ++i) t.push_back(std::string("t").append(std::to_string(i)));
  return t;
}

// A tiny Llama with `vocab` rows whose tokenizer has those tokens; returns the rows of its
// embeddings and LM head (as stored, F32).
struct TinyModel {
  Rows embed, head;
};
TinyModel write_model(const fs::path& dir, int64_t vocab, uint64_t seed, const std::vector<std::string>& plain,
                      const std::vector<std::string>& added) {
  Json c = tiny_config("llama");
  c["vocab_size"] = vocab;
  write_random_decoder(dir, c, DType::F32, seed);
  write_tokenizer(dir, plain, added);
  TinyModel m;
  for (auto [name, rows] : {std::pair{"model.embed_tokens.weight", &m.embed}, {"lm_head.weight", &m.head}}) {
    const std::vector<double> v = tensor_values(dir, name);
    const size_t width = v.size() / static_cast<size_t>(vocab);
    for (int64_t r = 0; r < vocab; ++r)
      rows->emplace_back(v.begin() + static_cast<long>(r * width), v.begin() + static_cast<long>((r + 1) * width));
  }
  return m;
}

Rows rows_of(const fs::path& dir, const std::string& name) {
  const std::vector<double> v = tensor_values(dir, name);
  const int64_t rows = CheckpointReader(dir).info(name).shape.at(0);
  const size_t width = v.size() / static_cast<size_t>(rows);
  Rows out;
  for (int64_t r = 0; r < rows; ++r)
    out.emplace_back(v.begin() + static_cast<long>(r * width), v.begin() + static_cast<long>((r + 1) * width));
  return out;
}

std::vector<double> mean_of(const std::vector<std::vector<double>>& rows) {
  std::vector<double> m(rows.front().size(), 0.0);
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) m[i] += r[i];
  for (auto& x : m) x /= static_cast<double>(rows.size());
  return m;
}

void expect_row(const Rows& got, size_t row, const std::vector<double>& want, const std::string& what) {
  ASSERT_LT(row, got.size()) << what;
  ASSERT_EQ(got[row].size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[row][i], want[i], 1e-6) << what << " row " << row << " [" << i << "]";
}

CliResult merge(const TempDir& tmp, const std::string& yaml, const std::string& out) {
  write_bytes(tmp / "merge.yaml", yaml);
  return run_amalgam("merge " + (tmp / "merge.yaml").string() + " " + (tmp / out).string() + " -q");
}

// The issue's case: a fine-tune that added two tokens (its embeddings two rows longer) merges
// with its base; without tokenizer options it is the error it always was.
TEST(TokenizerMerge, AFineTuneWithTwoAddedTokensMergesWithItsBase) {
  TempDir tmp;
  const TinyModel base = write_model(tmp / "base", 61, 1, plain_tokens(60), {});
  const TinyModel ft = write_model(tmp / "ft", 63, 2, plain_tokens(60), {"<|tool|>", "<|end_tool|>"});
  const std::string models = "models:\n  - model: base\n  - model: ft\nparameters: {weight: 1}\n";
  const CliResult refused = merge(tmp, "merge_method: linear\n" + models, "refused");
  EXPECT_EQ(refused.code, 2);
  EXPECT_NE(refused.err.find("shape [63, 32] differs from [61, 32]"), std::string::npos) << refused.err;

  const CliResult r = merge(tmp, "merge_method: linear\ntokenizer_source: union\n" + models, "out");
  ASSERT_EQ(r.code, 0) << r.err;
  for (auto [name, b, f] :
       {std::tuple{"model.embed_tokens.weight", &base.embed, &ft.embed}, {"lm_head.weight", &base.head, &ft.head}}) {
    const Rows out = rows_of(tmp / "out", name);
    ASSERT_EQ(out.size(), 63U) << name;
    // Tokens both have: the mean of their rows. The added ones: only the fine-tune has them,
    // so the base takes its rows (mergekit's donor) and the mean is the fine-tune's row.
    for (size_t i = 0; i < 61; ++i) expect_row(out, i, mean_of({(*b)[i], (*f)[i]}), name);
    expect_row(out, 61, (*f)[61], name);
    expect_row(out, 62, (*f)[62], name);
  }
  EXPECT_EQ(read_json_file(tmp / "out" / "config.json")["vocab_size"], 63);
  const Json tokenizer = read_json_file(tmp / "out" / "tokenizer.json");
  ASSERT_EQ(tokenizer["added_tokens"].size(), 3U);
  EXPECT_EQ(tokenizer["added_tokens"][1]["content"], "<|tool|>");
  EXPECT_EQ(tokenizer["added_tokens"][1]["id"], 61);
  EXPECT_EQ(tokenizer["added_tokens"][2]["id"], 62);
  const Json config = read_json_file(tmp / "out" / "tokenizer_config.json");
  EXPECT_EQ(config["added_tokens_decoder"]["62"]["content"], "<|end_tool|>");
  EXPECT_EQ(config["added_tokens_decoder"]["0"]["special"], true);
  EXPECT_EQ(config["model_max_length"], 2048);  // the base's settings kept
  EXPECT_TRUE(fs::exists(tmp / "out" / "special_tokens_map.json"));
  // The merge's own record says what it did, and reruns.
  const MergeConfig recorded = load_merge_config(tmp / "out" / "amalgam_config.yaml");
  ASSERT_TRUE(recorded.tokenizer);
  EXPECT_EQ(recorded.tokenizer->source, "union");
  // No scratch checkpoints are left beside the output.
  for (const auto& e : fs::directory_iterator(tmp.path()))
    EXPECT_EQ(e.path().filename().string().find(".out.vocab"), std::string::npos) << e.path();
}

// Slices take the output vocabulary too: a frankenmerge of the base's layers and the
// fine-tune's has the embeddings of its first slice's model (the base, its rows for the added
// tokens the fine-tune's, as mergekit's donor rule gives them) and the LM head of its last.
TEST(TokenizerMerge, AFrankenmergeTakesTheVocabularyThroughItsSlices) {
  TempDir tmp;
  const TinyModel base = write_model(tmp / "base", 61, 1, plain_tokens(60), {});
  const TinyModel ft = write_model(tmp / "ft", 63, 2, plain_tokens(60), {"<|tool|>", "<|end_tool|>"});
  const CliResult r = merge(tmp,
                            "merge_method: passthrough\ntokenizer_source: union\nslices:\n"
                            "  - sources: [{model: base, layer_range: [0, 2]}]\n"
                            "  - sources: [{model: ft, layer_range: [0, 2]}]\n",
                            "out");
  ASSERT_EQ(r.code, 0) << r.err;
  const Rows embed = rows_of(tmp / "out", "model.embed_tokens.weight"), head = rows_of(tmp / "out", "lm_head.weight");
  ASSERT_EQ(embed.size(), 63U);
  ASSERT_EQ(head.size(), 63U);
  for (size_t i = 0; i < 61; ++i) expect_row(embed, i, base.embed[i], "embed");
  expect_row(embed, 61, ft.embed[61], "embed <|tool|>");
  expect_row(embed, 62, ft.embed[62], "embed <|end_tool|>");
  for (size_t i = 0; i < 63; ++i) expect_row(head, i, ft.head[i], "head");
  const Json config = read_json_file(tmp / "out" / "config.json");
  EXPECT_EQ(config["vocab_size"], 63);
  EXPECT_EQ(config["num_hidden_layers"], 4);
  EXPECT_EQ(read_json_file(tmp / "out" / "tokenizer.json")["added_tokens"].size(), 3U);
}

// union: the base's vocabulary, then the tokens other models add, in model order; a token two
// models have and the base lacks takes their mean in the base, one model's token that model's
// row everywhere.
TEST(TokenizerMerge, UnionOrdersNewTokensByModelAndFillsRowsAsMergekit) {
  TempDir tmp;
  std::vector<std::string> x_plain = plain_tokens(60), y_plain = plain_tokens(60);
  x_plain.push_back("zz");                      // x: id 61
  y_plain.insert(y_plain.end(), {"yy", "zz"});  // y: yy at 61, zz at 62
  const TinyModel b = write_model(tmp / "b", 61, 3, plain_tokens(60), {});
  const TinyModel x = write_model(tmp / "x", 62, 4, x_plain, {});
  const TinyModel y = write_model(tmp / "y", 63, 5, y_plain, {});
  const CliResult r = merge(tmp,
                            "merge_method: linear\ntokenizer_source: union\nparameters: {weight: 1}\n"
                            "models:\n  - model: b\n  - model: x\n  - model: y\n",
                            "out");
  ASSERT_EQ(r.code, 0) << r.err;
  const Rows out = rows_of(tmp / "out", "model.embed_tokens.weight");
  ASSERT_EQ(out.size(), 63U);
  // zz (x's, then y's): id 61; b lacks it and is the first model, the mean of x's and y's rows.
  const std::vector<double> zz_in_b = mean_of({x.embed[61], y.embed[62]});
  expect_row(out, 61, mean_of({zz_in_b, x.embed[61], y.embed[62]}), "zz");
  // yy, y's alone: id 62, y's row in every model.
  expect_row(out, 62, y.embed[61], "yy");
  expect_row(out, 7, mean_of({b.embed[7], x.embed[7], y.embed[7]}), "t7");
  const Json tokenizer = read_json_file(tmp / "out" / "tokenizer.json");
  EXPECT_EQ(tokenizer["added_tokens"][1]["content"], "zz");
  EXPECT_EQ(tokenizer["added_tokens"][2]["content"], "yy");
}

// The tokenizer: section: a token added with zero rows, a token forced to a model's row in
// every model, the vocabulary padded with each model's mean row.
TEST(TokenizerMerge, TokensForceAndPadding) {
  TempDir tmp;
  const TinyModel base = write_model(tmp / "base", 61, 6, plain_tokens(60), {});
  const TinyModel ft = write_model(tmp / "ft", 61, 7, plain_tokens(60), {});
  const CliResult r = merge(tmp,
                            "merge_method: linear\nbase_model: base\nparameters: {weight: 1}\n"
                            "models:\n  - model: base\n  - model: ft\n"
                            "tokenizer:\n  source: base\n  pad_to_multiple_of: 8\n  tokens:\n"
                            "    \"<new>\": {source: {kind: zero}}\n"
                            "    t5: {source: ft, force: true}\n"
                            "    t6: {source: {kind: model_token, model: base, token: t9}, force: true}\n",
                            "out");
  ASSERT_EQ(r.code, 0) << r.err;
  const Rows out = rows_of(tmp / "out", "model.embed_tokens.weight");
  ASSERT_EQ(out.size(), 64U);  // 61 tokens and <new>, padded to a multiple of 8
  expect_row(out, 61, std::vector<double>(32, 0.0), "<new>");
  expect_row(out, 5, ft.embed[5], "t5 forced from ft");
  expect_row(out, 6, base.embed[9], "t6 forced to base's t9");
  expect_row(out, 3, mean_of({base.embed[3], ft.embed[3]}), "t3");
  // Padding: each model's mean over its 62 rows in the output vocabulary, then merged.
  auto padded_mean = [&](const Rows& own) {
    Rows rows(own.begin(), own.end());
    rows[5] = ft.embed[5];
    rows[6] = base.embed[9];
    rows.push_back(std::vector<double>(32, 0.0));
    return mean_of(rows);
  };
  const std::vector<double> pad = mean_of({padded_mean(base.embed), padded_mean(ft.embed)});
  for (size_t row : {62, 63}) expect_row(out, row, pad, "padding");
  EXPECT_EQ(read_json_file(tmp / "out" / "config.json")["vocab_size"], 64);
}

// tokenizer_source naming a model: that model's vocabulary; a token of it the others lack
// takes its row.
TEST(TokenizerMerge, SourceModelGivesItsVocabulary) {
  TempDir tmp;
  const TinyModel base = write_model(tmp / "base", 61, 8, plain_tokens(60), {});
  const TinyModel ft = write_model(tmp / "ft", 62, 9, plain_tokens(60), {"<|x|>"});
  const CliResult r = merge(tmp,
                            "merge_method: task_arithmetic\nbase_model: base\ntokenizer_source: ft\n"
                            "models:\n  - model: ft\n    parameters: {weight: 0.5}\n",
                            "out");
  ASSERT_EQ(r.code, 0) << r.err;
  const Rows out = rows_of(tmp / "out", "model.embed_tokens.weight");
  ASSERT_EQ(out.size(), 62U);
  // The base takes ft's row for <|x|>: its task vector there is zero, the output ft's row.
  expect_row(out, 61, ft.embed[61], "<|x|>");
  std::vector<double> want(32);
  for (size_t i = 0; i < 32; ++i) want[i] = base.embed[4][i] + 0.5 * (ft.embed[4][i] - base.embed[4][i]);
  expect_row(out, 4, want, "t4");
}

// A tokenizer larger than its model's embeddings (tokens at or past config.json's vocab_size):
// tokenizer_source: base strips them, as mergekit's get_stripped_tokenizer does.
TEST(TokenizerMerge, BaseTokensPastTheEmbeddingsAreStripped) {
  TempDir tmp;
  const TinyModel base = write_model(tmp / "base", 61, 10, plain_tokens(60), {"<unused>"});  // <unused> at id 61
  const TinyModel ft = write_model(tmp / "ft", 61, 11, plain_tokens(60), {});
  const CliResult r = merge(tmp,
                            "merge_method: linear\nbase_model: base\ntokenizer_source: base\nparameters: {weight: 1}\n"
                            "models:\n  - model: base\n  - model: ft\n",
                            "out");
  ASSERT_EQ(r.code, 0) << r.err;
  const Json tokenizer = read_json_file(tmp / "out" / "tokenizer.json");
  ASSERT_EQ(tokenizer["added_tokens"].size(), 1U);  // <s> alone
  EXPECT_EQ(tokenizer["added_tokens"][0]["content"], "<s>");
  EXPECT_EQ(rows_of(tmp / "out", "lm_head.weight").size(), 61U);
  expect_row(rows_of(tmp / "out", "lm_head.weight"), 60, mean_of({base.head[60], ft.head[60]}), "t60");
}

TEST(TokenizerMerge, ConfigErrorsNameTheKey) {
  TempDir tmp;
  write_model(tmp / "base", 61, 1, plain_tokens(60), {});
  auto error_of = [&](const std::string& tokenizer) {
    return merge(tmp, "merge_method: linear\nparameters: {weight: 1}\nmodels:\n  - model: base\n" + tokenizer, "bad")
        .err;
  };
  EXPECT_NE(error_of("tokenizer: {tokens: {x: {source: {kind: one}}}}\n")
                .find("tokenizer.tokens.x.source.kind: expected zero or model_token"),
            std::string::npos);
  EXPECT_NE(error_of("tokenizer: {tokens: {x: {source: nowhere}}}\n")
                .find("tokenizer.tokens.x.source: 'nowhere' is not a model of this merge"),
            std::string::npos);
  EXPECT_NE(error_of("tokenizer: {pad_to_multiple_of: 0}\n")
                .find("tokenizer.pad_to_multiple_of: expected a positive integer"),
            std::string::npos);
  EXPECT_NE(error_of("tokenizer: {colour: red}\n").find("tokenizer: unknown key 'colour'"), std::string::npos);
  EXPECT_NE(error_of("tokenizer_source: missing_model\n").find("missing_model"), std::string::npos);
  EXPECT_FALSE(fs::exists(tmp / "bad"));
}

}  // namespace
}  // namespace amalgam::testing
