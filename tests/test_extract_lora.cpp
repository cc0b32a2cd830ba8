// `amalgam extract-lora`: on a Qwen 2 fine-tune whose q_proj difference has known singular
// values, the adapter's layout (PEFT's names and shapes, adapter_config.json), the bias
// difference, full-rank modules, and the adapter applied back: W_base + B A differs from the
// fine-tune by exactly the discarded singular values; rank patterns from --sv-epsilon; the
// unscaled B of --no-distribute-scale has orthonormal columns; errors.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "decoder_fixtures.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace amalgam::testing {
namespace {

const std::string kQ = "model.layers.0.self_attn.q_proj";
const std::vector<double> kSingular = {8, 4, 2, 1, 0.5, 0.25};

// n orthonormal columns of length m (Gram-Schmidt in double on seeded normal vectors).
std::vector<std::vector<double>> orthonormal(size_t m, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<std::vector<double>> q;
  while (q.size() < n) {
    std::vector<double> v(m);
    for (auto& x : v) x = normal(rng);
    for (const auto& u : q) {
      double d = 0;
      for (size_t i = 0; i < m; ++i) d += u[i] * v[i];
      for (size_t i = 0; i < m; ++i) v[i] -= d * u[i];
    }
    double norm = 0;
    for (double x : v) norm += x * x;
    for (auto& x : v) x /= std::sqrt(norm);
    q.push_back(v);
  }
  return q;
}

struct Pair {
  TempDir dir;
  Weights base;
  Weights finetune;
};

// A Qwen 2 base (q, k, v biases) and a fine-tune: q_proj of layer 0 moved by
// U diag(kSingular) V^T, its bias by 0.1 each, every other matrix by small noise, one norm.
void make_pair(Pair& p) {
  p.base = write_random_decoder(p.dir.path() / "base", tiny_config("qwen2"), DType::F32, 11);
  p.finetune = p.base;
  const size_t d = 32;
  const auto u = orthonormal(d, kSingular.size(), 1), v = orthonormal(d, kSingular.size(), 2);
  auto& q = p.finetune.at(kQ + ".weight");
  for (size_t k = 0; k < kSingular.size(); ++k)
    for (size_t r = 0; r < d; ++r)
      for (size_t c = 0; c < d; ++c) q[r * d + c] += kSingular[k] * u[k][r] * v[k][c];
  for (auto& x : p.finetune.at(kQ + ".bias")) x += 0.1;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> noise(0.0, 0.01);
  for (auto& [name, values] : p.finetune)
    if (name != kQ + ".weight" && name.find("proj.weight") != std::string::npos)
      for (auto& x : values) x += noise(rng);
  for (auto& x : p.finetune.at("model.layers.1.input_layernorm.weight")) x += 0.5;
  const CheckpointReader base(p.dir.path() / "base");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& name : base.names()) {
    const auto& values = p.finetune.at(name);
    tensors.emplace_back(name,
                         Tensor::from_f32(base.info(name).shape, std::vector<float>(values.begin(), values.end())));
  }
  fs::create_directories(p.dir.path() / "ft");
  fs::copy_file(p.dir.path() / "base" / "config.json", p.dir.path() / "ft" / "config.json");
  save_safetensors(p.dir.path() / "ft" / "model.safetensors", tensors);
}

std::vector<double> values(const CheckpointReader& r, const std::string& name) {
  const Tensor t = r.tensor(name).to(DType::F32);
  return {t.data<float>().begin(), t.data<float>().end()};
}

// q_proj [32, 32] with a LoRA update applied, in double: W_base + scale B A, from the
// adapter's lora_A [rank, 32] and lora_B [32, rank].
std::vector<double> q_with_update(const Pair& p, const std::vector<double>& A, const std::vector<double>& B,
                                  double scale) {
  const size_t rank = A.size() / 32;
  std::vector<double> w = p.base.at(kQ + ".weight");
  for (size_t r = 0; r < 32; ++r)
    for (size_t c = 0; c < 32; ++c)
      for (size_t k = 0; k < rank; ++k) w[r * 32 + c] += scale * B[r * rank + k] * A[k * 32 + c];
  return w;
}

CliResult extract(const Pair& p, const std::string& args, const std::string& out = "adapter") {
  return run_amalgam("extract-lora " + (p.dir.path() / "ft").string() + " --base " + (p.dir.path() / "base").string() +
                     " -o " + (p.dir.path() / out).string() + " -q " + args);
}

TEST(ExtractLora, PeftLayoutAndTheDiscardedSingularValues) {
  Pair p;
  make_pair(p);
  const auto r = extract(p, "--rank 3");
  ASSERT_EQ(r.code, 0) << r.err;
  const fs::path dir = p.dir.path() / "adapter";
  const CheckpointReader a(dir / "adapter_model.safetensors");
  const std::string pre = "base_model.model." + kQ;
  EXPECT_EQ(a.info(pre + ".lora_A.weight").shape, (Shape{3, 32}));
  EXPECT_EQ(a.info(pre + ".lora_B.weight").shape, (Shape{32, 3}));
  // The bias difference, exactly.
  for (double x : values(a, pre + ".lora_B.bias")) EXPECT_NEAR(x, 0.1, 1e-6);
  // Applied back: W_base + B A; its error is the discarded singular values 1, 0.5, 0.25.
  const auto A = values(a, pre + ".lora_A.weight"), B = values(a, pre + ".lora_B.weight");
  const auto applied = q_with_update(p, A, B, 1.0);
  const auto& w_ft = p.finetune.at(kQ + ".weight");
  double err2 = 0;
  for (size_t k = 0; k < applied.size(); ++k) err2 += (applied[k] - w_ft[k]) * (applied[k] - w_ft[k]);
  EXPECT_NEAR(std::sqrt(err2), std::sqrt(1 + 0.25 + 0.0625), 1e-4);
  // Scale distributed: A A^T = B^T B = diag(8, 4, 2).
  for (size_t i = 0; i < 3; ++i) {
    double aa = 0, bb = 0;
    for (size_t c = 0; c < 32; ++c) aa += A[i * 32 + c] * A[i * 32 + c], bb += B[c * 3 + i] * B[c * 3 + i];
    EXPECT_NEAR(aa, kSingular[i], 1e-4);
    EXPECT_NEAR(bb, kSingular[i], 1e-4);
  }
  // Full rank: the embeddings, lm_head and the norms, as the fine-tune has them.
  EXPECT_EQ(values(a, "base_model.model.model.embed_tokens.weight"),
            values(CheckpointReader(p.dir.path() / "ft"), "model.embed_tokens.weight"));
  EXPECT_TRUE(a.contains("base_model.model.lm_head.weight"));
  EXPECT_EQ(values(a, "base_model.model.model.layers.1.input_layernorm.weight"),
            values(CheckpointReader(p.dir.path() / "ft"), "model.layers.1.input_layernorm.weight"));
  EXPECT_FALSE(a.contains("base_model.model.model.layers.0.self_attn.q_proj.weight"));

  const auto config = read_json_file(dir / "adapter_config.json");
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["r"], 3);
  EXPECT_EQ(config["lora_alpha"], 3);
  EXPECT_EQ(config["fan_in_fan_out"], false);
  EXPECT_EQ(config["target_modules"],
            (Json{"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}));
  EXPECT_EQ(config["modules_to_save"],
            (Json{"embed_tokens", "input_layernorm", "lm_head", "norm", "post_attention_layernorm"}));
  EXPECT_TRUE(config["rank_pattern"].empty());
  EXPECT_TRUE(fs::exists(dir / "README.md"));
}

TEST(ExtractLora, SingularValueThresholdGivesARankPatternAndUnscaledBIsOrthonormal) {
  Pair p;
  make_pair(p);
  const auto r = extract(p, "--rank 4 --sv-epsilon 3 --no-distribute-scale --include-regex q_proj");
  ASSERT_EQ(r.code, 0) << r.err;
  const fs::path dir = p.dir.path() / "adapter";
  const auto config = read_json_file(dir / "adapter_config.json");
  // q_proj of layer 0 keeps 8 and 4; layer 1's (noise of 0.01) keeps none above 3, but one.
  EXPECT_EQ(config["target_modules"], Json{"q_proj"});
  EXPECT_EQ(config["r"], 2);
  EXPECT_EQ(config["rank_pattern"], (Json{{"model.layers.1.self_attn.q_proj", 1}}));
  const CheckpointReader a(dir / "adapter_model.safetensors");
  EXPECT_FALSE(a.contains("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"));
  const auto B = values(a, "base_model.model." + kQ + ".lora_B.weight");
  for (size_t i = 0; i < 2; ++i)
    for (size_t j = 0; j < 2; ++j) {
      double dot = 0;
      for (size_t c = 0; c < 32; ++c) dot += B[c * 2 + i] * B[c * 2 + j];
      EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-5);
    }
}

// mergekit's `model: BASE+ADAPTER`: the adapter applied to its base as a candidate. A linear
// merge of that one candidate is W_base + s B A on every LoRA module (s = lora_alpha / r),
// the fine-tune's own values on the modules saved at full rank and its biases; nothing is
// left beside the output.
TEST(ExtractLora, BasePlusAdapterMergesAsTheAdapterAppliedToItsBase) {
  Pair p;
  make_pair(p);
  ASSERT_EQ(extract(p, "--rank 3").code, 0);
  const fs::path adapter = p.dir.path() / "adapter";
  // A second copy of the adapter with lora_alpha 6: the update counts twice.
  fs::create_directories(p.dir.path() / "doubled");
  fs::copy_file(adapter / "adapter_model.safetensors", p.dir.path() / "doubled" / "adapter_model.safetensors");
  Json config = read_json_file(adapter / "adapter_config.json");
  config["lora_alpha"] = 6;
  write_bytes(p.dir.path() / "doubled" / "adapter_config.json", config.dump());
  for (const auto& [name, scale] : {std::pair{"adapter", 1.0}, {"doubled", 2.0}}) {
    const std::string yaml =
        "merge_method: linear\ndtype: float32\nmodels:\n  - model: " + (p.dir.path() / "base").string() + "+" +
        (p.dir.path() / name).string() + "\n    parameters: {weight: 1.0}\n";
    write_bytes(p.dir.path() / "m.yaml", yaml);
    const fs::path out = p.dir.path() / ("merged-" + std::string(name));
    const auto r = run_amalgam("merge " + (p.dir.path() / "m.yaml").string() + " -o " + out.string() + " -q");
    ASSERT_EQ(r.code, 0) << r.err;
    const CheckpointReader merged(out), a(adapter / "adapter_model.safetensors"), ft(p.dir.path() / "ft");
    const auto A = values(a, "base_model.model." + kQ + ".lora_A.weight");
    const auto B = values(a, "base_model.model." + kQ + ".lora_B.weight");
    const auto got = values(merged, kQ + ".weight"), want = q_with_update(p, A, B, scale);
    double err = 0;
    for (size_t k = 0; k < want.size(); ++k) err = std::max(err, std::abs(want[k] - got[k]));
    EXPECT_LT(err, 1e-5) << name;
    const auto bias = values(merged, kQ + ".bias"), base_bias = p.base.at(kQ + ".bias");
    for (size_t i = 0; i < bias.size(); ++i) EXPECT_NEAR(bias[i], base_bias[i] + scale * 0.1, 1e-6) << name;
    EXPECT_EQ(values(merged, "model.layers.1.input_layernorm.weight"),
              values(ft, "model.layers.1.input_layernorm.weight"));
    EXPECT_EQ(values(merged, "model.embed_tokens.weight"), values(ft, "model.embed_tokens.weight"));
    std::string recorded(1, '+');  // appended piecewise: GCC 12 warns falsely on "+" + string
    recorded.append(fs::absolute(p.dir.path() / name).string());
    EXPECT_NE(read_bytes(out / "amalgam_config.yaml").find(recorded), std::string::npos);
  }
  for (const auto& entry : fs::directory_iterator(p.dir.path()))
    EXPECT_EQ(entry.path().filename().string().find(".lora-"), std::string::npos) << entry.path();
  // An adapter directory without its config is an input error naming the file.
  fs::create_directories(p.dir.path() / "broken");
  write_bytes(p.dir.path() / "m.yaml", "merge_method: linear\nmodels:\n  - model: " + (p.dir.path() / "base").string() +
                                           "+" + (p.dir.path() / "broken").string() + "\n");
  const auto r =
      run_amalgam("merge " + (p.dir.path() / "m.yaml").string() + " -o " + (p.dir.path() / "never").string() + " -q");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("adapter_config.json: missing"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(p.dir.path() / "never"));
}

// The base may carry an adapter too: task arithmetic from base' = BASE+ADAPTER at weight 0.5
// is base' + 0.5 (ft - base').
TEST(ExtractLora, BaseModelPlusAdapterIsTheTaskVectorsOrigin) {
  Pair p;
  make_pair(p);
  ASSERT_EQ(extract(p, "--rank 2").code, 0);
  const fs::path adapter = p.dir.path() / "adapter";
  write_bytes(p.dir.path() / "t.yaml",
              "merge_method: task_arithmetic\ndtype: float32\nbase_model: " + (p.dir.path() / "base").string() + "+" +
                  adapter.string() + "\nmodels:\n  - model: " + (p.dir.path() / "ft").string() +
                  "\n    parameters: {weight: 0.5}\n");
  const auto r =
      run_amalgam("merge " + (p.dir.path() / "t.yaml").string() + " -o " + (p.dir.path() / "out").string() + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const CheckpointReader merged(p.dir.path() / "out"), a(adapter / "adapter_model.safetensors");
  const auto A = values(a, "base_model.model." + kQ + ".lora_A.weight");
  const auto B = values(a, "base_model.model." + kQ + ".lora_B.weight");
  const auto got = values(merged, kQ + ".weight"), base = q_with_update(p, A, B, 1.0);
  const auto& w_ft = p.finetune.at(kQ + ".weight");
  double err = 0;
  for (size_t k = 0; k < base.size(); ++k) err = std::max(err, std::abs(base[k] + 0.5 * (w_ft[k] - base[k]) - got[k]));
  EXPECT_LT(err, 1e-5);
}

TEST(ExtractLora, AMismatchedBaseIsAnInputErrorNamingTheTensor) {
  Pair p;
  make_pair(p);
  Json c = tiny_config("qwen2");
  c["intermediate_size"] = 48;
  write_random_decoder(p.dir.path() / "other", c, DType::F32, 5);
  const auto r = run_amalgam("extract-lora " + (p.dir.path() / "ft").string() + " --base " +
                             (p.dir.path() / "other").string() + " -o " + (p.dir.path() / "bad").string() + " -q");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("mlp.gate_proj.weight': has shape [40, 32], the base has [48, 32]"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(p.dir.path() / "bad"));
  // An existing output is kept without --force.
  fs::create_directories(p.dir.path() / "mine");
  write_bytes(p.dir.path() / "mine" / "notes.txt", "keep");
  EXPECT_EQ(extract(p, "--rank 2", "mine").code, 2);
  EXPECT_EQ(read_bytes(p.dir.path() / "mine" / "notes.txt"), "keep");
}

}  // namespace
}  // namespace amalgam::testing
