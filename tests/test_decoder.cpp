// Decoder language models: each family's logits on random tiny checkpoints against the
// independent double-precision forward of tests/decoder_reference.h, in F32, BF16 and F16;
// batches of sequences of different lengths equal each sequence alone; the taps see valid
// tokens only; the negative log-likelihood equals log-softmax of the reference; errors.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "core/tensor.h"
#include "decoder_fixtures.h"
#include "decoder_reference.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "test_util.h"

namespace amalgam::testing {
namespace {

using Json = nlohmann::json;

const std::vector<std::vector<int32_t>> kSequences = {
    {3, 17, 42, 5, 60, 0, 11}, {8}, {59, 1, 2, 3, 4, 5, 6, 7, 9, 33, 21}};

Matrix forward(const DecoderModel& m, const std::vector<std::vector<int32_t>>& sequences) {
  Stream s = m.embed(sequences);
  for (int64_t l = 0; l < m.config().num_hidden_layers; ++l) m.run_block(l, m.load_block(l), s);
  return m.logits(s);
}

// Every family variant against the reference: max |amalgam - reference| over the largest
// reference logit (F32 arithmetic on O(1) values: about 1e-6).
void expect_matches_reference(const Json& c, DType dtype) {
  TempDir dir;
  const Weights w = write_random_decoder(dir.path(), c, dtype, 7);
  const DecoderModel model = DecoderModel::open(dir.path());
  const Matrix logits = forward(model, kSequences);
  int64_t row = 0;
  for (const auto& seq : kSequences) {
    const Rows ref = reference_decoder_logits(c, w, seq);
    double err = 0, scale = 0;
    for (size_t t = 0; t < seq.size(); ++t, ++row)
      for (size_t j = 0; j < ref[t].size(); ++j) {
        err = std::max(err, std::abs(static_cast<double>(logits(row, static_cast<int64_t>(j))) - ref[t][j]));
        scale = std::max(scale, std::abs(ref[t][j]));
      }
    EXPECT_LT(err / scale, 2e-5) << c.dump() << " sequence of " << seq.size() << " tokens: error " << err
                                 << " at scale " << scale;
  }
}

TEST(Decoder, LlamaMatchesTheReference) {
  expect_matches_reference(tiny_config("llama"), DType::F32);
}

TEST(Decoder, LlamaWithGroupedQueryAttentionLlama3RopeAndTiedEmbeddings) {
  Json c = tiny_config("llama");
  c["num_key_value_heads"] = 2;
  c["tie_word_embeddings"] = true;
  // Original context 16 puts head_dim 8's frequencies in all three bands (wavelengths 6.3,
  // 63, 628, 6283 against 4 and 16): interpolated, divided, divided, divided.
  c["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 16}};
  expect_matches_reference(c, DType::BF16);
  c["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  c["attention_bias"] = true;
  expect_matches_reference(c, DType::F16);
}

TEST(Decoder, MistralSlidingWindow) {
  Json c = tiny_config("mistral");
  c["num_key_value_heads"] = 1;
  c["sliding_window"] = 3;  // shorter than two of the sequences
  expect_matches_reference(c, DType::F16);
}

TEST(Decoder, Qwen2Biases) {
  Json c = tiny_config("qwen2");
  c["num_key_value_heads"] = 2;
  c["tie_word_embeddings"] = true;
  c["rope_theta"] = 1000000.0;
  expect_matches_reference(c, DType::BF16);
}

TEST(Decoder, Qwen3HeadNormsAndExplicitHeadDim) {
  Json c = tiny_config("qwen3");
  c["num_key_value_heads"] = 2;
  c["head_dim"] = 16;  // 4 heads of 16 on a width of 32
  expect_matches_reference(c, DType::F32);
}

TEST(Decoder, Gpt2LearnedPositionsConv1dAndTiedOutput) {
  const Json c = {{"model_type", "gpt2"},
                  {"vocab_size", 61},
                  {"n_embd", 32},
                  {"n_layer", 2},
                  {"n_head", 4},
                  {"n_positions", 16},
                  {"activation_function", "gelu_new"}};
  for (const bool prefixed : {true, false}) {
    TempDir dir;
    const Weights w = write_random_gpt2(dir.path(), c, prefixed ? DType::F32 : DType::BF16, 9, prefixed);
    const DecoderModel model = DecoderModel::open(dir.path());
    const Matrix logits = forward(model, kSequences);
    int64_t row = 0;
    for (const auto& seq : kSequences) {
      const Rows ref = reference_gpt2_logits(c, w, seq);
      double err = 0, scale = 0;
      for (size_t t = 0; t < seq.size(); ++t, ++row)
        for (size_t j = 0; j < ref[t].size(); ++j) {
          err = std::max(err, std::abs(static_cast<double>(logits(row, static_cast<int64_t>(j))) - ref[t][j]));
          scale = std::max(scale, std::abs(ref[t][j]));
        }
      EXPECT_LT(err / scale, 2e-5) << "prefixed " << prefixed << ", sequence of " << seq.size() << ": " << err;
    }
    // More tokens than positions: an input error.
    EXPECT_THROW(model.embed({std::vector<int32_t>(17, 1)}), InputError);
  }
}

// Packed sequences do not see each other: the batch's logits are each sequence's alone (to
// float rounding: BLAS may block a product of 19 rows differently from one of 7).
TEST(Decoder, ABatchEqualsEachSequenceAloneAndTapsSeeValidTokensOnly) {
  TempDir dir;
  Json c = tiny_config("llama");
  write_random_decoder(dir.path(), c, DType::F32, 3);
  const DecoderModel model = DecoderModel::open(dir.path());
  const Matrix together = forward(model, kSequences);
  int64_t row = 0;
  for (const auto& seq : kSequences) {
    const Matrix alone = forward(model, {seq});
    for (int64_t t = 0; t < alone.rows; ++t, ++row)
      for (int64_t j = 0; j < alone.cols; ++j) ASSERT_NEAR(alone(t, j), together(row, j), 1e-5) << t << "," << j;
  }
  int64_t rows_seen = 0;
  Stream s = model.embed(kSequences);
  model.run_block(0, model.load_block(0), s, [&](const SiteInput& in) {
    if (in.role == SiteRole::AttentionInput) rows_seen += in.rows;
  });
  EXPECT_EQ(rows_seen, 7 + 1 + 11);
}

TEST(Decoder, NegativeLogLikelihoodIsTheReferencesLogSoftmax) {
  TempDir dir;
  Json c = tiny_config("llama");
  const Weights w = write_random_decoder(dir.path(), c, DType::F32, 5);
  const DecoderModel model = DecoderModel::open(dir.path());
  const auto& seq = kSequences[2];
  Stream s = model.embed({seq});
  for (int64_t l = 0; l < 2; ++l) model.run_block(l, model.load_block(l), s);
  std::vector<int32_t> targets(seq.begin() + 1, seq.end());
  targets.push_back(-1);  // the last token predicts nothing
  const auto nll = model.negative_log_likelihood(s, targets);
  const Rows ref = reference_decoder_logits(c, w, seq);
  for (size_t t = 0; t + 1 < seq.size(); ++t) {
    double mx = -INFINITY, z = 0;
    for (double v : ref[t]) mx = std::max(mx, v);
    for (double v : ref[t]) z += std::exp(v - mx);
    const double expected = mx + std::log(z) - ref[t][static_cast<size_t>(targets[t])];
    EXPECT_NEAR(nll[t], expected, 1e-4 * std::max(1.0, expected)) << t;
  }
  EXPECT_EQ(nll.back(), 0.0);
}

// Mean -log p over the predicted positions [first, ids.size()) of one sequence, in double.
std::pair<double, int> reference_nll(const Json& c, const Weights& w, const std::vector<int32_t>& ids, size_t first) {
  const Rows logits = reference_decoder_logits(c, w, ids);
  double sum = 0;
  int count = 0;
  for (size_t t = std::max<size_t>(first, 1); t < ids.size(); ++t, ++count) {
    const auto& row = logits[t - 1];
    double mx = -INFINITY, z = 0;
    for (double v : row) mx = std::max(mx, v);
    for (double v : row) z += std::exp(v - mx);
    sum += mx + std::log(z) - row[static_cast<size_t>(ids[t])];
  }
  return {sum, count};
}

TEST(LmEvalCli, PerplexityOfTextAndCompletionRecordsMatchesTheReference) {
  TempDir dir;
  const Json c = tiny_config("llama");
  const Weights w = write_random_decoder(dir.path(), c, DType::BF16, 11);
  write_char_tokenizer(dir.path());
  write_bytes(dir / "data.jsonl", "{\"text\": \"ab cab\"}\n{\"prompt\": \"ab\", \"completion\": \" ca\"}\n");
  // "ab cab" -> <s> a b ' ' c a b, all six after <s> predicted; the completion " ca" of "ab"
  // -> <s> a b ' ' c a, the last three predicted.
  const auto [text_sum, text_n] = reference_nll(c, w, {60, 0, 1, 26, 2, 0, 1}, 1);
  const auto [completion_sum, completion_n] = reference_nll(c, w, {60, 0, 1, 26, 2, 0}, 3);
  ASSERT_EQ(text_n + completion_n, 9);
  const double expected = (text_sum + completion_sum) / 9;
  auto r = run_amalgam("lm eval " + dir.path().string() + " --data " + (dir / "data.jsonl").string() +
                       " --json --per-record --batch-size 1 -q");
  ASSERT_EQ(r.code, 0) << r.err;
  std::istringstream lines(r.out);
  std::string first, second, total;
  std::getline(lines, first);
  std::getline(lines, second);
  std::getline(lines, total);
  EXPECT_EQ(Json::parse(first)["tokens"], 6);
  EXPECT_NEAR(Json::parse(first)["nll"].get<double>(), text_sum / 6, 1e-4);
  EXPECT_EQ(Json::parse(second)["tokens"], 3);
  const Json summary = Json::parse(total);
  EXPECT_EQ(summary["tokens"], 9);
  EXPECT_NEAR(summary["nll"].get<double>(), expected, 1e-4);
  EXPECT_NEAR(summary["perplexity"].get<double>(), std::exp(expected), 1e-3 * std::exp(expected));
  // Both records in one batch: the same figures.
  auto batched =
      run_amalgam("lm eval " + dir.path().string() + " --data " + (dir / "data.jsonl").string() + " --json -q");
  ASSERT_EQ(batched.code, 0) << batched.err;
  EXPECT_NEAR(Json::parse(batched.out)["nll"].get<double>(), expected, 1e-4);
  // --max-length 4 cuts both to <s> a b ' ': three predictions, then one.
  const auto [cut_text, n1] = reference_nll(c, w, {60, 0, 1, 26}, 1);
  const auto [cut_completion, n2] = reference_nll(c, w, {60, 0, 1, 26}, 3);
  auto cut = run_amalgam("lm eval " + dir.path().string() + " --data " + (dir / "data.jsonl").string() +
                         " --json -q --max-length 4");
  ASSERT_EQ(cut.code, 0) << cut.err;
  EXPECT_EQ(Json::parse(cut.out)["tokens"], n1 + n2);
  EXPECT_NEAR(Json::parse(cut.out)["nll"].get<double>(), (cut_text + cut_completion) / (n1 + n2), 1e-4);

  write_bytes(dir / "bad.jsonl", "{\"text\": \"ab\"}\n{\"text\": \"a1\"}\n");  // '1' has no token
  auto bad = run_amalgam("lm eval " + dir.path().string() + " --data " + (dir / "bad.jsonl").string() + " -q");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("bad.jsonl: line 2:"), std::string::npos) << bad.err;
}

TEST(LmEvalCli, InspectNamesTheFamily) {
  TempDir dir;
  Json c = tiny_config("qwen3");
  write_random_decoder(dir.path(), c, DType::F32, 2);
  auto r = run_amalgam("inspect " + dir.path().string() + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Json::parse(r.out)["family"], "qwen3");
  c["model_type"] = "gpt_neox";
  write_bytes(dir / "config.json", c.dump());
  r = run_amalgam("inspect " + dir.path().string());
  EXPECT_NE(r.out.find("family: none amalgam runs (data-free merging only)"), std::string::npos) << r.out;
}

TEST(Decoder, ErrorsNameTheConfigKeyOrTensor) {
  // The tiny Llama's weights under config `c`.
  auto open_error = [](const Json& c) -> std::string {
    TempDir dir;
    write_random_decoder(dir.path(), tiny_config("llama"), DType::F32, 1);
    write_bytes(dir / "config.json", c.dump());
    try {
      DecoderModel::open(dir.path());
    } catch (const InputError& e) {
      return e.what();
    }
    return "no error";
  };
  Json c = tiny_config("gpt_neox");
  EXPECT_NE(open_error(c).find("config.json: model_type 'gpt_neox' is not a decoder family"), std::string::npos);
  c = tiny_config("llama");
  c["num_key_value_heads"] = 3;
  EXPECT_NE(open_error(c).find("must be a multiple of num_key_value_heads"), std::string::npos);
  c = tiny_config("llama");
  c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 2.0}};
  EXPECT_NE(open_error(c).find("rope_type 'yarn' is not supported"), std::string::npos);
  c = tiny_config("llama");
  c["intermediate_size"] = 41;  // the stored MLP weights are 40 wide
  EXPECT_NE(open_error(c).find("tensor 'model.layers.0.mlp.gate_proj.weight': shape [40, 32] does not match"),
            std::string::npos)
      << open_error(c);
}

// Each real shape's tensor table gives the model's published parameter count (Hugging Face
// model cards and num_parameters(), tied embeddings counted once).
TEST(DecoderShapes, RealShapesHaveThePublishedParameterCounts) {
  const std::map<std::string, int64_t> published = {
      {"gpt2", 124'439'808},           {"llama-2-7b", 6'738'415'616}, {"llama-3.1-8b", 8'030'261'248},
      {"llama-3.2-1b", 1'235'814'400}, {"mistral-7b", 7'241'732'096}, {"qwen2.5-0.5b", 494'032'768},
      {"llama-3.2-3b", 3'212'749'824}, {"qwen3-0.6b", 596'049'920},
  };
  for (const auto& name : decoder_shape_names()) {
    const auto config = find_decoder_shape(name);
    ASSERT_TRUE(config) << name;
    int64_t total = 0;
    for (const auto& [tensor, shape] : decoder_parameters(read_decoder_config(*config, name)))
      total += shape_numel(shape);
    ASSERT_TRUE(published.count(name)) << name << ": a shape without its published count";
    EXPECT_EQ(total, published.at(name)) << name;
  }
  EXPECT_FALSE(find_decoder_shape("llama-9"));
}

// `amalgam generate --architecture` writes a checkpoint the decoder opens and evaluates:
// GPT-2's real table (one block of its twelve), a tokenizer copied in, a fine-tune beside it.
TEST(LmEvalCli, GeneratedArchitectureRunsThroughLmEvalAndStats) {
  TempDir dir;
  fs::create_directories(dir / "tok");
  write_char_tokenizer(dir / "tok");
  const auto gen = run_amalgam("generate --architecture gpt2 --layers 1 --models 1 --tokenizer " +
                               (dir / "tok").string() + " -o " + (dir / "family").string());
  ASSERT_EQ(gen.code, 0) << gen.err;
  const Json config = read_json_file(dir / "family" / "base" / "config.json");
  EXPECT_EQ(config["n_layer"], 1);
  EXPECT_EQ(config["n_embd"], 768);
  EXPECT_EQ(config["torch_dtype"], "bfloat16");
  EXPECT_TRUE(fs::exists(dir / "family" / "model_1" / "tokenizer.json"));
  const DecoderModel model = DecoderModel::open(dir / "family" / "model_1");
  EXPECT_EQ(model.config().vocab_size, 50257);
  write_bytes(dir / "data.jsonl", "{\"text\": \"ab cab\"}\n");
  const auto eval = run_amalgam("lm eval " + (dir / "family" / "base").string() + " --data " +
                                (dir / "data.jsonl").string() + " --json -q");
  ASSERT_EQ(eval.code, 0) << eval.err;
  const double nll = Json::parse(eval.out)["nll"];
  EXPECT_TRUE(std::isfinite(nll) && nll > 0) << eval.out;
  const auto bad = run_amalgam("generate --architecture llama-9 -o " + (dir / "x").string());
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("'llama-9' is not a shape amalgam knows (gpt2, "), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(dir / "x"));
  const auto both = run_amalgam("generate --architecture gpt2 --hidden 64 -o " + (dir / "y").string());
  EXPECT_NE(both.code, 0);
}

}  // namespace
}  // namespace amalgam::testing
