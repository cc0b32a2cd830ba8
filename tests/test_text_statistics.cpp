// `amalgam stats` on decoder language models: every linear site's Gram against the Grams of
// the double-precision reference forward's own site inputs (tests/decoder_reference.h), for a
// Llama with grouped-query attention and for GPT-2's Conv1D layout; the statistics file's
// metadata; batching, thread counts and splitting the data change nothing beyond float
// rounding (threads: not even that); truncation; errors.
#include <gtest/gtest.h>

#include <random>
#include <sstream>

#include "calibration/statistics_file.h"
#include "decoder_fixtures.h"
#include "decoder_reference.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace amalgam::testing {
namespace {

// The char tokenizer's ids: <s> then a-z as 0-25, space 26.
std::vector<int32_t> char_ids(const std::string& text) {
  std::vector<int32_t> ids = {60};
  for (char ch : text) ids.push_back(ch == ' ' ? 26 : ch - 'a');
  return ids;
}

// Sum over every token of x^T x for each (layer, site), in double, and the row count.
struct ReferenceGrams {
  std::map<std::pair<size_t, int>, std::vector<double>> sums;
  std::map<std::pair<size_t, int>, size_t> widths;
  size_t rows = 0;
  SiteObserver observer() {
    return [this](size_t layer, int site, const Rows& x) {
      const size_t w = x.front().size();
      auto& sum = sums[{layer, site}];
      sum.resize(w * w, 0.0);
      widths[{layer, site}] = w;
      for (const auto& row : x)
        for (size_t i = 0; i < w; ++i)
          for (size_t j = 0; j < w; ++j) sum[i * w + j] += row[i] * row[j];
    };
  }
};

// max |amalgam - reference| over the largest reference entry.
double relative_error(const Tensor& gram, const std::vector<double>& sum, size_t rows) {
  const auto values = gram.to(DType::F32).data<float>();
  double err = 0, scale = 0;
  for (size_t k = 0; k < sum.size(); ++k) {
    const double expected = sum[k] / static_cast<double>(rows);
    err = std::max(err, std::abs(static_cast<double>(values[k]) - expected));
    scale = std::max(scale, std::abs(expected));
  }
  return err / scale;
}

const std::vector<std::string> kTexts = {"ab cab", "hello world", "the quick brown fox"};

void write_texts(const fs::path& file, const std::vector<std::string>& texts) {
  std::string jsonl;
  for (const auto& t : texts) jsonl += Json{{"text", t}}.dump() + "\n";
  write_bytes(file, jsonl);
}

CliResult stats(const fs::path& model, const std::string& args) {
  return run_amalgam("stats " + model.string() + " " + args + " -q");
}

TEST(TextStatistics, LlamaGramsOfEverySiteMatchTheReference) {
  TempDir dir;
  Json c = tiny_config("llama");
  c["num_key_value_heads"] = 2;
  c["intermediate_size"] = 48;
  const Weights w = write_random_decoder(dir / "model", c, DType::F32, 21);
  write_char_tokenizer(dir / "model");
  write_texts(dir / "data.jsonl", kTexts);
  const auto r = stats(dir / "model", "--data " + (dir / "data.jsonl").string() + " --examples 3 --batch-size 2 -o " +
                                          (dir / "s.safetensors").string());
  ASSERT_EQ(r.code, 0) << r.err;

  ReferenceGrams ref;
  for (const auto& t : kTexts) {
    const auto ids = char_ids(t);
    reference_decoder_logits(c, w, ids, ref.observer());
    ref.rows += ids.size();
  }
  const StatisticsFile s(dir / "s.safetensors");
  EXPECT_EQ(s.rows(), static_cast<int64_t>(ref.rows));  // every token, nothing else
  EXPECT_EQ(s.examples(), 3);
  EXPECT_EQ(s.tasks(), std::vector<std::string>{"data"});
  const char* grams[] = {"self_attn.qkv.gram", "self_attn.o_proj.gram", "mlp.gate_up.gram", "mlp.down_proj.gram"};
  ASSERT_EQ(s.gram_names().size(), 8u);
  for (size_t l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (int site = 0; site < 4; ++site) {
      const std::string name = p + grams[site];
      const size_t width = ref.widths.at({l, site});
      EXPECT_EQ(s.gram_shape(name), (Shape{static_cast<int64_t>(width), static_cast<int64_t>(width)})) << name;
      EXPECT_LT(relative_error(s.gram(name), ref.sums.at({l, site}), ref.rows), 1e-5) << name;
    }
    const auto& map = s.weight_grams();
    for (const char* m : {"q_proj", "k_proj", "v_proj"})
      EXPECT_EQ(map.at(p + "self_attn." + m + ".weight"), p + "self_attn.qkv.gram");
    EXPECT_EQ(map.at(p + "self_attn.o_proj.weight"), p + "self_attn.o_proj.gram");
    EXPECT_EQ(map.at(p + "mlp.gate_proj.weight"), p + "mlp.gate_up.gram");
    EXPECT_EQ(map.at(p + "mlp.up_proj.weight"), p + "mlp.gate_up.gram");
    EXPECT_EQ(map.at(p + "mlp.down_proj.weight"), p + "mlp.down_proj.gram");
  }
  EXPECT_EQ(s.weight_grams().size(), 14u);  // seven linear weights a block, no embeddings or head
  EXPECT_EQ(s.gram_shape("model.layers.1.mlp.down_proj.gram"), (Shape{48, 48}));
}

// RegMean measures a language model's `data:` (JSONL texts, the candidate's own tokenizer)
// exactly as `amalgam stats` does: the merge from `data:` has the bits of the merge from the
// statistics files of the same draw and batches.
TEST(TextStatistics, RegMeanMeasuresJsonlDataAsAmalgamStatsDoes) {
  TempDir dir;
  Json c = tiny_config("llama");
  c["num_key_value_heads"] = 2;
  for (const char* m : {"a", "b"}) {
    write_random_decoder(dir / m, c, DType::F32, m[0] == 'a' ? 3 : 4);
    write_char_tokenizer(dir / m);
  }
  write_texts(dir / "data.jsonl", kTexts);
  std::string from_data = "merge_method: regmean\nparameters: {alpha: 0.9, examples: 3, batch_size: 2}\nmodels:\n";
  std::string from_stats = from_data;
  for (const char* m : {"a", "b"}) {
    const fs::path st = dir / (std::string(m) + ".stats");
    ASSERT_EQ(
        stats(dir / m, "--data " + (dir / "data.jsonl").string() + " --examples 3 --batch-size 2 -o " + st.string())
            .code,
        0);
    from_data += "  - model: " + (dir / m).string() + "\n    data: " + (dir / "data.jsonl").string() + "\n";
    from_stats += "  - model: " + (dir / m).string() + "\n    stats: " + st.string() + "\n";
  }
  write_bytes(dir / "data.yaml", from_data);
  write_bytes(dir / "stats.yaml", from_stats);
  for (const char* name : {"data", "stats"}) {
    const auto r = run_amalgam("merge " + (dir / (std::string(name) + ".yaml")).string() + " -o " +
                               (dir / ("out-" + std::string(name))).string() + " -q");
    ASSERT_EQ(r.code, 0) << r.err;
  }
  const CheckpointReader x(dir / "out-data"), y(dir / "out-stats");
  ASSERT_EQ(x.names(), y.names());
  for (const auto& name : x.names()) {
    const auto from_data = x.tensor(name).bytes(), from_stats = y.tensor(name).bytes();
    EXPECT_TRUE(std::equal(from_data.begin(), from_data.end(), from_stats.begin(), from_stats.end())) << name;
  }
  // And the merge is not the average: the q projection moved away from (a + b) / 2.
  const SafetensorsReader a(dir / "a" / "model.safetensors"), b(dir / "b" / "model.safetensors");
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  const auto merged = x.tensor(q).data<float>(), qa = a.tensor(q).data<float>(), qb = b.tensor(q).data<float>();
  double off_average = 0;
  for (size_t i = 0; i < merged.size(); ++i)
    off_average = std::max(off_average, std::abs(merged[i] - (qa[i] + qb[i]) / 2.0));
  EXPECT_GT(off_average, 1e-3);
}

// GPT-2 stores its linear weights [in, out] (Conv1D). RegMean on them, from `data:`, against
// the closed form in double on the reference forward's own Grams: in the stored layout the
// merge is S* = (sum_t G~_t)^-1 sum_t G~_t S_t, G~ = alpha G + (1 - alpha) diag(G). (Solved
// as if stored [out, in], the square attn.c_proj merges to something else without an error.)
TEST(TextStatistics, RegMeanSolvesGpt2Conv1dWeightsInTheirStoredLayout) {
  TempDir dir;
  const Json c = {{"model_type", "gpt2"}, {"vocab_size", 61}, {"n_embd", 16},
                  {"n_layer", 2},         {"n_head", 2},      {"n_positions", 24}};
  const double alpha = 0.8;
  std::vector<Weights> weights;
  std::string yaml = "merge_method: regmean\nparameters: {alpha: 0.8, examples: 3}\nmodels:\n";
  for (const char* m : {"a", "b"}) {
    weights.push_back(write_random_gpt2(dir / m, c, DType::F32, m[0] == 'a' ? 8 : 9, /*prefixed=*/true));
    write_char_tokenizer(dir / m);
    yaml += "  - model: " + (dir / m).string() + "\n    data: " + (dir / "data.jsonl").string() + "\n";
  }
  write_texts(dir / "data.jsonl", kTexts);
  write_bytes(dir / "merge.yaml", yaml);
  const auto r = run_amalgam("merge " + (dir / "merge.yaml").string() + " -o " + (dir / "out").string() + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const CheckpointReader out(dir / "out");
  // Each model's Grams from the reference forward on its own weights.
  std::vector<ReferenceGrams> grams(2);
  for (size_t t = 0; t < 2; ++t)
    for (const auto& text : kTexts) {
      const auto ids = char_ids(text);
      reference_gpt2_logits(c, weights[t], ids, grams[t].observer());
      grams[t].rows += ids.size();
    }
  const std::pair<const char*, int> cases[] = {{"attn.c_attn", 0}, {"attn.c_proj", 1}, {"mlp.c_proj", 3}};
  for (size_t l = 0; l < 2; ++l)
    for (const auto& [module, site] : cases) {
      const std::string name = "transformer.h." + std::to_string(l) + "." + module + ".weight";
      const size_t in = grams[0].widths.at({l, site}), cols = weights[0].at(name).size() / in;
      std::vector<double> system(in * in, 0.0), rhs(in * cols, 0.0);
      for (size_t t = 0; t < 2; ++t) {
        std::vector<double> g = grams[t].sums.at({l, site});
        for (size_t i = 0; i < in; ++i)
          for (size_t j = 0; j < in; ++j) g[i * in + j] *= (i == j ? 1.0 : alpha) / static_cast<double>(grams[t].rows);
        const auto& stored = weights[t].at(name);  // [in, out]
        for (size_t i = 0; i < in; ++i)
          for (size_t j = 0; j < in; ++j) {
            system[i * in + j] += g[i * in + j];
            for (size_t o = 0; o < cols; ++o) rhs[i * cols + o] += g[i * in + j] * stored[j * cols + o];
          }
      }
      const std::vector<double> want = gauss_solve(system, rhs, static_cast<int64_t>(in), static_cast<int64_t>(cols));
      const auto got = out.tensor(name).to(DType::F32);
      ASSERT_EQ(got.shape(), (Shape{static_cast<int64_t>(in), static_cast<int64_t>(cols)})) << name;
      double err = 0, scale = 0;
      for (size_t k = 0; k < want.size(); ++k) {
        err = std::max(err, std::abs(got.data<float>()[k] - want[k]));
        scale = std::max(scale, std::abs(want[k]));
      }
      EXPECT_LT(err / scale, 1e-4) << name;
    }
}

// Two fine-tunes that differ from their base in block 1 only: RegMean++'s merged stream after
// block 0 is each candidate's own, so its block 1 is RegMean's from the candidates' own
// statistics (amalgam stats), and everything else comes back as it was. Llama (q/k/v apart)
// and GPT-2 (one c_attn, Conv1D weights stored [in, out]).
void expect_regmean_plus_plus_block_one_is_regmeans(const Json& c, const std::string& block_one) {
  TempDir dir;
  const Weights base = c["model_type"] == "gpt2" ? write_random_gpt2(dir / "base", c, DType::F32, 1, true)
                                                 : write_random_decoder(dir / "base", c, DType::F32, 1);
  const CheckpointReader base_reader(dir / "base");
  std::string plus = "merge_method: regmean_plusplus\nparameters: {alpha: 0.9, examples: 3, batch_size: 2}\nmodels:\n";
  std::string plain = "merge_method: regmean\nparameters: {alpha: 0.9}\nmodels:\n";
  write_texts(dir / "data.jsonl", kTexts);
  for (const char* m : {"a", "b"}) {
    std::mt19937_64 rng(m[0]);
    std::normal_distribution<float> noise(0.0f, 0.05f);
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& name : base_reader.names()) {
      Tensor t = base_reader.tensor(name).to(DType::F32).clone();
      if (name.starts_with(block_one))
        for (auto& x : t.mutable_data<float>()) x += noise(rng);
      tensors.emplace_back(name, std::move(t));
    }
    fs::create_directories(dir / m);
    fs::copy_file(dir / "base" / "config.json", dir / m / "config.json");
    save_safetensors(dir / m / "model.safetensors", tensors);
    write_char_tokenizer(dir / m);
    const fs::path st = dir / (std::string(m) + ".stats");
    ASSERT_EQ(
        stats(dir / m, "--data " + (dir / "data.jsonl").string() + " --examples 3 --batch-size 2 -o " + st.string())
            .code,
        0);
    plus += "  - model: " + (dir / m).string() + "\n    data: " + (dir / "data.jsonl").string() + "\n";
    plain += "  - model: " + (dir / m).string() + "\n    stats: " + st.string() + "\n";
  }
  write_bytes(dir / "plus.yaml", plus);
  write_bytes(dir / "plain.yaml", plain);
  for (const char* name : {"plus", "plain"}) {
    const auto r = run_amalgam("merge " + (dir / (std::string(name) + ".yaml")).string() + " -o " +
                               (dir / ("out-" + std::string(name))).string() + " -q");
    ASSERT_EQ(r.code, 0) << r.err;
  }
  const CheckpointReader x(dir / "out-plus"), y(dir / "out-plain");
  ASSERT_EQ(x.names(), y.names());
  for (const auto& name : x.names()) {
    const Tensor a = x.tensor(name).to(DType::F32), b = y.tensor(name).to(DType::F32);
    double err = 0, scale = 1e-12;
    for (size_t k = 0; k < a.data<float>().size(); ++k) {
      err = std::max(err, static_cast<double>(std::abs(a.data<float>()[k] - b.data<float>()[k])));
      scale = std::max(scale, static_cast<double>(std::abs(b.data<float>()[k])));
    }
    EXPECT_LT(err / scale, 1e-4) << name;  // float rounding through the merged block 0 and a solve
    if (!name.starts_with(block_one)) {    // untouched: the base's own values
      const Tensor w = base_reader.tensor(name).to(DType::F32);
      for (size_t k = 0; k < w.data<float>().size(); ++k)
        ASSERT_NEAR(a.data<float>()[k], w.data<float>()[k], 1e-4 * scale) << name;
    }
  }
  EXPECT_TRUE(fs::exists(dir / "out-plus" / "stats.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "out-plus" / ".regmean_plusplus"));
}

TEST(TextStatistics, RegMeanPlusPlusOnLlamaAndGpt2) {
  Json llama = tiny_config("llama");
  llama["num_key_value_heads"] = 2;
  expect_regmean_plus_plus_block_one_is_regmeans(llama, "model.layers.1.");
  const Json gpt2 = {{"model_type", "gpt2"}, {"vocab_size", 61}, {"n_embd", 16},
                     {"n_layer", 2},         {"n_head", 2},      {"n_positions", 24}};
  expect_regmean_plus_plus_block_one_is_regmeans(gpt2, "transformer.h.1.");
}

// `embeddings: base` (MergeBench) keeps the base's embeddings and lm_head, in RegMean and
// RegMean++; the default, mean (RegMean's paper), averages them; other tensors outside the
// linear layers (the final norm) are the mean either way.
TEST(TextStatistics, EmbeddingsBaseKeepsTheBasesEmbeddingsAndHead) {
  TempDir dir;
  write_random_decoder(dir / "base", tiny_config("llama"), DType::F32, 1);
  write_texts(dir / "data.jsonl", kTexts);
  const CheckpointReader base(dir / "base");
  std::map<std::string, std::vector<std::vector<float>>> tuned;  // per tensor, a's and b's values
  for (const char* m : {"a", "b"}) {
    std::mt19937_64 rng(m[0]);
    std::normal_distribution<float> noise(0.0f, 0.05f);
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& name : base.names()) {
      Tensor t = base.tensor(name).to(DType::F32).clone();
      for (auto& x : t.mutable_data<float>()) x += noise(rng);
      tuned[name].emplace_back(t.data<float>().begin(), t.data<float>().end());
      tensors.emplace_back(name, std::move(t));
    }
    fs::create_directories(dir / m);
    fs::copy_file(dir / "base" / "config.json", dir / m / "config.json");
    save_safetensors(dir / m / "model.safetensors", tensors);
    write_char_tokenizer(dir / m);
  }
  const std::string models = "models:\n  - {model: " + (dir / "a").string() +
                             ", data: " + (dir / "data.jsonl").string() + "}\n  - {model: " + (dir / "b").string() +
                             ", data: " + (dir / "data.jsonl").string() + "}\n";
  auto merge = [&](const std::string& name, const std::string& head) {
    write_bytes(dir / (name + ".yaml"), head + models);
    return run_amalgam("merge " + (dir / (name + ".yaml")).string() + " -o " + (dir / name).string() + " -q");
  };
  for (const char* method : {"regmean", "regmean_plusplus"}) {
    const std::string params = "parameters: {examples: 3, batch_size: 2, embeddings: base}\n";
    const auto kept =
        merge(std::string(method) + "-base",
              "merge_method: " + std::string(method) + "\nbase_model: " + (dir / "base").string() + "\n" + params);
    ASSERT_EQ(kept.code, 0) << kept.err;
    const auto mean = merge(std::string(method) + "-mean",
                            "merge_method: " + std::string(method) + "\nparameters: {examples: 3, batch_size: 2}\n");
    ASSERT_EQ(mean.code, 0) << mean.err;
    const CheckpointReader with_base(dir / (std::string(method) + "-base")),
        averaged(dir / (std::string(method) + "-mean"));
    for (const char* name : {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}) {
      const bool from_base = std::string(name) != "model.norm.weight";
      const auto got = with_base.tensor(name).to(DType::F32), avg = averaged.tensor(name).to(DType::F32);
      const auto b = base.tensor(name).to(DType::F32);
      for (size_t k = 0; k < b.data<float>().size(); ++k) {
        const double mean_value = (static_cast<double>(tuned[name][0][k]) + tuned[name][1][k]) / 2;
        if (from_base)
          ASSERT_EQ(got.data<float>()[k], b.data<float>()[k]) << method << " " << name;
        else
          ASSERT_NEAR(got.data<float>()[k], mean_value, 1e-6) << method << " " << name;
        ASSERT_NEAR(avg.data<float>()[k], mean_value, 1e-6) << method << " " << name;
      }
    }
    // The recorded config says it in words.
    EXPECT_NE(read_bytes(dir / (std::string(method) + "-base") / "amalgam_config.yaml").find("embeddings: base"),
              std::string::npos);
    // Without a base there is nothing to keep.
    const auto no_base = merge(std::string(method) + "-none", "merge_method: " + std::string(method) + "\n" + params);
    EXPECT_EQ(no_base.code, 2);
    EXPECT_NE(no_base.err.find("parameters.embeddings: base keeps the base model's embeddings and lm_head; give "
                               "base_model"),
              std::string::npos)
        << no_base.err;
  }
}

TEST(TextStatistics, Gpt2Conv1dSitesMatchTheReference) {
  TempDir dir;
  const Json c = {{"model_type", "gpt2"}, {"vocab_size", 61}, {"n_embd", 32},
                  {"n_layer", 2},         {"n_head", 4},      {"n_positions", 24}};
  const Weights w = write_random_gpt2(dir / "model", c, DType::BF16, 5, /*prefixed=*/true);
  write_char_tokenizer(dir / "model");
  write_texts(dir / "data.jsonl", kTexts);
  const auto r = stats(dir / "model", "--data " + (dir / "data.jsonl").string() + " --examples 3 -o " +
                                          (dir / "s.safetensors").string());
  ASSERT_EQ(r.code, 0) << r.err;
  ReferenceGrams ref;
  for (const auto& t : kTexts) {
    const auto ids = char_ids(t);
    reference_gpt2_logits(c, w, ids, ref.observer());
    ref.rows += ids.size();
  }
  const StatisticsFile s(dir / "s.safetensors");
  EXPECT_EQ(s.rows(), static_cast<int64_t>(ref.rows));
  const char* modules[] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
  for (size_t l = 0; l < 2; ++l)
    for (int site = 0; site < 4; ++site) {
      const std::string p = "transformer.h." + std::to_string(l) + "." + modules[site];
      EXPECT_EQ(s.weight_grams().at(p + ".weight"), p + ".gram");
      EXPECT_LT(relative_error(s.gram(p + ".gram"), ref.sums.at({l, site}), ref.rows), 1e-5) << p;
    }
  EXPECT_EQ(s.gram_shape("transformer.h.0.mlp.c_proj.gram"), (Shape{128, 128}));
}

std::vector<float> gram_values(const StatisticsFile& s, const std::string& name) {
  const Tensor g = s.gram(name).to(DType::F32);
  return {g.data<float>().begin(), g.data<float>().end()};
}

void expect_same_grams(const fs::path& a, const fs::path& b, double tolerance) {
  const StatisticsFile x(a), y(b);
  ASSERT_EQ(x.gram_names(), y.gram_names());
  EXPECT_EQ(x.rows(), y.rows());
  EXPECT_EQ(x.examples(), y.examples());
  EXPECT_EQ(x.weight_grams(), y.weight_grams());
  for (const auto& name : x.gram_names()) {
    const auto u = gram_values(x, name), v = gram_values(y, name);
    double err = 0, scale = 0;
    for (size_t k = 0; k < u.size(); ++k) {
      err = std::max(err, std::abs(static_cast<double>(u[k]) - v[k]));
      scale = std::max(scale, std::abs(static_cast<double>(u[k])));
    }
    EXPECT_LE(err, tolerance * scale) << name;
  }
}

// Packed sequences leave no padding to count, so how the texts are batched moves a Gram by
// float rounding only; threads not at all; and statistics of two halves pooled by --sum equal
// one run over both.
TEST(TextStatistics, BatchingThreadsAndSplitsAgree) {
  TempDir dir;
  const Json c = tiny_config("qwen2");
  write_random_decoder(dir / "model", c, DType::BF16, 8);
  write_char_tokenizer(dir / "model");
  write_texts(dir / "a.jsonl", {"ab cab", "hello world"});
  write_texts(dir / "b.jsonl", {"the quick brown fox", "jumps over"});
  const std::string both =
      "--data " + (dir / "a.jsonl").string() + " --data " + (dir / "b.jsonl").string() + " --examples 4 -o ";
  ASSERT_EQ(stats(dir / "model", both + (dir / "b1.st").string() + " --batch-size 1").code, 0);
  ASSERT_EQ(stats(dir / "model", both + (dir / "b4.st").string() + " --batch-size 4").code, 0);
  expect_same_grams(dir / "b1.st", dir / "b4.st", 1e-6);
  EXPECT_EQ(StatisticsFile(dir / "b4.st").tasks(), (std::vector<std::string>{"a", "b"}));

  ASSERT_EQ(stats(dir / "model", both + (dir / "t1.st").string() + " --threads 1").code, 0);
  ASSERT_EQ(stats(dir / "model", both + (dir / "t3.st").string() + " --threads 3").code, 0);
  EXPECT_EQ(read_bytes(dir / "t1.st"), read_bytes(dir / "t3.st"));
  // Hidden states past half of --max-memory go to a scratch file: the same bits.
  ASSERT_EQ(stats(dir / "model", both + (dir / "spilled.st").string() + " --max-memory 1KB").code, 0);
  EXPECT_EQ(read_bytes(dir / "t1.st"), read_bytes(dir / "spilled.st"));
  const auto noisy = run_amalgam("stats " + (dir / "model").string() + " " + both + (dir / "noisy.st").string() +
                                 " --max-memory 1KB --progress none");
  EXPECT_NE(noisy.err.find("they stay in a scratch file beside the output"), std::string::npos) << noisy.err;

  for (const char* half : {"a", "b"})
    ASSERT_EQ(stats(dir / "model", "--data " + (dir / (std::string(half) + ".jsonl")).string() + " --examples 2 -o " +
                                       (dir / (std::string(half) + ".st")).string())
                  .code,
              0);
  const auto pooled = run_amalgam("stats --sum " + (dir / "a.st").string() + " " + (dir / "b.st").string() + " -o " +
                                  (dir / "sum.st").string() + " -q");
  ASSERT_EQ(pooled.code, 0) << pooled.err;
  expect_same_grams(dir / "sum.st", dir / "b4.st", 1e-6);

  // --max-length 3 keeps <s> and two characters of every record.
  ASSERT_EQ(stats(dir / "model", both + (dir / "cut.st").string() + " --max-length 3").code, 0);
  EXPECT_EQ(StatisticsFile(dir / "cut.st").rows(), 12);
}

TEST(TextStatistics, ErrorsNameTheFileAndLine) {
  TempDir dir;
  write_random_decoder(dir / "model", tiny_config("llama"), DType::F32, 1);
  write_char_tokenizer(dir / "model");
  write_texts(dir / "two.jsonl", {"ab", "cd"});
  auto r =
      stats(dir / "model", "--data " + (dir / "two.jsonl").string() + " --examples 3 -o " + (dir / "s.st").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("two.jsonl: calibration wants 3 records, the file has 2"), std::string::npos) << r.err;
  write_bytes(dir / "bad.jsonl", "{\"text\": \"ab\"}\n{\"text\": \"a1\"}\n");  // '1' has no token
  r = stats(dir / "model", "--data " + (dir / "bad.jsonl").string() + " --examples 2 -o " + (dir / "s.st").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("bad.jsonl: line 2:"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "s.st"));
}

}  // namespace
}  // namespace amalgam::testing
