// Tests of the merge-config parser. Expected values are worked out by hand from mergekit's
// interpolation rule (scaled = t*(len-1), i0 = int(scaled), frac = scaled - i0,
// value = (1-frac)*g[i0] + frac*g[i1]); the working is in the comments.
#include <gtest/gtest.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "merge/config.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using amalgam::testing::TempDir;
using amalgam::testing::write_bytes;

MergeConfig parse(const std::string& yaml) {
  return parse_merge_config(yaml, "merge.yaml");
}

double eval(const ParamSetting& s, std::string_view tensor, double t) {
  const std::optional<double> v = s.evaluate(tensor, t);
  if (!v) ADD_FAILURE() << "no value for " << tensor << " at t=" << t;
  return v.value_or(-999);
}

// The message of the InputError that parsing `yaml` throws, or a failure if it parses.
std::string parse_error(const std::string& yaml) {
  try {
    parse(yaml);
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not an InputError: ") + e.what();
  }
  return "parsed without error";
}

#define EXPECT_PARSE_ERROR(yaml, substring) EXPECT_PRED_FORMAT2(::testing::IsSubstring, substring, parse_error(yaml))

// The classic mergekit SLERP example, with `slices` replaced by `models` (amalgam merges whole
// models). The gradients are five points, so scaled = 4t.
constexpr const char* kSlerpYaml = R"(
merge_method: slerp
base_model: OpenPipe/mistral-ft-optimized-1218
models:
  - model: OpenPipe/mistral-ft-optimized-1218
  - model: mlabonne/NeuralHermes-2.5-Mistral-7B
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
)";

TEST(ConfigMergekit, SlerpExampleParses) {
  const MergeConfig c = parse(kSlerpYaml);
  EXPECT_EQ(c.source, fs::path("merge.yaml"));
  EXPECT_EQ(c.merge_method, "slerp");
  EXPECT_EQ(c.base_model, "OpenPipe/mistral-ft-optimized-1218");
  // Hub names do not exist on disk, so the paths stay as written.
  EXPECT_EQ(c.base_path, fs::path("OpenPipe/mistral-ft-optimized-1218"));
  ASSERT_EQ(c.models.size(), 2u);
  EXPECT_EQ(c.models[1].model, "mlabonne/NeuralHermes-2.5-Mistral-7B");
  EXPECT_EQ(c.models[1].path, fs::path("mlabonne/NeuralHermes-2.5-Mistral-7B"));
  EXPECT_TRUE(c.models[0].parameters.empty());
  EXPECT_TRUE(c.models[0].data.empty());
  EXPECT_EQ(c.dtype, DType::BF16);
  EXPECT_FALSE(c.out_dtype);
  EXPECT_FALSE(c.seed);

  const ParamSetting expected = ParamSetting::conditional({
      {"self_attn", ParamSetting::gradient({0, 0.5, 0.3, 0.7, 1})},
      {"mlp", ParamSetting::gradient({1, 0.5, 0.7, 0.3, 0})},
      {std::nullopt, ParamSetting::scalar(0.5)},
  });
  ASSERT_EQ(c.parameters.count("t"), 1u);
  EXPECT_EQ(c.parameters.at("t"), expected);
  EXPECT_FALSE(c.parameters.at("t").is_scalar());
}

TEST(ConfigMergekit, SlerpExampleEvaluates) {
  const MergeConfig c = parse(kSlerpYaml);
  const ParamSetting& t = c.parameters.at("t");
  const std::string attn = "model.layers.7.self_attn.q_proj.weight";
  const std::string mlp = "model.layers.31.mlp.down_proj.weight";
  // Attention, g = [0, 0.5, 0.3, 0.7, 1]:
  EXPECT_EQ(eval(t, attn, 0.0), 0.0);             // scaled 0: g[0]
  EXPECT_EQ(eval(t, attn, 0.25), 0.5);            // scaled 1: g[1]
  EXPECT_EQ(eval(t, attn, 0.5), 0.3);             // scaled 2: g[2]
  EXPECT_NEAR(eval(t, attn, 0.375), 0.4, 1e-15);  // scaled 1.5: 0.5*0.5 + 0.5*0.3
  EXPECT_NEAR(eval(t, attn, 0.8), 0.76, 1e-12);   // scaled 3.2: 0.8*0.7 + 0.2*1
  EXPECT_EQ(eval(t, attn, 1.0), 1.0);             // scaled 4: i0 = i1 = 4
  // MLP, g = [1, 0.5, 0.7, 0.3, 0]:
  EXPECT_EQ(eval(t, mlp, 0.0), 1.0);
  EXPECT_EQ(eval(t, mlp, 0.25), 0.5);             // scaled 1: g[1]
  EXPECT_NEAR(eval(t, mlp, 0.625), 0.5, 1e-15);   // scaled 2.5: 0.5*0.7 + 0.5*0.3
  EXPECT_NEAR(eval(t, mlp, 0.875), 0.15, 1e-15);  // scaled 3.5: 0.5*0.3 + 0.5*0
  EXPECT_EQ(eval(t, mlp, 1.0), 0.0);
  // Everything else takes the unfiltered fallback, whatever t.
  EXPECT_EQ(eval(t, "model.embed_tokens.weight", 0.0), 0.5);
  EXPECT_EQ(eval(t, "model.layers.3.input_layernorm.weight", 0.9), 0.5);
  // Both filters match: the first entry wins (self_attn, scaled 2: g[2] = 0.3).
  EXPECT_EQ(eval(t, "layers.0.mlp.self_attn_gate", 0.5), 0.3);
  // No per-model setting, so resolution falls through to the global one.
  EXPECT_EQ(resolve_param(c, "t", 1, attn, 0.5), 0.3);
  EXPECT_EQ(resolve_param(c, "t", std::nullopt, mlp, 0.25), 0.5);
  EXPECT_EQ(resolve_param(c, "weight", 0, attn, 0.5), std::nullopt);
}

// mergekit's TIES example from its README: per-model gradients and conditionals, global flags.
constexpr const char* kTiesYaml = R"(
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
)";

TEST(ConfigMergekit, TiesExample) {
  const MergeConfig c = parse(kTiesYaml);
  EXPECT_EQ(c.merge_method, "ties");
  EXPECT_EQ(c.dtype, DType::F16);
  ASSERT_EQ(c.models.size(), 3u);
  const std::string attn = "model.layers.5.self_attn.o_proj.weight";
  const std::string mlp = "model.layers.5.mlp.up_proj.weight";

  // Model 0 density, g = [1, 0.7, 0.1], scaled = 2t.
  EXPECT_EQ(resolve_param(c, "density", 0, attn, 0.0), 1.0);
  EXPECT_NEAR(*resolve_param(c, "density", 0, attn, 0.25), 0.85, 1e-15);  // scaled 0.5: 0.5*1 + 0.5*0.7
  EXPECT_EQ(resolve_param(c, "density", 0, attn, 0.5), 0.7);              // scaled 1: g[1]
  EXPECT_NEAR(*resolve_param(c, "density", 0, attn, 0.75), 0.4, 1e-15);   // scaled 1.5: 0.5*0.7 + 0.5*0.1
  EXPECT_EQ(resolve_param(c, "density", 0, attn, 1.0), 0.1);
  EXPECT_EQ(resolve_param(c, "weight", 0, mlp, 0.3), 1.0);
  EXPECT_TRUE(c.models[0].parameters.at("weight").is_scalar());

  // Model 1 weight, g = [0, 0.3, 0.7, 1], scaled = 3t.
  EXPECT_EQ(resolve_param(c, "weight", 1, attn, 0.0), 0.0);
  EXPECT_NEAR(*resolve_param(c, "weight", 1, attn, 0.25), 0.225, 1e-15);  // scaled 0.75: 0.25*0 + 0.75*0.3
  EXPECT_NEAR(*resolve_param(c, "weight", 1, attn, 0.5), 0.5, 1e-15);     // scaled 1.5: 0.5*0.3 + 0.5*0.7
  EXPECT_EQ(resolve_param(c, "weight", 1, attn, 1.0), 1.0);
  EXPECT_EQ(resolve_param(c, "density", 1, attn, 0.9), 0.5);

  // Model 2 weight: 0.5 on MLP tensors, 0 elsewhere.
  EXPECT_EQ(resolve_param(c, "weight", 2, mlp, 0.5), 0.5);
  EXPECT_EQ(resolve_param(c, "weight", 2, attn, 0.5), 0.0);
  EXPECT_EQ(resolve_param(c, "density", 2, mlp, 0.5), 0.33);

  // Global bools read as 1, for every model and for none.
  EXPECT_EQ(resolve_param(c, "normalize", 0, attn, 0.5), 1.0);
  EXPECT_EQ(resolve_param(c, "int8_mask", 2, mlp, 0.0), 1.0);
  EXPECT_EQ(resolve_param(c, "normalize", std::nullopt, attn, 0.0), 1.0);
  EXPECT_EQ(resolve_param(c, "lambda", 1, attn, 0.0), std::nullopt);
}

TEST(ConfigPrecedence, ModelThenGlobalWithFallThrough) {
  const MergeConfig c = parse(R"(
merge_method: ties
models:
  - model: a
    parameters:
      weight: [{filter: mlp, value: 2}]
      density: 0.25
  - model: b
parameters:
  weight: [{filter: self_attn, value: 3}]
  density: 0.75
)");
  // Model a's own entry wins where it matches...
  EXPECT_EQ(resolve_param(c, "weight", 0, "layers.0.mlp.gate_proj", 0.5), 2.0);
  // ...and where it matches nothing, the global setting is tried.
  EXPECT_EQ(resolve_param(c, "weight", 0, "layers.0.self_attn.q_proj", 0.5), 3.0);
  // Neither level matches: no value at all.
  EXPECT_EQ(resolve_param(c, "weight", 0, "embed_tokens", 0.5), std::nullopt);
  // Model b has no own setting.
  EXPECT_EQ(resolve_param(c, "weight", 1, "layers.0.mlp.gate_proj", 0.5), std::nullopt);
  EXPECT_EQ(resolve_param(c, "weight", 1, "layers.0.self_attn.q_proj", 0.5), 3.0);
  // No model: only the global level.
  EXPECT_EQ(resolve_param(c, "weight", std::nullopt, "layers.0.mlp.gate_proj", 0.5), std::nullopt);
  // A per-model scalar overrides the global scalar.
  EXPECT_EQ(resolve_param(c, "density", 0, "x", 0.0), 0.25);
  EXPECT_EQ(resolve_param(c, "density", 1, "x", 0.0), 0.75);
  EXPECT_THROW(resolve_param(c, "density", 2, "x", 0.0), std::out_of_range);
}

TEST(ConfigSettings, FilterRules) {
  const ParamSetting star = ParamSetting::conditional({{"*", ParamSetting::scalar(4)}});
  EXPECT_EQ(star.evaluate("anything", 0.5), 4.0);
  EXPECT_EQ(star.evaluate("", 0.5), 4.0);
  // mergekit's `tensor_name and filter in tensor_name`: an empty name matches no real filter,
  // and an empty filter is a substring of every non-empty name.
  const ParamSetting mlp = ParamSetting::conditional({{"mlp", ParamSetting::scalar(1)}});
  EXPECT_EQ(mlp.evaluate("", 0.5), std::nullopt);
  EXPECT_EQ(mlp.evaluate("layers.1.mlp", 0.5), 1.0);
  EXPECT_EQ(mlp.evaluate("layers.1.MLP", 0.5), std::nullopt);  // case-sensitive
  const ParamSetting empty_filter = ParamSetting::conditional({{"", ParamSetting::scalar(2)}});
  EXPECT_EQ(empty_filter.evaluate("x", 0.5), 2.0);
  EXPECT_EQ(empty_filter.evaluate("", 0.5), std::nullopt);
  EXPECT_EQ(ParamSetting::conditional({}).evaluate("x", 0.5), std::nullopt);
}

TEST(ConfigSettings, GradientEdges) {
  // One point: constant.
  EXPECT_EQ(ParamSetting::gradient({0.7}).evaluate("x", 0.0), 0.7);
  EXPECT_EQ(ParamSetting::gradient({0.7}).evaluate("x", 1.0), 0.7);
  // Two points, scaled = t = 0.75: (1-0.75)*2 + 0.75*4 = 0.5 + 3 = 3.5.
  EXPECT_EQ(ParamSetting::gradient({2, 4}).evaluate("x", 0.75), 3.5);
  // t outside [0, 1] is clamped rather than indexing out of range.
  EXPECT_EQ(ParamSetting::gradient({2, 4}).evaluate("x", -1.0), 2.0);
  EXPECT_EQ(ParamSetting::gradient({2, 4}).evaluate("x", 7.0), 4.0);
  EXPECT_TRUE(ParamSetting::scalar(1).is_scalar());
  EXPECT_FALSE(ParamSetting::gradient({1}).is_scalar());
  EXPECT_NE(ParamSetting::scalar(1), ParamSetting::gradient({1}));
}

TEST(ConfigSettings, ShapesBeyondTheExamples) {
  const MergeConfig c = parse(R"(
merge_method: linear
models: [a, {model: b}]
parameters:
  single: {value: 0.25}
  single_filtered: {filter: mlp, value: [0, 1]}
  nested:
    - filter: self_attn
      value:
        - filter: q_proj
          value: 1
        - value: [0, 10]
    - filter: "*"
      value: 9
  yes_word: yes
  no_word: no
  false_word: false
  bool_gradient: [true, false]
  null_filter: [{filter: ~, value: 6}]
  negative: -0.5
  exponent: 1e-3
)");
  // A bare string in models is shorthand for {model: ...}.
  ASSERT_EQ(c.models.size(), 2u);
  EXPECT_EQ(c.models[0].model, "a");
  EXPECT_EQ(c.models[1].model, "b");
  const ParamMap& p = c.parameters;
  EXPECT_EQ(p.at("single"), ParamSetting::conditional({{std::nullopt, ParamSetting::scalar(0.25)}}));
  EXPECT_EQ(eval(p.at("single"), "x", 0.3), 0.25);
  EXPECT_EQ(eval(p.at("single_filtered"), "mlp.up", 0.5), 0.5);  // [0, 1] at scaled 0.5
  EXPECT_EQ(p.at("single_filtered").evaluate("attn", 0.5), std::nullopt);
  EXPECT_EQ(eval(p.at("nested"), "self_attn.q_proj", 0.5), 1.0);
  EXPECT_EQ(eval(p.at("nested"), "self_attn.k_proj", 0.5), 5.0);  // [0, 10] at scaled 0.5
  EXPECT_EQ(eval(p.at("nested"), "mlp.up_proj", 0.5), 9.0);
  EXPECT_EQ(p.at("yes_word"), ParamSetting::scalar(1));
  EXPECT_EQ(p.at("no_word"), ParamSetting::scalar(0));
  EXPECT_EQ(p.at("false_word"), ParamSetting::scalar(0));
  EXPECT_EQ(p.at("bool_gradient"), ParamSetting::gradient({1, 0}));
  EXPECT_EQ(eval(p.at("bool_gradient"), "x", 0.5), 0.5);
  EXPECT_EQ(p.at("null_filter"), ParamSetting::conditional({{std::nullopt, ParamSetting::scalar(6)}}));
  EXPECT_EQ(p.at("negative"), ParamSetting::scalar(-0.5));
  EXPECT_EQ(p.at("exponent"), ParamSetting::scalar(0.001));
}

TEST(ConfigTopLevel, OptionalKeys) {
  const MergeConfig c = parse(R"(
merge_method: task_arithmetic
models:
  - model: a
    data: calib.jsonl
    stats: a.stats
dtype: torch.float32
out_dtype: F8_E4M3
seed: 18446744073709551615
tokenizer_source: base
chat_template: ~
)");
  EXPECT_EQ(c.dtype, DType::F32);
  EXPECT_EQ(c.out_dtype, DType::F8_E4M3);
  EXPECT_EQ(c.seed, 18446744073709551615ull);
  EXPECT_EQ(c.models[0].data, std::vector<fs::path>{fs::path("calib.jsonl")});
  EXPECT_EQ(c.models[0].stats, fs::path("a.stats"));
  EXPECT_FALSE(c.base_model);
  EXPECT_FALSE(c.base_path);
  // Null optional keys count as absent, as in mergekit.
  const MergeConfig n = parse("merge_method: linear\nmodels: [a]\nbase_model:\nparameters: ~\nseed: null\n");
  EXPECT_FALSE(n.base_model);
  EXPECT_TRUE(n.parameters.empty());
  EXPECT_FALSE(n.seed);
}

TEST(ConfigDtype, Names) {
  EXPECT_EQ(parse_dtype_name("float32"), DType::F32);
  EXPECT_EQ(parse_dtype_name("torch.float"), DType::F32);
  EXPECT_EQ(parse_dtype_name("fp32"), DType::F32);
  EXPECT_EQ(parse_dtype_name("float16"), DType::F16);
  EXPECT_EQ(parse_dtype_name("torch.half"), DType::F16);
  EXPECT_EQ(parse_dtype_name("fp16"), DType::F16);
  EXPECT_EQ(parse_dtype_name("bfloat16"), DType::BF16);
  EXPECT_EQ(parse_dtype_name("torch.bf16"), DType::BF16);
  EXPECT_EQ(parse_dtype_name("float64"), DType::F64);
  EXPECT_EQ(parse_dtype_name("torch.double"), DType::F64);
  EXPECT_EQ(parse_dtype_name("BF16"), DType::BF16);
  EXPECT_EQ(parse_dtype_name("F8_E5M2"), DType::F8_E5M2);
  EXPECT_EQ(parse_dtype_name("I8"), DType::I8);
  EXPECT_EQ(parse_dtype_name("Float32"), std::nullopt);
  EXPECT_EQ(parse_dtype_name("torch."), std::nullopt);
  EXPECT_EQ(parse_dtype_name("torch.F32"), std::nullopt);
  EXPECT_EQ(parse_dtype_name("float8"), std::nullopt);
  EXPECT_EQ(parse_dtype_name(""), std::nullopt);
}

TEST(ConfigErrors, TopLevel) {
  EXPECT_PARSE_ERROR("", "merge.yaml: expected a map with merge_method and models");
  EXPECT_PARSE_ERROR("[1, 2]", "expected a map with merge_method and models");
  EXPECT_PARSE_ERROR("models: [a]\n", "merge.yaml: merge_method: required");
  EXPECT_PARSE_ERROR("merge_method: [a]\nmodels: [a]\n", "merge_method: expected a string");
  EXPECT_PARSE_ERROR("merge_method: ''\nmodels: [a]\n", "merge_method: must not be empty");
  EXPECT_PARSE_ERROR("merge_method: linear\n", "models: required");
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: []\n", "models: expected a non-empty list");
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: {model: a}\n", "models: expected a non-empty list");
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [a]\nfoo: 1\n", "merge.yaml: unknown key 'foo'");
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [a]\nfoo: ~\n", "unknown key 'foo'");
  EXPECT_PARSE_ERROR("merge_method: linear\nmerge_method: ties\nmodels: [a]\n", "duplicate key 'merge_method'");
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [a]\nparameters: [1]\n", "parameters: expected a map");
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [a]\nparameters: {w: 1, w: 2}\n", "parameters: duplicate key 'w'");
}

TEST(ConfigErrors, UnsupportedMergekitKeys) {
  EXPECT_PARSE_ERROR("merge_method: linear\nmodules: x\n",
                     "merge.yaml: modules: expected a non-empty map of module names, got 'x'");
  EXPECT_PARSE_ERROR("merge_method: linear\nmodules: {text_decoder: {models: [a], merge_method: ties}}\n",
                     "modules.text_decoder: unknown key 'merge_method'");
  // The tokenizer options are read (merge/vocabulary.h); malformed ones name the key.
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [a]\ntokenizer: x\n",
                     "merge.yaml: tokenizer: expected a map with source, tokens or pad_to_multiple_of, got 'x'");
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [a]\ntokenizer_source: {model: b}\n",
                     "tokenizer_source: expected a string");
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [a+b+c]\n",
                     "models[0]: 'a+b+c': one '+' joins a base and its LoRA adapter, this has more");
  EXPECT_PARSE_ERROR("merge_method: linear\nbase_model: x+y+z\nmodels: [a]\n",
                     "base_model: 'x+y+z': one '+' joins a base and its LoRA adapter, this has more");
}

TEST(ConfigTokenizer, SectionParsesLinksModelsAndRoundTrips) {
  const MergeConfig c = parse(R"(
merge_method: linear
base_model: a
models: [a, b]
tokenizer_source: base
tokenizer:
  pad_to_multiple_of: 64
  tokens:
    "<|im_start|>": {source: b, force: true}
    "<|im_end|>": {source: {kind: model_token, model: a, token: "</s>"}}
    "<pad>": {source: {kind: zero}}
    "true": {source: {kind: model_token, model: b, token_id: 7}}
)");
  ASSERT_TRUE(c.tokenizer);
  auto check = [](const MergeConfig& m) {
    const TokenizerSettings& t = *m.tokenizer;
    EXPECT_EQ(t.source, "union");  // the section's default, which wins over tokenizer_source
    EXPECT_EQ(t.pad_to_multiple_of, 64);
    ASSERT_EQ(t.tokens.size(), 4U);
    EXPECT_EQ(t.tokens[0].first, "<|im_start|>");
    EXPECT_EQ(t.tokens[0].second.source, TokenEmbedding::Source::Model);
    EXPECT_EQ(t.tokens[0].second.candidate, 1U);  // b, models[1]
    EXPECT_TRUE(t.tokens[0].second.force);
    EXPECT_EQ(t.tokens[1].second.source, TokenEmbedding::Source::ModelToken);
    EXPECT_EQ(t.tokens[1].second.candidate, std::nullopt);  // a, the base_model (models[0] too)
    EXPECT_EQ(t.tokens[1].second.token, "</s>");
    EXPECT_EQ(t.tokens[2].second.source, TokenEmbedding::Source::Zero);
    EXPECT_EQ(t.tokens[3].first, "true");
    EXPECT_EQ(t.tokens[3].second.token_id, 7);
    EXPECT_FALSE(t.tokens[3].second.force);
  };
  check(c);
  const MergeConfig again = parse(merge_config_to_yaml(c));
  ASSERT_TRUE(again.tokenizer);
  check(again);
  EXPECT_PARSE_ERROR(
      "merge_method: linear\nmodels: [a]\ntokenizer: {tokens: {x: {source: {kind: model_token, model: a}}}}\n",
      "tokenizer.tokens.x.source: give one of token_id and token");
}

// mergekit's own examples/orcamini-platy-44layer.yml and examples/gradient-slerp.yml.
TEST(ConfigSlices, MergekitExamplesParse) {
  const MergeConfig franken = parse(R"(
slices:
  - sources:
    - model: psmathur/orca_mini_v3_13b
      layer_range: [0, 24]
  - sources:
    - model: garage-bAInd/Platypus2-13B
      layer_range: [20, 40]
merge_method: passthrough
dtype: float16
)");
  ASSERT_EQ(franken.slices.size(), 2U);
  ASSERT_EQ(franken.models.size(), 2U);  // the distinct models the slices read
  EXPECT_EQ(franken.models[0].model, "psmathur/orca_mini_v3_13b");
  EXPECT_EQ(franken.models[1].model, "garage-bAInd/Platypus2-13B");
  EXPECT_EQ(franken.slices[1].sources[0].candidate, 1U);
  EXPECT_EQ(franken.slices[1].sources[0].first, 20);
  EXPECT_EQ(franken.slices[1].sources[0].end, 40);

  const MergeConfig slerp = parse(R"(
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - value: 0.5
dtype: float16
)");
  // The base stays apart, as with models: the source that is the base_model has no entry.
  ASSERT_EQ(slerp.models.size(), 1U);
  EXPECT_EQ(slerp.slices[0].sources[0].candidate, std::nullopt);
  EXPECT_EQ(slerp.slices[0].sources[1].candidate, 0U);
}

TEST(ConfigSlices, SettingsResolveSourceThenSliceThenGlobal) {
  const MergeConfig c = parse(R"(
merge_method: linear
slices:
  - sources:
      - {model: a, layer_range: [0, 2], parameters: {weight: [{filter: mlp, value: 5}]}}
      - {model: b, layer_range: [2, 4]}
    parameters: {weight: [1, 3]}
  - sources:
      - {model: a, layer_range: [2, 3]}
parameters: {weight: 7, normalize: 0}
)");
  const ParamOwner a0{0, 0, 0}, b0{1, 0, 1}, a1{0, 1, 0};
  EXPECT_EQ(resolve_param(c, "weight", a0, "model.layers.0.mlp.up_proj.weight", 0.0), 5.0);  // the source's own
  EXPECT_EQ(resolve_param(c, "weight", a0, "model.layers.0.self_attn.q_proj.weight", 0.5),
            2.0);                                                                            // no match: the slice's
  EXPECT_EQ(resolve_param(c, "weight", b0, "model.layers.2.mlp.up_proj.weight", 1.0), 3.0);  // the slice's gradient
  EXPECT_EQ(resolve_param(c, "weight", a1, "model.layers.2.mlp.up_proj.weight", 1.0), 7.0);  // the global one
  EXPECT_EQ(resolve_param(c, "normalize", ParamOwner{std::nullopt, 0, std::nullopt}, "x", 0.0), 0.0);
}

TEST(ConfigSlices, RoundTripsThroughTheRecordedConfig) {
  const MergeConfig c = parse(R"(
merge_method: slerp
base_model: a
slices:
  - sources:
      - {model: a, layer_range: [0, 2]}
      - {model: b, layer_range: [1, 3], parameters: {t: 0.25}}
    base_model: b
    residual_weight: 0.5
    parameters: {t: [0, 1]}
  - sources:
      - {model: c, layer_range: [3, 4]}
)");
  EXPECT_EQ(c.slices[0].base_source, 1U);
  EXPECT_EQ(c.slices[0].residual_weight, 0.5);
  const std::string yaml = merge_config_to_yaml(c);
  const MergeConfig back = parse(yaml);
  ASSERT_EQ(back.slices.size(), 2U);
  EXPECT_EQ(back.models.size(), 2U);  // b, c
  for (size_t s = 0; s < 2; ++s)
    for (size_t j = 0; j < c.slices[s].sources.size(); ++j) {
      const SliceSource &x = c.slices[s].sources[j], &y = back.slices[s].sources[j];
      EXPECT_EQ(x.model, y.model);
      EXPECT_EQ(x.candidate, y.candidate);
      EXPECT_EQ(x.first, y.first);
      EXPECT_EQ(x.end, y.end);
      EXPECT_EQ(x.parameters, y.parameters);
    }
  EXPECT_EQ(back.slices[0].base_source, 1U);
  EXPECT_EQ(back.slices[0].parameters, c.slices[0].parameters);
  EXPECT_EQ(merge_config_to_yaml(back), yaml);
}

TEST(ConfigSlices, Errors) {
  const std::string head = "merge_method: passthrough\n";
  EXPECT_PARSE_ERROR(head + "models: [a]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n",
                     "give one of models, slices and modules (as mergekit), not models and slices");
  EXPECT_PARSE_ERROR(
      head + "modules: {default: {models: [a]}}\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n",
      "give one of models, slices and modules (as mergekit), not modules and slices");
  EXPECT_PARSE_ERROR(head + "slices: []\n", "slices: expected a non-empty list");
  EXPECT_PARSE_ERROR(head + "slices: [{sources: [{model: a}]}]\n", "slices[0].sources[0]: missing 'layer_range'");
  EXPECT_PARSE_ERROR(head + "slices: [{sources: [{layer_range: [0, 1]}]}]\n", "slices[0].sources[0]: missing 'model'");
  for (const char* range : {"[2, 2]", "[-1, 2]", "[0.5, 2]", "[3, 1]"})
    EXPECT_PARSE_ERROR(head + "slices: [{sources: [{model: a, layer_range: " + range + "}]}]\n",
                       "slices[0].sources[0].layer_range: expected whole numbers 0 <= first < end");
  EXPECT_PARSE_ERROR(head + "slices: [{sources: [{model: a, layer_range: [0]}]}]\n",
                     "slices[0].sources[0].layer_range: expected [first, end]");
  EXPECT_PARSE_ERROR(head + "slices: [{sources: [{model: a, layer_range: [0, 1]}], base_model: b}]\n",
                     "slices[0].base_model: 'b' is not one of the slice's sources");
  EXPECT_PARSE_ERROR(head + "slices: [{sources: [{model: a, layer_range: [0, 1]}], merge_method: ties}]\n",
                     "slices[0]: unknown key 'merge_method'");
  EXPECT_PARSE_ERROR(head + "slices: [{sources: [{model: a, layer_range: [0, 1], weight: 1}]}]\n",
                     "slices[0].sources[0]: unknown key 'weight'");
}

TEST(ConfigWords, EmbeddingsIsAWordKeptAsItsIndexAndWrittenBack) {
  const MergeConfig c = parse("merge_method: regmean\nmodels: [a]\nparameters: {embeddings: base}\n");
  EXPECT_EQ(resolve_param(c, "embeddings", std::nullopt, "x", 0.0), 1.0);
  EXPECT_NE(merge_config_to_yaml(c).find("embeddings: base"), std::string::npos) << merge_config_to_yaml(c);
  EXPECT_EQ(parse(merge_config_to_yaml(c)).parameters, c.parameters);
  EXPECT_EQ(resolve_param(parse("merge_method: regmean\nmodels: [a]\nparameters: {embeddings: mean}\n"), "embeddings",
                          std::nullopt, "x", 0.0),
            0.0);
  EXPECT_PARSE_ERROR("merge_method: regmean\nmodels: [a]\nparameters: {embeddings: 1}\n",
                     "parameters.embeddings: expected one of mean, base, got '1'");
  EXPECT_PARSE_ERROR("merge_method: regmean\nmodels: [a]\nparameters: {embeddings: [mean]}\n",
                     "parameters.embeddings: expected one of mean, base, got a list");
}

TEST(ConfigMergekit, ModelPlusAdapterNamesABaseAndItsLoraAdapter) {
  const MergeConfig c = parse("merge_method: linear\nmodels: [a+lora, {model: b+adapters/x}, c]\n");
  ASSERT_TRUE(c.models[0].adapter);
  EXPECT_EQ(c.models[0].path, fs::path("a"));
  EXPECT_EQ(*c.models[0].adapter, fs::path("lora"));
  EXPECT_EQ(c.models[1].path, fs::path("b"));
  EXPECT_EQ(*c.models[1].adapter, fs::path("adapters/x"));
  EXPECT_FALSE(c.models[2].adapter);
  EXPECT_EQ(c.models[0].model, "a+lora");  // as written, for messages
  const MergeConfig b = parse("merge_method: task_arithmetic\nbase_model: base+lora\nmodels: [a]\n");
  EXPECT_EQ(*b.base_path, fs::path("base"));
  EXPECT_EQ(*b.base_adapter, fs::path("lora"));
}

TEST(ConfigMergekit, ChatTemplateIsAutoANameOrJinja) {
  for (const std::string t : {"auto", "chatml", "llama3", "alpaca", "mistral", "exaone"})
    EXPECT_EQ(parse("merge_method: linear\nmodels: [a]\nchat_template: " + t + "\n").chat_template, t);
  const std::string jinja = "{% for m in messages %}{{ m.content }}{% endfor %}";
  EXPECT_EQ(parse("merge_method: linear\nmodels: [a]\nchat_template: \"" + jinja + "\"\n").chat_template, jinja);
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [a]\nchat_template: vicuna\n",
                     "chat_template: 'vicuna' is neither auto, a template name (alpaca, chatml, exaone, llama3, "
                     "mistral) nor a Jinja template");
}

TEST(ConfigErrors, Models) {
  const std::string head = "merge_method: linear\nmodels:\n  - model: a\n";
  EXPECT_PARSE_ERROR(head + "  - model: b\n    foo: 1\n", "merge.yaml: models[1]: unknown key 'foo'");
  EXPECT_PARSE_ERROR(head + "  - parameters: {weight: 1}\n", "models[1]: missing 'model'");
  EXPECT_PARSE_ERROR(head + "  - model: [b]\n", "models[1].model: expected a string");
  EXPECT_PARSE_ERROR(head + "  - model: ''\n", "models[1].model: must not be empty");
  EXPECT_PARSE_ERROR(head + "  - [b]\n", "models[1]: expected a map with 'model'");
  EXPECT_PARSE_ERROR(head + "  - model: b\n    data: {x: 1}\n", "models[1].data: expected a string");
  EXPECT_PARSE_ERROR(head + "  - model: b\n    data: [x, [y]]\n", "models[1].data[1]: expected a string");
  EXPECT_PARSE_ERROR(head + "  - model: b\n    stats: ''\n", "models[1].stats: must not be empty");
  EXPECT_PARSE_ERROR(head + "  - model: b\n    parameters: 1\n", "models[1].parameters: expected a map");
}

TEST(ConfigErrors, Settings) {
  const std::string head = "merge_method: linear\nmodels:\n  - model: a\n  - model: b\n    parameters:\n      weight: ";
  const std::string shape = "expected a number, a list of numbers, or a list of {filter, value}";
  // The whole message, to pin its form: file, key path, what was expected, what was found.
  EXPECT_EQ(parse_error(head + "abc\n"), "merge.yaml: models[1].parameters.weight: " + shape + ", got 'abc'");
  // A quoted number is a string in YAML.
  EXPECT_PARSE_ERROR(head + "'0.5'\n", "models[1].parameters.weight: " + shape + ", got the string '0.5'");
  EXPECT_PARSE_ERROR(head + "\"1\"\n", "models[1].parameters.weight: " + shape);
  EXPECT_PARSE_ERROR(head + "~\n", "models[1].parameters.weight: " + shape + ", got nothing");
  EXPECT_PARSE_ERROR(head + "[]\n", "models[1].parameters.weight: empty list");
  EXPECT_PARSE_ERROR(head + "[0.1, x]\n", "models[1].parameters.weight[1]: expected a number, got 'x'");
  EXPECT_PARSE_ERROR(head + "[0.1, '0.2']\n", "models[1].parameters.weight[1]: expected a number");
  EXPECT_PARSE_ERROR(head + "[0.1, {value: 1}]\n", "models[1].parameters.weight[1]: expected a number, got a map");
  EXPECT_PARSE_ERROR(head + "[{value: 1}, 2]\n", "models[1].parameters.weight[1]: expected {filter, value}");
  EXPECT_PARSE_ERROR(head + "[[1, 2]]\n", "models[1].parameters.weight[0]: " + shape);
  EXPECT_PARSE_ERROR(head + "[{filtr: mlp, value: 1}]\n", "models[1].parameters.weight[0]: unknown key 'filtr'");
  EXPECT_PARSE_ERROR(head + "{filter: mlp, valeu: 1}\n", "models[1].parameters.weight: unknown key 'valeu'");
  EXPECT_PARSE_ERROR(head + "[{filter: mlp}]\n", "models[1].parameters.weight[0]: missing 'value'");
  EXPECT_PARSE_ERROR(head + "[{filter: [mlp], value: 1}]\n",
                     "models[1].parameters.weight[0].filter: expected a string");
  EXPECT_PARSE_ERROR(head + "[{filter: mlp, value: abc}]\n", "models[1].parameters.weight[0].value: " + shape);
  EXPECT_PARSE_ERROR(head + "[{filter: mlp, value: []}]\n", "models[1].parameters.weight[0].value: empty list");
  EXPECT_PARSE_ERROR(head + ".inf\n", "models[1].parameters.weight: expected a finite number, got '.inf'");
  EXPECT_PARSE_ERROR(head + "[0, .nan]\n", "models[1].parameters.weight[1]: expected a finite number");
}

// Found by fuzz_merge_config: yaml-cpp's LoadAll never returns on this text (it yields empty
// documents forever); counting documents must stop at two.
TEST(ConfigErrors, TextWhereYamlCppFindsEndlessDocumentsEndsInAnError) {
  const std::string text = testing::read_bytes(std::filesystem::path(AMALGAM_SOURCE_DIR) /
                                               "fuzz/corpus/merge_config/loadall-never-ends.yaml");
  try {
    parse_merge_config(text, "fuzzed.yaml");
    ADD_FAILURE() << "accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("fuzzed.yaml: "), std::string::npos) << e.what();
  }
}

// YAML reads CR LF, a lone CR and LF alike as a line break; yaml-cpp kept the first CR of
// "\r\r\n" in the scalar before it (found by fuzz_merge_config: the seed
// fuzz/corpus/merge_config/cr-cr-lf-line-break.yaml).
TEST(Config, EveryLineBreakReadsAsOne) {
  const std::string lf = "merge_method: ties\n\nbase_model: b\nmodels:\n  - model: m\n    parameters: {weight: 1}\n";
  for (const std::string text :
       {"merge_method: ties\r\r\nbase_model: b\nmodels:\n  - model: m\n    parameters: {weight: 1}\n",
        "merge_method: ties\r\rbase_model: b\rmodels:\r  - model: m\r    parameters: {weight: 1}\r",
        "merge_method: ties\r\n\r\nbase_model: b\r\nmodels:\r\n  - model: m\r\n    parameters: {weight: 1}\r\n"}) {
    const MergeConfig c = parse(text);
    EXPECT_EQ(c.merge_method, "ties");
    EXPECT_EQ(c.base_model, parse(lf).base_model);
    ASSERT_EQ(c.models.size(), 1u);
    EXPECT_EQ(c.models[0].model, "m");
  }
}

TEST(ConfigErrors, DtypeSeedAndSyntax) {
  const std::string head = "merge_method: linear\nmodels: [a]\n";
  EXPECT_PARSE_ERROR(head + "dtype: float8\n", "merge.yaml: dtype: unknown dtype 'float8'");
  EXPECT_PARSE_ERROR(head + "out_dtype: int4\n", "out_dtype: unknown dtype 'int4'");
  EXPECT_PARSE_ERROR(head + "dtype: [F32]\n", "dtype: expected a string");
  EXPECT_PARSE_ERROR(head + "seed: -1\n", "seed: expected a non-negative integer");
  EXPECT_PARSE_ERROR(head + "seed: 1.5\n", "seed: expected a non-negative integer");
  EXPECT_PARSE_ERROR(head + "seed: '7'\n", "seed: expected a non-negative integer");
  EXPECT_PARSE_ERROR(head + "seed: 0x10\n", "seed: expected a non-negative integer");
  EXPECT_PARSE_ERROR(head + "seed: 18446744073709551616\n", "seed: expected a non-negative integer");  // 2^64
  // The flow list opened on line 2 is never closed; yaml-cpp notices at the `:` of `b: 3`,
  // line 3, column 2 (its marks are 0-based, 2:1; the message counts from 1).
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [a, b\nb: 3\n",
                     "merge.yaml: YAML syntax error at line 3, column 2: end of sequence flow not found");
  // `  models` continues the plain scalar `linear`, so the `:` after it (line 2, column 9)
  // would start a map inside a scalar.
  EXPECT_PARSE_ERROR("merge_method: linear\n  models: [a]\n",
                     "YAML syntax error at line 2, column 9: illegal map value");
}

TEST(ConfigErrors, TextThatIsNotUtf8) {
  // Latin-1 "café" on line 2: the stray byte is named with its position.
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [caf\xE9]\n",
                     "merge.yaml: not UTF-8 text: byte 0xE9 at line 2, column 13");
  EXPECT_PARSE_ERROR("\xC0\xAF", "byte 0xC0 at line 1, column 1");                                    // overlong '/'
  EXPECT_PARSE_ERROR("models: [\xED\xA0\x80]", "byte 0xED at line 1, column 10");                     // a surrogate
  EXPECT_PARSE_ERROR("models: [\xF4\x90\x80\x80]", "byte 0xF4 at line 1, column 10");                 // past U+10FFFF
  EXPECT_PARSE_ERROR("merge_method: linear\nmodels: [a\xE2\x82]", "byte 0xE2 at line 2, column 11");  // cut short
  // The same name in UTF-8 parses, two-, three- and four-byte characters alike.
  const MergeConfig c = parse("merge_method: linear\nmodels: [caf\xC3\xA9, \xE2\x82\xAC, \xF0\x9F\x98\x80]\n");
  ASSERT_EQ(c.models.size(), 3u);
  EXPECT_EQ(c.models[0].model, "caf\xC3\xA9");
}

TEST(ConfigLoad, MissingFileAndSource) {
  TempDir dir;
  EXPECT_THROW(load_merge_config(dir / "nope.yaml"), InputError);
  try {
    load_merge_config(dir / "nope.yaml");
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "nope.yaml").string()), std::string::npos) << e.what();
  }
  write_bytes(dir / "m.yaml", "merge_method: linear\nmodels: [a]\nfoo: 1\n");
  try {
    load_merge_config(dir / "m.yaml");
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), (dir / "m.yaml").string() + ": unknown key 'foo'");
  }
}

void expect_same_config(const MergeConfig& a, const MergeConfig& b) {
  EXPECT_EQ(a.merge_method, b.merge_method);
  EXPECT_EQ(a.base_model, b.base_model);
  EXPECT_EQ(a.base_path, b.base_path);
  ASSERT_EQ(a.models.size(), b.models.size());
  for (size_t i = 0; i < a.models.size(); ++i) {
    SCOPED_TRACE("model " + std::to_string(i));
    EXPECT_EQ(a.models[i].model, b.models[i].model);
    EXPECT_EQ(a.models[i].path, b.models[i].path);
    EXPECT_EQ(a.models[i].parameters, b.models[i].parameters);
    EXPECT_EQ(a.models[i].data, b.models[i].data);
    EXPECT_EQ(a.models[i].stats, b.models[i].stats);
  }
  EXPECT_EQ(a.parameters, b.parameters);
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.out_dtype, b.out_dtype);
  EXPECT_EQ(a.seed, b.seed);
}

TEST(ConfigRoundTrip, EverythingSurvives) {
  const MergeConfig c = parse(R"(
merge_method: della
base_model: base
models:
  - model: a
    parameters:
      weight: [0, 0.5, 0.3, 0.7, 1]
      density: [{filter: mlp, value: [0.1, 0.2]}, {filter: "*", value: 0.3}]
    data: calib.jsonl
  - model: 'true'
    parameters:
      weight: {value: 1}
    stats: b.stats
  - model: 'odd: name'
    parameters:
      weight: [{filter: '1', value: 2}]
parameters:
  "yes": 0.5
  lambda: 0.1
  third: 0.333333333333333314829616256247390992939472198486328125
  tiny: 1e-7
  huge: 1.5e300
  negative: -2.5
  big: 123456789.123
  flag: yes
  nested: [{filter: self_attn, value: [{filter: q, value: 1}, {value: [0, 2]}]}]
dtype: float32
out_dtype: F8_E5M2
seed: 42
)");
  const std::string yaml = merge_config_to_yaml(c);
  // Gradients are flow lists; numbers are written shortest; dtypes use torch names when there is one.
  EXPECT_NE(yaml.find("weight: [0, 0.5, 0.3, 0.7, 1]"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("lambda: 0.1\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("tiny: 1.0e-07\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("huge: 1.5e+300\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("flag: 1\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("dtype: float32\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("out_dtype: F8_E5M2\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("seed: 42\n"), std::string::npos) << yaml;
  EXPECT_EQ(yaml.find("tokenizer_source"), std::string::npos) << yaml;
  // Text that other YAML readers would take for a bool or a number is quoted.
  EXPECT_NE(yaml.find("model: \"true\"\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("filter: \"1\"\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("\"yes\": 0.5\n"), std::string::npos) << yaml;

  const MergeConfig back = parse(yaml);
  expect_same_config(c, back);
  // The 1/3 literal above is the exact decimal value of the double nearest 1/3.
  EXPECT_EQ(back.parameters.at("third"), ParamSetting::scalar(1.0 / 3.0));
  EXPECT_EQ(back.models[1].model, "true");
  EXPECT_EQ(back.models[2].model, "odd: name");
  // And a second trip changes nothing.
  EXPECT_EQ(merge_config_to_yaml(back), yaml);
}

TEST(ConfigRoundTrip, Minimal) {
  const MergeConfig c = parse("merge_method: linear\nmodels: [a]\n");
  const std::string yaml = merge_config_to_yaml(c);
  EXPECT_EQ(yaml, "merge_method: linear\nmodels:\n  - model: a\n");
  expect_same_config(c, parse(yaml));
}

// Changes the working directory for one test, so that "relative to the working directory"
// is a directory the test controls.
class ScopedCwd {
 public:
  explicit ScopedCwd(const fs::path& dir) : old_(fs::current_path()) { fs::current_path(dir); }
  ~ScopedCwd() { fs::current_path(old_); }

 private:
  fs::path old_;
};

TEST(ConfigPaths, ResolvedAgainstWorkingDirThenConfigDir) {
  TempDir tmp;
  const fs::path cwd = tmp / "cwd";
  const fs::path cfg = tmp / "cfg";
  for (const fs::path& d : {cwd / "both", cfg / "both", cfg / "models" / "near", cfg / "models" / "base"})
    fs::create_directories(d);
  write_bytes(cfg / "calib.jsonl", "{}\n");
  write_bytes(cwd / "a.stats", "");
  write_bytes(cfg / "a.stats", "");
  write_bytes(cfg / "merge.yaml", R"(
merge_method: linear
base_model: models/base
models:
  - model: models/near
    data: calib.jsonl
    stats: a.stats
  - model: both
  - model: nowhere/model
    data: nowhere.jsonl
  - model: )" + (cfg / "models" / "near").string() +
                                      "\n");
  ScopedCwd in(cwd);

  const MergeConfig c = load_merge_config(cfg / "merge.yaml");
  EXPECT_EQ(c.source, cfg / "merge.yaml");
  // Only beside the config: joined to the config's directory.
  EXPECT_EQ(c.base_model, "models/base");
  EXPECT_EQ(c.base_path, cfg / "models/base");
  EXPECT_EQ(c.models[0].model, "models/near");
  EXPECT_EQ(c.models[0].path, cfg / "models/near");
  EXPECT_EQ(c.models[0].data, std::vector<fs::path>{cfg / "calib.jsonl"});
  // In the working directory: kept as written, even though the config's directory has one too.
  EXPECT_EQ(c.models[0].stats, fs::path("a.stats"));
  EXPECT_EQ(c.models[1].path, fs::path("both"));
  // Nowhere: kept as written, for the engine to report.
  EXPECT_EQ(c.models[2].path, fs::path("nowhere/model"));
  EXPECT_EQ(c.models[2].data, std::vector<fs::path>{fs::path("nowhere.jsonl")});
  // Absolute: as is.
  EXPECT_EQ(c.models[3].path, cfg / "models" / "near");

  // Without a file there is no config directory to fall back to.
  const MergeConfig s = parse_merge_config("merge_method: linear\nmodels: [models/near]\n", "");
  EXPECT_EQ(s.models[0].path, fs::path("models/near"));

  // The resolved paths survive the round trip when read from the same place.
  expect_same_config(c, parse_merge_config(merge_config_to_yaml(c), cfg / "merge.yaml"));
}

}  // namespace
}  // namespace amalgam
