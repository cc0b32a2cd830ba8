// The CLIP vision engine against an independent double-precision reference of Hugging
// Face's CLIPVisionModel (tests/clip_reference.h) on tiny random models, the block-by-block
// API and the linear-input taps against the same reference, the loader on Hugging Face
// layouts (CLIPConfig, text tower, position_ids, shards), its errors, and determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "clip_reference.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/families/clip_vision.h"
#include "test_util.h"

namespace amalgam {
namespace {

using testing::ClipReference;
using testing::RefActivation;
using testing::RefConfig;
using testing::RefTrace;
using testing::TempDir;
namespace fs = std::filesystem;

// splitmix64: a fixed, portable stream of numbers for pixels and weights.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-52 - 1.0; }

 private:
  uint64_t state_;
};

std::vector<float> random_pixels(int64_t count, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(count));
  for (auto& x : v) x = static_cast<float>(2.0 * rng.uniform());
  return v;
}

struct Case {
  std::string name;
  int64_t hidden = 0, intermediate = 0, heads = 0, layers = 0, image = 0, patch = 0, channels = 0;
  Activation act = Activation::QuickGelu;
  std::string act_name;  // what config.json says
  double eps = 1e-5;
  int64_t projection = 0;  // 0: no visual_projection
  DType dtype = DType::F32;
  // Overwrite the engine's random weights with larger ones of our own, so that attention is
  // far from uniform and LayerNorm weights far from identity (a wrong softmax axis, scale or
  // LayerNorm parameter would not show with near-initialisation weights).
  bool sharpen = true;
};

// gtest prints a failing case by its name rather than its bytes.
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

ClipVisionConfig config_of(const Case& c) {
  ClipVisionConfig cfg;
  cfg.hidden_size = c.hidden;
  cfg.intermediate_size = c.intermediate;
  cfg.num_hidden_layers = c.layers;
  cfg.num_attention_heads = c.heads;
  cfg.image_size = c.image;
  cfg.patch_size = c.patch;
  cfg.num_channels = c.channels;
  cfg.hidden_act = c.act;
  cfg.layer_norm_eps = c.eps;
  if (c.projection > 0) cfg.projection_dim = c.projection;
  return cfg;
}

RefConfig ref_config_of(const Case& c) {
  RefConfig r;
  r.hidden_size = c.hidden;
  r.intermediate_size = c.intermediate;
  r.num_layers = c.layers;
  r.num_heads = c.heads;
  r.image_size = c.image;
  r.patch_size = c.patch;
  r.num_channels = c.channels;
  r.act = c.act == Activation::QuickGelu ? RefActivation::QuickGelu
          : c.act == Activation::Gelu    ? RefActivation::Gelu
                                         : RefActivation::GeluTanh;
  r.eps = c.eps;
  return r;
}

void fill(std::vector<float>& v, Rng& rng, double center, double spread) {
  for (auto& x : v) x = static_cast<float>(center + spread * rng.uniform());
}
void fill(Matrix& m, Rng& rng, double spread) {
  fill(m.data, rng, 0.0, spread);
}
void fill(LayerNormParams& ln, Rng& rng) {
  fill(ln.weight, rng, 1.0, 0.5);
  fill(ln.bias, rng, 0.0, 0.5);
}
void fill(LinearParams& lin, Rng& rng, double spread) {
  fill(lin.weight, rng, spread);
  fill(lin.bias, rng, 0.0, 0.3);
}

ClipVisionWeights make_weights(const Case& c, uint64_t seed) {
  ClipVisionWeights w = random_clip_vision_weights(config_of(c), seed, c.projection > 0);
  if (!c.sharpen) return w;
  Rng rng(seed ^ 0xabcdef);
  const double in_d = 2.0 / std::sqrt(static_cast<double>(c.hidden));
  fill(w.patch_embedding, rng, 1.0 / std::sqrt(static_cast<double>(c.channels * c.patch * c.patch)));
  fill(w.class_embedding, rng, 0.0, 1.0);
  fill(w.position_embedding, rng, 0.5);
  fill(w.pre_layrnorm, rng);
  for (auto& b : w.layers) {
    fill(b.layer_norm1, rng);
    fill(b.q_proj, rng, 2.5 * in_d);
    fill(b.k_proj, rng, 2.5 * in_d);
    fill(b.v_proj, rng, in_d);
    fill(b.out_proj, rng, in_d);
    fill(b.layer_norm2, rng);
    fill(b.fc1, rng, in_d);
    fill(b.fc2, rng, 2.0 / std::sqrt(static_cast<double>(c.intermediate)));
  }
  fill(w.post_layernorm, rng);
  if (w.visual_projection) fill(*w.visual_projection, rng, in_d);
  return w;
}

// max |got - want| / max |want| (with a floor for all-small arrays).
double rel_diff(const float* got, const std::vector<double>& want) {
  double diff = 0.0, scale = 1e-3;
  for (size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return diff / scale;
}

constexpr double kTol = 1e-4;

struct TapRecord {
  int64_t layer;
  SiteRole site;
  int64_t rows, width;
  std::vector<float> data;
};

SiteTap recorder(std::vector<TapRecord>& out) {
  return [&out](const SiteInput& in) {
    out.push_back({in.layer, in.role, in.rows, in.width,
                   std::vector<float>(in.data, in.data + static_cast<size_t>(in.rows * in.width))});
  };
}

const char* site_name(SiteRole s) {
  switch (s) {
    case SiteRole::AttentionInput:
      return "AttentionInput";
    case SiteRole::AttentionOutput:
      return "AttentionOutput";
    case SiteRole::MlpInput:
      return "MlpInput";
    case SiteRole::MlpOutput:
      return "MlpOutput";
    case SiteRole::Head:
      return "Head";
  }
  return "?";
}

using testing::same_bits;

// The tensor names of a Hugging Face CLIPVisionModel(WithProjection) state dict.
std::set<std::string> expected_names(int64_t layers, bool projection) {
  std::set<std::string> n = {"vision_model.embeddings.patch_embedding.weight",
                             "vision_model.embeddings.class_embedding",
                             "vision_model.embeddings.position_embedding.weight",
                             "vision_model.pre_layrnorm.weight",
                             "vision_model.pre_layrnorm.bias",
                             "vision_model.post_layernorm.weight",
                             "vision_model.post_layernorm.bias"};
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "vision_model.encoder.layers." + std::to_string(l) + ".";
    for (const char* m : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                          "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"}) {
      n.insert(p + m + ".weight");
      n.insert(p + m + ".bias");
    }
  }
  if (projection) n.insert("visual_projection.weight");
  return n;
}

// ---------------------------------------------------------------------------------------
// 1. Engine against the reference.

class ClipVisionForward : public ::testing::TestWithParam<Case> {};

TEST_P(ClipVisionForward, MatchesReference) {
  const Case& c = GetParam();
  const ClipVisionConfig cfg = config_of(c);
  TempDir tmp;
  const fs::path dir = tmp / "model";
  save_clip_vision(dir, cfg, make_weights(c, 42), c.dtype, false);

  // The checkpoint is what Hugging Face expects: names, shapes (the conv kernel 4-D), dtype,
  // and a CLIPVisionConfig.
  {
    CheckpointReader reader(dir);
    std::set<std::string> names(reader.names().begin(), reader.names().end());
    EXPECT_EQ(names, expected_names(c.layers, c.projection > 0));
    for (const auto& n : reader.names()) EXPECT_EQ(reader.info(n).dtype, c.dtype) << n;
    EXPECT_EQ(reader.info("vision_model.embeddings.patch_embedding.weight").shape,
              (Shape{c.hidden, c.channels, c.patch, c.patch}));
    ASSERT_TRUE(reader.config().has_value());
    const auto& j = *reader.config();
    EXPECT_EQ(j.value("model_type", ""), "clip_vision_model");
    ASSERT_TRUE(j.contains("architectures"));
    EXPECT_EQ(j["architectures"][0], c.projection > 0 ? "CLIPVisionModelWithProjection" : "CLIPVisionModel");
    EXPECT_EQ(j.value("hidden_size", -1), c.hidden);
    EXPECT_EQ(j.value("intermediate_size", -1), c.intermediate);
    EXPECT_EQ(j.value("num_hidden_layers", -1), c.layers);
    EXPECT_EQ(j.value("num_attention_heads", -1), c.heads);
    EXPECT_EQ(j.value("image_size", -1), c.image);
    EXPECT_EQ(j.value("patch_size", -1), c.patch);
    EXPECT_EQ(j.value("num_channels", -1), c.channels);
    EXPECT_EQ(j.value("hidden_act", ""), activation_name(c.act));
    EXPECT_DOUBLE_EQ(j.value("layer_norm_eps", -1.0), c.eps);
    if (c.projection > 0) {
      EXPECT_EQ(j.value("projection_dim", -1), c.projection);
    }
  }

  const ClipVisionModel model = ClipVisionModel::load(dir);
  EXPECT_EQ(model.config().hidden_size, c.hidden);
  EXPECT_EQ(model.config().intermediate_size, c.intermediate);
  EXPECT_EQ(model.config().num_hidden_layers, c.layers);
  EXPECT_EQ(model.config().num_attention_heads, c.heads);
  EXPECT_EQ(model.config().hidden_act, c.act);
  EXPECT_DOUBLE_EQ(model.config().layer_norm_eps, c.eps);
  EXPECT_EQ(model.feature_dim(), c.projection > 0 ? c.projection : c.hidden);

  const int64_t B = 3, T = cfg.tokens(), D = c.hidden;
  const std::vector<float> pixels = random_pixels(B * c.channels * c.image * c.image, 7);
  const ClipReference ref(dir, ref_config_of(c));
  const RefTrace want = ref.forward(pixels, B);
  ASSERT_EQ(want.feature_dim, model.feature_dim());

  // Whole forward, with taps.
  std::vector<TapRecord> taps;
  const Matrix got = model.features(pixels, B, recorder(taps));
  ASSERT_EQ(got.rows, B);
  ASSERT_EQ(got.cols, want.feature_dim);
  EXPECT_LT(rel_diff(got.data.data(), want.features), kTol);

  // Each site once per layer, the projection once when there is one, with the reference's
  // values at that point.
  std::map<std::pair<int64_t, SiteRole>, int> count;
  for (const auto& t : taps) {
    const std::string what = std::string(site_name(t.site)) + " layer " + std::to_string(t.layer);
    ++count[{t.layer, t.site}];
    if (t.site == SiteRole::Head) {
      EXPECT_EQ(t.layer, -1);
      ASSERT_EQ(t.rows, B) << what;
      ASSERT_EQ(t.width, D) << what;
      EXPECT_LT(rel_diff(t.data.data(), want.pooled), kTol) << what;
      continue;
    }
    ASSERT_GE(t.layer, 0) << what;
    ASSERT_LT(t.layer, c.layers) << what;
    const auto& lt = want.layers[static_cast<size_t>(t.layer)];
    const std::vector<double>& expected = t.site == SiteRole::AttentionInput    ? lt.ln1
                                          : t.site == SiteRole::AttentionOutput ? lt.context
                                          : t.site == SiteRole::MlpInput        ? lt.ln2
                                                                                : lt.act;
    ASSERT_EQ(t.rows, B * T) << what;
    ASSERT_EQ(t.width, t.site == SiteRole::MlpOutput ? c.intermediate : D) << what;
    EXPECT_LT(rel_diff(t.data.data(), expected), kTol) << what;
  }
  for (int64_t l = 0; l < c.layers; ++l)
    for (SiteRole s : {SiteRole::AttentionInput, SiteRole::AttentionOutput, SiteRole::MlpInput, SiteRole::MlpOutput})
      EXPECT_EQ((count[{l, s}]), 1) << site_name(s) << " layer " << l;
  EXPECT_EQ((count[{-1, SiteRole::Head}]), c.projection > 0 ? 1 : 0);
  EXPECT_EQ(taps.size(), static_cast<size_t>(4 * c.layers + (c.projection > 0 ? 1 : 0)));

  // Block by block: the same bits as features(), and the reference's stream after each step.
  Stream h = model.embed(pixels, B);
  EXPECT_EQ(h.sequences(), B);
  EXPECT_EQ(h.tokens_per_sequence(), T);
  EXPECT_EQ(h.width, D);
  ASSERT_EQ(h.data.size(), static_cast<size_t>(B * T * D));
  EXPECT_LT(rel_diff(h.data.data(), want.embedded), kTol) << "embed";
  Stream h2 = model.embed(pixels, B);
  for (int64_t l = 0; l < c.layers; ++l) {
    model.run_block(l, h);
    EXPECT_LT(rel_diff(h.data.data(), want.layers[static_cast<size_t>(l)].hidden), kTol) << "after block " << l;
    // The free function on the model's own block weights is the same computation.
    run_clip_block(model.config(), model.weights().layers[static_cast<size_t>(l)], l, h2);
    EXPECT_TRUE(same_bits(h.data, h2.data)) << "run_clip_block vs run_block, layer " << l;
  }
  const Matrix pooled = model.pool(h);
  ASSERT_EQ(pooled.rows, B);
  ASSERT_EQ(pooled.cols, model.feature_dim());
  EXPECT_TRUE(same_bits(pooled.data, got.data)) << "embed/run_block/pool differs from features()";

  // The batch is independent per image: image 1 alone gives the batch's row 1.
  const int64_t per_image = c.channels * c.image * c.image;
  const std::vector<float> one(pixels.begin() + per_image, pixels.begin() + 2 * per_image);
  const Matrix single = model.features(one, 1);
  ASSERT_EQ(single.cols, got.cols);
  std::vector<double> row1(want.features.begin() + want.feature_dim, want.features.begin() + 2 * want.feature_dim);
  EXPECT_LT(rel_diff(single.data.data(), row1), kTol);

  // Determinism: a second run gives the same bits.
  const Matrix again = model.features(pixels, B);
  EXPECT_TRUE(same_bits(again.data, got.data));
}

Case make_case(std::string name, int64_t hidden, int64_t intermediate, int64_t heads, int64_t layers, int64_t image,
               int64_t patch, int64_t channels, Activation act, double eps, int64_t projection, DType dtype,
               bool sharpen = true) {
  Case c;
  c.name = std::move(name);
  c.hidden = hidden;
  c.intermediate = intermediate;
  c.heads = heads;
  c.layers = layers;
  c.image = image;
  c.patch = patch;
  c.channels = channels;
  c.act = act;
  c.eps = eps;
  c.projection = projection;
  c.dtype = dtype;
  c.sharpen = sharpen;
  return c;
}

INSTANTIATE_TEST_SUITE_P(Clip, ClipVisionForward,
                         ::testing::Values(make_case("D6_1head_1layer_quickgelu_F32", 6, 11, 1, 1, 12, 4, 3,
                                                     Activation::QuickGelu, 1e-5, 0, DType::F32),
                                           make_case("D12_3heads_3layers_gelu_1ch_proj_F16", 12, 29, 3, 3, 15, 5, 1,
                                                     Activation::Gelu, 1e-5, 7, DType::F16),
                                           make_case("D20_4heads_3layers_gelutanh_proj_BF16_eps", 20, 37, 4, 3, 12, 4,
                                                     3, Activation::GeluTanh, 0.05, 9, DType::BF16),
                                           make_case("D8_2heads_50tokens_proj_F64", 8, 16, 2, 1, 14, 2, 3,
                                                     Activation::QuickGelu, 1e-6, 5, DType::F64),
                                           make_case("D12_4heads_2layers_gelu_BF16", 12, 20, 4, 2, 15, 3, 3,
                                                     Activation::Gelu, 1e-5, 0, DType::BF16),
                                           make_case("EngineRandomWeights_D16_2heads_2layers_proj", 16, 24, 2, 2, 12, 4,
                                                     3, Activation::QuickGelu, 1e-5, 6, DType::F32, false)),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------
// 2. The loader on Hugging Face layouts.

Case layout_case() {
  return make_case("layout", 12, 19, 3, 2, 12, 4, 3, Activation::Gelu, 1e-5, 5, DType::F32);
}

// All tensors of a checkpoint as owned copies (so the file can be replaced).
std::vector<std::pair<std::string, Tensor>> read_all(const fs::path& checkpoint) {
  CheckpointReader reader(checkpoint);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& n : reader.names()) out.emplace_back(n, reader.tensor(n).clone());
  return out;
}

void write_json(const fs::path& path, const nlohmann::json& j) {
  testing::write_bytes(path, j.dump(2));
}

Tensor random_tensor(Shape shape, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  Rng rng(seed);
  fill(v, rng, 0.0, 1.0);
  return Tensor::from_f32(std::move(shape), v);
}

// Features of the engine on `checkpoint` against the reference computed from `ref_dir`.
void expect_matches(const fs::path& checkpoint, const fs::path& ref_dir, const Case& c) {
  const ClipVisionModel model = ClipVisionModel::load(checkpoint);
  const std::vector<float> pixels = random_pixels(3 * c.channels * c.image * c.image, 11);
  const RefTrace want = ClipReference(ref_dir, ref_config_of(c)).forward(pixels, 3);
  const Matrix got = model.features(pixels, 3);
  ASSERT_EQ(got.cols, want.feature_dim);
  ASSERT_EQ(got.data.size(), want.features.size());
  EXPECT_LT(rel_diff(got.data.data(), want.features), kTol);
}

nlohmann::json hand_written_vision_config(const Case& c, bool with_projection_dim) {
  nlohmann::json v = {{"model_type", "clip_vision_model"},
                      {"hidden_size", c.hidden},
                      {"intermediate_size", c.intermediate},
                      {"num_hidden_layers", c.layers},
                      {"num_attention_heads", c.heads},
                      {"image_size", c.image},
                      {"patch_size", c.patch},
                      {"num_channels", c.channels},
                      {"hidden_act", "gelu"},
                      {"layer_norm_eps", c.eps},
                      {"attention_dropout", 0.0},
                      {"initializer_range", 0.02},
                      {"initializer_factor", 1.0},
                      {"dropout", 0.0}};
  if (with_projection_dim) v["projection_dim"] = c.projection;
  return v;
}

// A text config whose every field differs from the vision config, so reading the wrong
// section cannot go unnoticed.
nlohmann::json text_config() {
  return {{"model_type", "clip_text_model"}, {"hidden_size", 8},
          {"intermediate_size", 16},         {"num_hidden_layers", 1},
          {"num_attention_heads", 2},        {"hidden_act", "quick_gelu"},
          {"layer_norm_eps", 0.3},           {"vocab_size", 50},
          {"max_position_embeddings", 7},    {"projection_dim", 5}};
}

// A CLIPModel checkpoint: CLIPConfig, the text tower, logit_scale and position_ids.
void write_clip_model(const fs::path& src, const fs::path& dst, const Case& c, const nlohmann::json& config) {
  fs::create_directories(dst);
  write_json(dst / "config.json", config);
  auto tensors = read_all(src);
  tensors.emplace_back("text_model.embeddings.token_embedding.weight", random_tensor({50, 8}, 1));
  tensors.emplace_back("text_model.embeddings.position_embedding.weight", random_tensor({7, 8}, 2));
  tensors.emplace_back("text_model.encoder.layers.0.self_attn.q_proj.weight", random_tensor({8, 8}, 3));
  tensors.emplace_back("text_model.encoder.layers.0.mlp.fc1.weight", random_tensor({16, 8}, 4));
  tensors.emplace_back("text_model.final_layer_norm.weight", random_tensor({8}, 5));
  tensors.emplace_back("text_projection.weight", random_tensor({c.projection, 8}, 6));
  tensors.emplace_back("logit_scale", Tensor::from_f32({}, std::vector<float>{2.6592f}));
  const int64_t tokens = (c.image / c.patch) * (c.image / c.patch) + 1;
  Tensor ids = Tensor::zeros(DType::I64, {1, tokens});
  auto d = ids.mutable_data<int64_t>();
  for (int64_t i = 0; i < tokens; ++i) d[static_cast<size_t>(i)] = i;
  tensors.emplace_back("vision_model.embeddings.position_ids", ids);
  tensors.emplace_back("text_model.embeddings.position_ids", Tensor::zeros(DType::I64, {1, 7}));
  // Interleave: text first, vision after, as the names sort in a real file.
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  save_safetensors(dst / "model.safetensors", tensors);
}

TEST(ClipVisionLoad, ClipModelLayoutWithTextTower) {
  const Case c = layout_case();
  TempDir tmp;
  save_clip_vision(tmp / "vision", config_of(c), make_weights(c, 3), c.dtype, false);
  const nlohmann::json config = {
      {"architectures", {"CLIPModel"}}, {"model_type", "clip"},
      {"projection_dim", c.projection}, {"logit_scale_init_value", 2.6592},
      {"text_config", text_config()},   {"vision_config", hand_written_vision_config(c, true)}};
  write_clip_model(tmp / "vision", tmp / "clip", c, config);

  const ClipVisionModel model = ClipVisionModel::load(tmp / "clip");
  EXPECT_EQ(model.config().hidden_size, c.hidden);
  EXPECT_EQ(model.config().num_attention_heads, c.heads);
  EXPECT_EQ(model.config().hidden_act, Activation::Gelu);
  EXPECT_DOUBLE_EQ(model.config().layer_norm_eps, c.eps);
  EXPECT_EQ(model.feature_dim(), c.projection);
  expect_matches(tmp / "clip", tmp / "vision", c);
  // Through the file path: the config comes from the file's directory.
  expect_matches(tmp / "clip" / "model.safetensors", tmp / "vision", c);
}

// Hugging Face's CLIPModel sizes visual_projection from the CLIPConfig's top-level
// projection_dim; a vision_config without one must not make the loader expect 512.
TEST(ClipVisionLoad, ClipModelLayoutTopLevelProjectionDim) {
  const Case c = layout_case();
  TempDir tmp;
  save_clip_vision(tmp / "vision", config_of(c), make_weights(c, 3), c.dtype, false);
  const nlohmann::json config = {{"architectures", {"CLIPModel"}},
                                 {"model_type", "clip"},
                                 {"projection_dim", c.projection},
                                 {"text_config", text_config()},
                                 {"vision_config", hand_written_vision_config(c, false)}};
  write_clip_model(tmp / "vision", tmp / "clip", c, config);
  const ClipVisionModel model = ClipVisionModel::load(tmp / "clip");
  EXPECT_EQ(model.feature_dim(), c.projection);
  expect_matches(tmp / "clip", tmp / "vision", c);
}

// A hand-written CLIPVisionConfig with only some fields: the rest take the defaults.
TEST(ClipVisionLoad, HandWrittenVisionConfigAndPositionIds) {
  Case c = layout_case();
  c.eps = 1e-5;  // left to the default below
  c.act = Activation::QuickGelu;
  TempDir tmp;
  save_clip_vision(tmp / "vision", config_of(c), make_weights(c, 5), DType::BF16, false);
  fs::create_directories(tmp / "hand");
  write_json(tmp / "hand" / "config.json", {{"hidden_size", c.hidden},
                                            {"intermediate_size", c.intermediate},
                                            {"num_hidden_layers", c.layers},
                                            {"num_attention_heads", c.heads},
                                            {"image_size", c.image},
                                            {"patch_size", c.patch},
                                            {"projection_dim", c.projection}});
  auto tensors = read_all(tmp / "vision");
  const int64_t tokens = (c.image / c.patch) * (c.image / c.patch) + 1;
  tensors.emplace_back("vision_model.embeddings.position_ids", Tensor::zeros(DType::I64, {1, tokens}));
  save_safetensors(tmp / "hand" / "model.safetensors", tensors);
  expect_matches(tmp / "hand", tmp / "vision", c);
}

TEST(ClipVisionLoad, ShardedCheckpoint) {
  const Case c = layout_case();
  TempDir tmp;
  save_clip_vision(tmp / "vision", config_of(c), make_weights(c, 9), DType::F16, false);
  const auto tensors = read_all(tmp / "vision");
  std::vector<TensorSpec> plan;
  for (const auto& [n, t] : tensors) plan.push_back({n, t.dtype(), t.shape()});
  fs::create_directories(tmp / "sharded");
  {
    CheckpointWriter writer(tmp / "sharded", plan, 1500);
    for (const auto& [n, t] : tensors) writer.write(n, t);
    writer.finish();
    ASSERT_GT(writer.shard_count(), 1u);
  }
  fs::copy_file(tmp / "vision" / "config.json", tmp / "sharded" / "config.json");
  expect_matches(tmp / "sharded", tmp / "vision", c);
}

// save_clip_vision refuses to overwrite without force, and replaces with it.
TEST(ClipVisionLoad, SaveRespectsForce) {
  const Case c = layout_case();
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 1), DType::F32, false);
  EXPECT_ANY_THROW(save_clip_vision(tmp / "m", config_of(c), make_weights(c, 2), DType::F32, false));
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 2), DType::F32, true);
  const ClipVisionModel model = ClipVisionModel::load(tmp / "m");
  EXPECT_EQ(model.weights().class_embedding, make_weights(c, 2).class_embedding);
  // The preprocessor config is written when given.
  save_clip_vision(tmp / "p", config_of(c), make_weights(c, 1), DType::F32, false,
                   nlohmann::json{{"image_mean", {0.5, 0.5, 0.5}}});
  EXPECT_EQ(read_json_file(tmp / "p" / "preprocessor_config.json")["image_mean"][0], 0.5);
}

// ---------------------------------------------------------------------------------------
// 3. Loader errors: InputError naming the tensor or key.

// Loads `dir` and returns the InputError's message ("" and a failure when there is none).
std::string load_error(const fs::path& dir) {
  try {
    ClipVisionModel::load(dir);
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not an InputError: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error loading " << dir;
  return "";
}

void edit_config(const fs::path& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = read_json_file(dir / "config.json");
  edit(j);
  write_json(dir / "config.json", j);
}

TEST(ClipVisionLoadErrors, MissingTensor) {
  const Case c = layout_case();
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 1), DType::F32, false);
  auto tensors = read_all(tmp / "m");
  const std::string gone = "vision_model.encoder.layers.1.mlp.fc2.bias";
  std::erase_if(tensors, [&](const auto& p) { return p.first == gone; });
  fs::remove(tmp / "m" / "model.safetensors");
  save_safetensors(tmp / "m" / "model.safetensors", tensors);
  const std::string msg = load_error(tmp / "m");
  EXPECT_NE(msg.find(gone), std::string::npos) << msg;
}

TEST(ClipVisionLoadErrors, MissingProjectionIsNotAnError) {
  // A CLIPVisionModel checkpoint has no visual_projection: features are the pooled output.
  Case c = layout_case();
  c.projection = 0;
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 1), DType::F32, false);
  EXPECT_EQ(ClipVisionModel::load(tmp / "m").feature_dim(), c.hidden);
}

TEST(ClipVisionLoadErrors, WrongShapeAgainstConfig) {
  Case c = layout_case();
  c.intermediate = 10;
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 1), DType::F32, false);
  edit_config(tmp / "m", [](nlohmann::json& j) { j["intermediate_size"] = 8; });
  const std::string msg = load_error(tmp / "m");
  EXPECT_NE(msg.find("mlp.fc1"), std::string::npos) << msg;
}

TEST(ClipVisionLoadErrors, WrongPatchKernelShape) {
  const Case c = layout_case();
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 1), DType::F32, false);
  // num_channels 1 in the config, a 3-channel kernel in the file.
  edit_config(tmp / "m", [](nlohmann::json& j) { j["num_channels"] = 1; });
  const std::string msg = load_error(tmp / "m");
  EXPECT_NE(msg.find("patch_embedding"), std::string::npos) << msg;
}

TEST(ClipVisionLoadErrors, UnknownActivation) {
  const Case c = layout_case();
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 1), DType::F32, false);
  edit_config(tmp / "m", [](nlohmann::json& j) { j["hidden_act"] = "relu6"; });
  const std::string msg = load_error(tmp / "m");
  EXPECT_NE(msg.find("hidden_act"), std::string::npos) << msg;
  EXPECT_NE(msg.find("relu6"), std::string::npos) << msg;
}

TEST(ClipVisionLoadErrors, HiddenSizeNotDivisibleByHeads) {
  const Case c = layout_case();
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 1), DType::F32, false);
  edit_config(tmp / "m", [](nlohmann::json& j) { j["num_attention_heads"] = 5; });
  const std::string msg = load_error(tmp / "m");
  EXPECT_TRUE(msg.find("num_attention_heads") != std::string::npos || msg.find("hidden_size") != std::string::npos)
      << msg;
}

TEST(ClipVisionLoadErrors, ImageSizeNotDivisibleByPatch) {
  const Case c = layout_case();
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 1), DType::F32, false);
  edit_config(tmp / "m", [](nlohmann::json& j) { j["image_size"] = 13; });
  const std::string msg = load_error(tmp / "m");
  EXPECT_TRUE(msg.find("image_size") != std::string::npos || msg.find("patch_size") != std::string::npos) << msg;
}

TEST(ClipVisionLoadErrors, MissingConfig) {
  const Case c = layout_case();
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 1), DType::F32, false);
  fs::remove(tmp / "m" / "config.json");
  const std::string msg = load_error(tmp / "m");
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
}

TEST(ClipVisionLoadErrors, ConstructorChecksShapes) {
  const Case c = layout_case();
  ClipVisionWeights w = make_weights(c, 1);
  w.layers[1].fc2.bias.pop_back();
  EXPECT_THROW(ClipVisionModel(config_of(c), w), InputError);
  ClipVisionWeights w2 = make_weights(c, 1);
  w2.layers.pop_back();
  EXPECT_THROW(ClipVisionModel(config_of(c), w2), InputError);
}

// ---------------------------------------------------------------------------------------
// 4. Determinism.

std::vector<float> flatten(const ClipVisionWeights& w) {
  std::vector<float> out;
  auto add = [&](const std::vector<float>& v) { out.insert(out.end(), v.begin(), v.end()); };
  add(w.patch_embedding.data);
  add(w.class_embedding);
  add(w.position_embedding.data);
  add(w.pre_layrnorm.weight);
  add(w.pre_layrnorm.bias);
  for (const auto& b : w.layers) {
    for (const auto* ln : {&b.layer_norm1, &b.layer_norm2}) {
      add(ln->weight);
      add(ln->bias);
    }
    for (const auto* lin : {&b.q_proj, &b.k_proj, &b.v_proj, &b.out_proj, &b.fc1, &b.fc2}) {
      add(lin->weight.data);
      add(lin->bias);
    }
  }
  add(w.post_layernorm.weight);
  add(w.post_layernorm.bias);
  if (w.visual_projection) add(w.visual_projection->data);
  return out;
}

TEST(ClipVisionDeterminism, RandomWeightsSameSeedSameBits) {
  const ClipVisionConfig cfg = config_of(layout_case());
  const ClipVisionWeights a = random_clip_vision_weights(cfg, 17, true);
  const ClipVisionWeights b = random_clip_vision_weights(cfg, 17, true);
  const ClipVisionWeights other = random_clip_vision_weights(cfg, 18, true);
  ASSERT_TRUE(a.visual_projection.has_value());
  EXPECT_EQ(a.visual_projection->rows, cfg.projection_dim);
  EXPECT_EQ(a.visual_projection->cols, cfg.hidden_size);
  EXPECT_FALSE(random_clip_vision_weights(cfg, 17, false).visual_projection.has_value());
  EXPECT_TRUE(same_bits(flatten(a), flatten(b)));
  EXPECT_FALSE(same_bits(flatten(a), flatten(other)));
  EXPECT_NE(a.patch_embedding.data, other.patch_embedding.data);
  EXPECT_NE(a.layers[1].fc2.weight.data, other.layers[1].fc2.weight.data);
  for (float x : flatten(a)) ASSERT_TRUE(std::isfinite(x));
  // The shapes the constructor checks.
  EXPECT_NO_THROW(ClipVisionModel(cfg, a));
}

TEST(ClipVisionDeterminism, ForwardSameBits) {
  const Case c = layout_case();
  const ClipVisionModel a(config_of(c), make_weights(c, 4));
  const ClipVisionModel b(config_of(c), make_weights(c, 4));
  const std::vector<float> pixels = random_pixels(3 * c.channels * c.image * c.image, 5);
  const Matrix x = a.features(pixels, 3);
  EXPECT_TRUE(same_bits(x.data, a.features(pixels, 3).data));
  EXPECT_TRUE(same_bits(x.data, b.features(pixels, 3).data));
  // A model built in memory computes what the reference computes from its saved file.
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 4), DType::F32, false);
  const RefTrace want = ClipReference(tmp / "m", ref_config_of(c)).forward(pixels, 3);
  EXPECT_LT(rel_diff(x.data.data(), want.features), kTol);
  // Saving and reloading in F32 keeps every bit.
  const ClipVisionModel reloaded = ClipVisionModel::load(tmp / "m");
  EXPECT_TRUE(same_bits(flatten(reloaded.weights()), flatten(make_weights(c, 4))));
  EXPECT_TRUE(same_bits(x.data, reloaded.features(pixels, 3).data));
}

// A batch larger than a shard runs split across threads (with a partial last shard); a tap
// forces the whole-batch path. Both compute what the reference computes, and the split is
// the same bits on every run.
TEST(ClipVisionDeterminism, LargeBatchSplitAcrossThreads) {
  const Case c = layout_case();
  const ClipVisionModel model(config_of(c), make_weights(c, 6));
  const int64_t batch = 70;
  const std::vector<float> pixels = random_pixels(static_cast<size_t>(batch * c.channels * c.image * c.image), 7);
  const Matrix split = model.features(pixels, batch);
  int64_t tapped_rows = 0;
  const Matrix whole = model.features(pixels, batch, [&](const SiteInput& in) {
    if (in.layer == 0 && in.role == SiteRole::AttentionInput) tapped_rows += in.rows;
  });
  EXPECT_EQ(tapped_rows, batch * config_of(c).tokens());  // one call: the whole batch
  TempDir tmp;
  save_clip_vision(tmp / "m", config_of(c), make_weights(c, 6), DType::F32, false);
  const RefTrace want = ClipReference(tmp / "m", ref_config_of(c)).forward(pixels, batch);
  ASSERT_EQ(split.data.size(), want.features.size());
  EXPECT_LT(rel_diff(split.data.data(), want.features), kTol);
  EXPECT_LT(rel_diff(whole.data.data(), want.features), kTol);
  EXPECT_TRUE(same_bits(split.data, model.features(pixels, batch).data));
}

// ---------------------------------------------------------------------------------------
// 5. Config.

TEST(ClipVisionConfigTest, EmptyJsonGivesVitB32Defaults) {
  const ClipVisionConfig c = ClipVisionConfig::from_json(nlohmann::json::object(), "config.json");
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.intermediate_size, 3072);
  EXPECT_EQ(c.num_hidden_layers, 12);
  EXPECT_EQ(c.num_attention_heads, 12);
  EXPECT_EQ(c.image_size, 224);
  EXPECT_EQ(c.patch_size, 32);
  EXPECT_EQ(c.num_channels, 3);
  EXPECT_EQ(c.projection_dim, 512);
  EXPECT_EQ(c.hidden_act, Activation::QuickGelu);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-5);
  EXPECT_EQ(c.head_dim(), 64);
  EXPECT_EQ(c.patches_per_side(), 7);
  EXPECT_EQ(c.tokens(), 50);
  // A CLIPConfig with an empty vision_config: the same.
  const ClipVisionConfig c2 = ClipVisionConfig::from_json(
      {{"model_type", "clip"}, {"vision_config", nlohmann::json::object()}, {"text_config", text_config()}},
      "config.json");
  EXPECT_EQ(c2.hidden_size, 768);
  EXPECT_EQ(c2.num_hidden_layers, 12);
  EXPECT_DOUBLE_EQ(c2.layer_norm_eps, 1e-5);
  EXPECT_EQ(c2.hidden_act, Activation::QuickGelu);
}

TEST(ClipVisionConfigTest, ToJsonRoundTrips) {
  for (Activation act : {Activation::QuickGelu, Activation::Gelu, Activation::GeluTanh}) {
    ClipVisionConfig c;
    c.hidden_size = 20;
    c.intermediate_size = 37;
    c.num_hidden_layers = 3;
    c.num_attention_heads = 4;
    c.image_size = 15;
    c.patch_size = 5;
    c.num_channels = 1;
    c.projection_dim = 9;
    c.hidden_act = act;
    c.layer_norm_eps = 0.0625;
    const nlohmann::json j = c.to_json();
    EXPECT_EQ(j.value("model_type", ""), "clip_vision_model");
    EXPECT_EQ(j.value("hidden_act", ""), activation_name(act));
    const ClipVisionConfig r = ClipVisionConfig::from_json(j, "x");
    EXPECT_EQ(r.hidden_size, c.hidden_size);
    EXPECT_EQ(r.intermediate_size, c.intermediate_size);
    EXPECT_EQ(r.num_hidden_layers, c.num_hidden_layers);
    EXPECT_EQ(r.num_attention_heads, c.num_attention_heads);
    EXPECT_EQ(r.image_size, c.image_size);
    EXPECT_EQ(r.patch_size, c.patch_size);
    EXPECT_EQ(r.num_channels, c.num_channels);
    EXPECT_EQ(r.projection_dim, c.projection_dim);
    EXPECT_EQ(r.hidden_act, c.hidden_act);
    EXPECT_EQ(r.layer_norm_eps, c.layer_norm_eps);
    EXPECT_EQ(r.to_json(), j);
  }
}

TEST(ClipVisionConfigTest, ActivationNames) {
  EXPECT_EQ(activation_name(Activation::QuickGelu), "quick_gelu");
  EXPECT_EQ(activation_name(Activation::Gelu), "gelu");
  for (const char* name : {"gelu_new", "gelu_pytorch_tanh"})
    EXPECT_EQ(ClipVisionConfig::from_json({{"hidden_act", name}}, "x").hidden_act, Activation::GeluTanh) << name;
  EXPECT_EQ(ClipVisionConfig::from_json({{"hidden_act", "gelu"}}, "x").hidden_act, Activation::Gelu);
  EXPECT_EQ(ClipVisionConfig::from_json({{"hidden_act", "quick_gelu"}}, "x").hidden_act, Activation::QuickGelu);
  EXPECT_THROW(ClipVisionConfig::from_json({{"hidden_act", "relu6"}}, "x"), InputError);
}

TEST(ClipVisionConfigTest, TensorNames) {
  EXPECT_EQ(clip_layer_prefix(3), "vision_model.encoder.layers.3.");
  const auto qkv = linear_site_weights(2, SiteRole::AttentionInput);
  EXPECT_EQ(std::set<std::string>(qkv.begin(), qkv.end()),
            (std::set<std::string>{"vision_model.encoder.layers.2.self_attn.q_proj.weight",
                                   "vision_model.encoder.layers.2.self_attn.k_proj.weight",
                                   "vision_model.encoder.layers.2.self_attn.v_proj.weight"}));
  EXPECT_EQ(linear_site_weights(0, SiteRole::AttentionOutput),
            std::vector<std::string>{"vision_model.encoder.layers.0.self_attn.out_proj.weight"});
  EXPECT_EQ(linear_site_weights(1, SiteRole::MlpInput),
            std::vector<std::string>{"vision_model.encoder.layers.1.mlp.fc1.weight"});
  EXPECT_EQ(linear_site_weights(1, SiteRole::MlpOutput),
            std::vector<std::string>{"vision_model.encoder.layers.1.mlp.fc2.weight"});
  EXPECT_EQ(linear_site_weights(-1, SiteRole::Head), std::vector<std::string>{"visual_projection.weight"});
}

}  // namespace
}  // namespace amalgam
