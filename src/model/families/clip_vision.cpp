#include "model/families/clip_vision.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/lane_sum.h"
#include "core/parallel.h"
#include "core/random.h"
#include "core/tensor.h"
#include "io/atomic_output.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/activations.h"
#include "model/kernels.h"
#include "model/patches.h"

namespace amalgam {

// ---------------------------------------------------------------------------------------
// Config

namespace {

int64_t positive_int(const nlohmann::json& j, const char* key, int64_t fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  const auto& v = j[key];
  if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > (int64_t{1} << 24))
    throw InputError(where, std::string("config key '") + key + "' must be a positive integer, got " + v.dump());
  return v.get<int64_t>();
}

Activation parse_activation(const nlohmann::json& v, const std::string& where) {
  const std::string name = v.is_string() ? v.get<std::string>() : v.dump();
  if (name == "quick_gelu") return Activation::QuickGelu;
  if (name == "gelu") return Activation::Gelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return Activation::GeluTanh;
  throw InputError(where, "config key 'hidden_act': '" + name +
                              "' is not supported (quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)");
}

}  // namespace

std::string activation_name(Activation act) {
  switch (act) {
    case Activation::QuickGelu:
      return "quick_gelu";
    case Activation::Gelu:
      return "gelu";
    case Activation::GeluTanh:
      return "gelu_new";
    case Activation::Silu:
      return "silu";
  }
  return "?";
}

ClipVisionConfig ClipVisionConfig::from_json(const nlohmann::json& json, const std::string& where) {
  if (!json.is_object()) throw InputError(where, "config is not a JSON object");
  const nlohmann::json* v = &json;
  if (json.contains("vision_config")) {
    v = &json["vision_config"];
    if (!v->is_object()) throw InputError(where, "config key 'vision_config' is not an object");
  }
  ClipVisionConfig c;
  c.hidden_size = positive_int(*v, "hidden_size", c.hidden_size, where);
  c.intermediate_size = positive_int(*v, "intermediate_size", c.intermediate_size, where);
  c.num_hidden_layers = positive_int(*v, "num_hidden_layers", c.num_hidden_layers, where);
  c.num_attention_heads = positive_int(*v, "num_attention_heads", c.num_attention_heads, where);
  c.image_size = positive_int(*v, "image_size", c.image_size, where);
  c.patch_size = positive_int(*v, "patch_size", c.patch_size, where);
  c.num_channels = positive_int(*v, "num_channels", c.num_channels, where);
  // A CLIPConfig keeps projection_dim at the top level; a CLIPVisionConfig in itself.
  c.projection_dim = positive_int(json, "projection_dim", c.projection_dim, where);
  c.projection_dim = positive_int(*v, "projection_dim", c.projection_dim, where);
  if (v->contains("hidden_act")) c.hidden_act = parse_activation((*v)["hidden_act"], where);
  if (v->contains("layer_norm_eps")) {
    const auto& eps = (*v)["layer_norm_eps"];
    if (!eps.is_number() || !(eps.get<double>() > 0))
      throw InputError(where, "config key 'layer_norm_eps' must be a positive number, got " + eps.dump());
    c.layer_norm_eps = eps.get<double>();
  }
  if (c.hidden_size % c.num_attention_heads != 0)
    throw InputError(where, "config: hidden_size " + std::to_string(c.hidden_size) +
                                " is not divisible by num_attention_heads " + std::to_string(c.num_attention_heads));
  if (c.image_size % c.patch_size != 0)
    throw InputError(where, "config: image_size " + std::to_string(c.image_size) + " is not divisible by patch_size " +
                                std::to_string(c.patch_size));
  return c;
}

nlohmann::json ClipVisionConfig::to_json() const {
  return {{"model_type", "clip_vision_model"},
          {"hidden_size", hidden_size},
          {"intermediate_size", intermediate_size},
          {"num_hidden_layers", num_hidden_layers},
          {"num_attention_heads", num_attention_heads},
          {"image_size", image_size},
          {"patch_size", patch_size},
          {"num_channels", num_channels},
          {"projection_dim", projection_dim},
          {"hidden_act", activation_name(hidden_act)},
          {"layer_norm_eps", layer_norm_eps},
          {"attention_dropout", 0.0},
          {"dropout", 0.0},
          {"initializer_range", 0.02},
          {"initializer_factor", 1.0}};
}

std::string clip_layer_prefix(int64_t layer) {
  return "vision_model.encoder.layers." + std::to_string(layer) + ".";
}

std::vector<std::string> linear_site_weights(int64_t layer, SiteRole site) {
  const std::string p = clip_layer_prefix(layer);
  switch (site) {
    case SiteRole::AttentionInput:
      return {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"};
    case SiteRole::AttentionOutput:
      return {p + "self_attn.out_proj.weight"};
    case SiteRole::MlpInput:
      return {p + "mlp.fc1.weight"};
    case SiteRole::MlpOutput:
      return {p + "mlp.fc2.weight"};
    case SiteRole::Head:
      return {"visual_projection.weight"};
  }
  return {};
}

std::string clip_gram_name(int64_t layer, SiteRole site) {
  const std::string p = layer >= 0 ? clip_layer_prefix(layer) : "";
  switch (site) {
    case SiteRole::AttentionInput:
      return p + "self_attn.qkv.gram";
    case SiteRole::AttentionOutput:
      return p + "self_attn.out_proj.gram";
    case SiteRole::MlpInput:
      return p + "mlp.fc1.gram";
    case SiteRole::MlpOutput:
      return p + "mlp.fc2.gram";
    case SiteRole::Head:
      return "visual_projection.gram";
  }
  return {};
}

std::vector<LinearSiteSpec> clip_linear_sites(const ClipVisionConfig& config, bool with_projection) {
  std::vector<LinearSiteSpec> sites;
  auto add = [&](int64_t layer, SiteRole site, int64_t width) {
    sites.push_back({layer, site, clip_gram_name(layer, site), linear_site_weights(layer, site), width});
  };
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    add(l, SiteRole::AttentionInput, config.hidden_size);
    add(l, SiteRole::AttentionOutput, config.hidden_size);
    add(l, SiteRole::MlpInput, config.hidden_size);
    add(l, SiteRole::MlpOutput, config.intermediate_size);
  }
  if (with_projection) add(-1, SiteRole::Head, config.hidden_size);
  return sites;
}

// ---------------------------------------------------------------------------------------
// Shapes: one table of every tensor the model has, used to check, load, save and randomise.

namespace {

void size_layer_norm(LayerNormParams& ln, int64_t d) {
  ln.weight.resize(static_cast<size_t>(d));
  ln.bias.resize(static_cast<size_t>(d));
}

void size_linear(LinearParams& l, int64_t out, int64_t in) {
  if (l.weight.rows != out || l.weight.cols != in) l.weight = Matrix(out, in);
  l.bias.resize(static_cast<size_t>(out));
}

void add_layer_norm(std::vector<ClipParameter>& t, const std::string& name, LayerNormParams& ln, int64_t d) {
  size_layer_norm(ln, d);
  t.push_back({name + ".weight", {d}, ln.weight.data(), ClipParameter::Kind::LayerNormWeight, 0.05f});
  t.push_back({name + ".bias", {d}, ln.bias.data(), ClipParameter::Kind::Vector, 0.05f});
}

void add_linear(std::vector<ClipParameter>& t, const std::string& name, LinearParams& l, int64_t out, int64_t in,
                float scale) {
  size_linear(l, out, in);
  t.push_back({name + ".weight", {out, in}, l.weight.data.data(), ClipParameter::Kind::Matrix, scale});
  t.push_back({name + ".bias", {out}, l.bias.data(), ClipParameter::Kind::Vector, 0.02f});
}

// Residual branches are scaled down with depth so that a random model's stream stays O(1).
float residual_init_scale(const ClipVisionConfig& c) {
  return static_cast<float>(std::pow(static_cast<double>(c.hidden_size), -0.5) /
                            std::sqrt(2.0 * static_cast<double>(c.num_hidden_layers)));
}

void add_block(std::vector<ClipParameter>& t, const ClipVisionConfig& c, ClipBlockWeights& b, int64_t layer) {
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const float attn_scale = residual_init_scale(c);
  const std::string pre = clip_layer_prefix(layer);
  add_layer_norm(t, pre + "layer_norm1", b.layer_norm1, d);
  add_linear(t, pre + "self_attn.q_proj", b.q_proj, d, d, attn_scale);
  add_linear(t, pre + "self_attn.k_proj", b.k_proj, d, d, attn_scale);
  add_linear(t, pre + "self_attn.v_proj", b.v_proj, d, d, attn_scale);
  add_linear(t, pre + "self_attn.out_proj", b.out_proj, d, d,
             static_cast<float>(std::pow(static_cast<double>(d), -0.5)));
  add_layer_norm(t, pre + "layer_norm2", b.layer_norm2, d);
  add_linear(t, pre + "mlp.fc1", b.fc1, f, d, static_cast<float>(std::pow(2.0 * static_cast<double>(d), -0.5)));
  add_linear(t, pre + "mlp.fc2", b.fc2, d, f, attn_scale);
}

}  // namespace

std::vector<ClipParameter> clip_block_parameters(const ClipVisionConfig& c, ClipBlockWeights& block, int64_t layer) {
  std::vector<ClipParameter> t;
  add_block(t, c, block, layer);
  return t;
}

std::vector<ClipParameter> clip_parameters(const ClipVisionConfig& c, ClipVisionWeights& w, bool with_projection) {
  const int64_t d = c.hidden_size, p = c.patch_size, ch = c.num_channels;
  std::vector<ClipParameter> t;
  auto add_ln = [&](const std::string& name, LayerNormParams& ln) { add_layer_norm(t, name, ln, d); };

  if (w.patch_embedding.rows != d || w.patch_embedding.cols != ch * p * p) w.patch_embedding = Matrix(d, ch * p * p);
  t.push_back({"vision_model.embeddings.patch_embedding.weight",
               {d, ch, p, p},
               w.patch_embedding.data.data(),
               ClipParameter::Kind::Matrix,
               0.02f});
  w.class_embedding.resize(static_cast<size_t>(d));
  t.push_back({"vision_model.embeddings.class_embedding",
               {d},
               w.class_embedding.data(),
               ClipParameter::Kind::Vector,
               static_cast<float>(std::pow(static_cast<double>(d), -0.5))});
  if (w.position_embedding.rows != c.tokens() || w.position_embedding.cols != d)
    w.position_embedding = Matrix(c.tokens(), d);
  t.push_back({"vision_model.embeddings.position_embedding.weight",
               {c.tokens(), d},
               w.position_embedding.data.data(),
               ClipParameter::Kind::Matrix,
               0.02f});
  add_ln("vision_model.pre_layrnorm", w.pre_layrnorm);
  w.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) add_block(t, c, w.layers[static_cast<size_t>(l)], l);
  add_ln("vision_model.post_layernorm", w.post_layernorm);
  if (with_projection) {
    if (!w.visual_projection || w.visual_projection->rows != c.projection_dim || w.visual_projection->cols != d)
      w.visual_projection = Matrix(c.projection_dim, d);
    t.push_back({"visual_projection.weight",
                 {c.projection_dim, d},
                 w.visual_projection->data.data(),
                 ClipParameter::Kind::Matrix,
                 static_cast<float>(std::pow(static_cast<double>(d), -0.5))});
  } else {
    w.visual_projection.reset();
  }
  return t;
}

namespace {

// For reading only: the caller has checked the shapes, so nothing is resized.
std::vector<ClipParameter> parameter_table(const ClipVisionConfig& c, const ClipVisionWeights& w) {
  return clip_parameters(c, const_cast<ClipVisionWeights&>(w), w.visual_projection.has_value());
}

size_t expected_size(const ClipParameter& p) {
  return static_cast<size_t>(shape_numel(p.shape));
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Construction and loading

namespace {

void check_shapes(const ClipVisionConfig& c, const ClipVisionWeights& w) {
  auto fail = [](const std::string& name, const std::string& what) {
    throw InputError("CLIP vision weights: tensor '" + name + "': " + what);
  };
  if (w.layers.size() != static_cast<size_t>(c.num_hidden_layers))
    fail("vision_model.encoder.layers",
         std::to_string(w.layers.size()) + " layers, config.json says " + std::to_string(c.num_hidden_layers));
  auto matrix_ok = [](const Matrix& m, int64_t r, int64_t cols) {
    return m.rows == r && m.cols == cols && m.data.size() == static_cast<size_t>(r * cols);
  };
  auto vec_ok = [](const std::vector<float>& v, int64_t n) { return v.size() == static_cast<size_t>(n); };
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  if (!matrix_ok(w.patch_embedding, d, c.num_channels * c.patch_size * c.patch_size))
    fail("vision_model.embeddings.patch_embedding.weight", "wrong shape");
  if (!vec_ok(w.class_embedding, d)) fail("vision_model.embeddings.class_embedding", "wrong shape");
  if (!matrix_ok(w.position_embedding, c.tokens(), d))
    fail("vision_model.embeddings.position_embedding.weight", "wrong shape");
  auto ln_ok = [&](const LayerNormParams& ln) { return vec_ok(ln.weight, d) && vec_ok(ln.bias, d); };
  auto lin_ok = [&](const LinearParams& l, int64_t out, int64_t in) {
    return matrix_ok(l.weight, out, in) && vec_ok(l.bias, out);
  };
  if (!ln_ok(w.pre_layrnorm)) fail("vision_model.pre_layrnorm", "wrong shape");
  if (!ln_ok(w.post_layernorm)) fail("vision_model.post_layernorm", "wrong shape");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto& b = w.layers[static_cast<size_t>(l)];
    const std::string p = clip_layer_prefix(l);
    if (!ln_ok(b.layer_norm1) || !ln_ok(b.layer_norm2)) fail(p + "layer_norm", "wrong shape");
    if (!lin_ok(b.q_proj, d, d) || !lin_ok(b.k_proj, d, d) || !lin_ok(b.v_proj, d, d) || !lin_ok(b.out_proj, d, d))
      fail(p + "self_attn", "wrong shape");
    if (!lin_ok(b.fc1, f, d)) fail(p + "mlp.fc1", "wrong shape");
    if (!lin_ok(b.fc2, d, f)) fail(p + "mlp.fc2", "wrong shape");
  }
  if (w.visual_projection && !matrix_ok(*w.visual_projection, c.projection_dim, d))
    fail("visual_projection.weight", "wrong shape");
}

void check_stored_shape(const CheckpointReader& ckpt, const std::string& name, const Shape& shape) {
  if (!ckpt.contains(name)) throw InputError(ckpt.path(), name, "missing (needed by a CLIP vision model)");
  const TensorInfo& info = ckpt.info(name);
  if (info.shape != shape)
    throw InputError(ckpt.path(), name,
                     "has shape " + shape_to_string(info.shape) + ", config.json implies " + shape_to_string(shape));
}

// Buffers are sized from config.json: before any is, the stored tensors that carry each
// dimension must agree with it, so that a config claiming a huge model over small weights
// fails on a shape instead of allocating (or overflowing) what it claims. Every matrix
// shape ([d, d], [f, d], [tokens, d], ...) is then one the files really hold, in every layer.
void check_config_against_weights(const CheckpointReader& ckpt, const ClipVisionConfig& c, bool with_projection,
                                  int64_t first_layer, int64_t last_layer) {
  const int64_t d = c.hidden_size;
  if (first_layer == 0 && last_layer == c.num_hidden_layers - 1) {
    check_stored_shape(ckpt, "vision_model.embeddings.patch_embedding.weight",
                       {d, c.num_channels, c.patch_size, c.patch_size});
    check_stored_shape(ckpt, "vision_model.embeddings.position_embedding.weight", {c.tokens(), d});
  }
  for (int64_t layer = first_layer; layer <= last_layer; ++layer) {
    check_stored_shape(ckpt, clip_layer_prefix(layer) + "self_attn.q_proj.weight", {d, d});
    check_stored_shape(ckpt, clip_layer_prefix(layer) + "mlp.fc1.weight", {c.intermediate_size, d});
  }
  if (with_projection) check_stored_shape(ckpt, "visual_projection.weight", {c.projection_dim, d});
}

// Copies a stored tensor, converted to F32, into the table's slot after checking it.
void load_parameter(const CheckpointReader& ckpt, const ClipParameter& p) {
  check_stored_shape(ckpt, p.name, p.shape);
  const TensorInfo& info = ckpt.info(p.name);
  if (info.dtype != DType::F32 && info.dtype != DType::F16 && info.dtype != DType::BF16 && info.dtype != DType::F64)
    throw InputError(ckpt.path(), p.name,
                     "dtype " + std::string(dtype_name(info.dtype)) + " is not a float dtype (F32, F16, BF16, F64)");
  const Tensor values = ckpt.tensor(p.name).to(DType::F32);
  const auto src = values.data<float>();
  std::copy(src.begin(), src.end(), p.data);
  ckpt.release(p.name);
}

}  // namespace

namespace {

bool is_qkv(const std::string& name) {
  for (const char* proj : {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."})
    if (name.find(proj) != std::string::npos) return true;
  return false;
}

// clip_parameters in the flat order: each layer's q, k and v weights, then their biases,
// where its q_proj.weight stands.
std::vector<ClipParameter> flat_order(const ClipVisionConfig& config, ClipVisionWeights& weights,
                                      bool with_projection) {
  const std::vector<ClipParameter> params = clip_parameters(config, weights, with_projection);
  auto find = [&](const std::string& name) {
    return *std::find_if(params.begin(), params.end(), [&](const ClipParameter& p) { return p.name == name; });
  };
  std::vector<ClipParameter> order;
  for (const ClipParameter& p : params) {
    if (!is_qkv(p.name)) {
      order.push_back(p);
      continue;
    }
    const std::string suffix = "q_proj.weight";
    if (!p.name.ends_with(suffix)) continue;  // placed with its layer's q_proj.weight
    const std::string prefix = p.name.substr(0, p.name.size() - suffix.size());
    for (const char* part : {"weight", "bias"})
      for (const char* proj : {"q_proj.", "k_proj.", "v_proj."}) order.push_back(find(prefix + proj + part));
  }
  return order;
}

ParameterLayout layout_of(const std::vector<ClipParameter>& order) {
  ParameterLayout layout;
  for (const ClipParameter& p : order) {
    ParameterSlot s;
    s.name = p.name;
    s.shape = p.shape;
    s.offset = layout.total;
    s.size = static_cast<size_t>(shape_numel(p.shape));
    s.decay = p.kind == ClipParameter::Kind::Matrix && p.name.find("embedding") == std::string::npos;
    layout.total += s.size;
    layout.slots.push_back(std::move(s));
  }
  return layout;
}

}  // namespace

ParameterLayout clip_parameter_layout(const ClipVisionConfig& config, bool with_projection) {
  ClipVisionWeights scratch;
  return layout_of(flat_order(config, scratch, with_projection));
}

std::vector<float> flatten_clip_weights(const ClipVisionConfig& config, const ClipVisionWeights& weights) {
  ClipVisionWeights copy = weights;  // clip_parameters() takes mutable weights; shapes match
  std::vector<float> flat;
  for (const ClipParameter& p : flat_order(config, copy, weights.visual_projection.has_value()))
    flat.insert(flat.end(), p.data, p.data + shape_numel(p.shape));
  return flat;
}

ClipVisionWeights unflatten_clip_weights(const ClipVisionConfig& config, std::span<const float> flat,
                                         bool with_projection) {
  ClipVisionWeights w;
  size_t offset = 0;
  for (const ClipParameter& p : flat_order(config, w, with_projection)) {
    const auto n = static_cast<size_t>(shape_numel(p.shape));
    if (offset + n > flat.size()) throw std::invalid_argument("unflatten_clip_weights: parameter vector too short");
    std::copy(flat.begin() + static_cast<long>(offset), flat.begin() + static_cast<long>(offset + n), p.data);
    offset += n;
  }
  if (offset != flat.size()) throw std::invalid_argument("unflatten_clip_weights: parameter vector too long");
  return w;
}

ClipVisionModel::ClipVisionModel(ClipVisionConfig config, ClipVisionWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  check_shapes(config_, weights_);
  // From the model's own weights, whose shapes match: nothing is allocated.
  layout_ = layout_of(flat_order(config_, weights_, weights_.visual_projection.has_value()));
}

std::unique_ptr<Model> ClipVisionModel::without_projection() const {
  ClipVisionWeights weights;
  weights.patch_embedding = weights_.patch_embedding;
  weights.class_embedding = weights_.class_embedding;
  weights.position_embedding = weights_.position_embedding;
  weights.pre_layrnorm = weights_.pre_layrnorm;
  weights.layers = weights_.layers;
  weights.post_layernorm = weights_.post_layernorm;
  return std::make_unique<ClipVisionModel>(config_, std::move(weights));
}

std::unique_ptr<Model> ClipVisionModel::with_parameters(std::span<const float> flat) const {
  return std::make_unique<ClipVisionModel>(
      config_, unflatten_clip_weights(config_, flat, weights_.visual_projection.has_value()));
}

ClipBlockWeights load_clip_block(const CheckpointReader& checkpoint, const ClipVisionConfig& config, int64_t layer) {
  if (layer < 0 || layer >= config.num_hidden_layers)
    throw std::out_of_range("load_clip_block: layer " + std::to_string(layer) + " is not a block of the model");
  check_config_against_weights(checkpoint, config, false, layer, layer);
  ClipBlockWeights block;
  const auto table = clip_block_parameters(config, block, layer);
  parallel_for(table.size(), [&](size_t i) { load_parameter(checkpoint, table[i]); });
  return block;
}

ClipVisionModel ClipVisionModel::load(const std::filesystem::path& checkpoint) {
  CheckpointReader ckpt(checkpoint);
  if (!ckpt.config())
    throw InputError(ckpt.path(), "no config.json beside the weights (a CLIP vision model needs its config)");
  const auto config = ClipVisionConfig::from_json(*ckpt.config(), (ckpt.dir() / "config.json").string());
  ClipVisionWeights weights;
  const bool with_projection = ckpt.contains("visual_projection.weight");
  check_config_against_weights(ckpt, config, with_projection, 0, config.num_hidden_layers - 1);
  const auto table = clip_parameters(config, weights, with_projection);
  parallel_for(table.size(), [&](size_t i) { load_parameter(ckpt, table[i]); });
  return ClipVisionModel(config, std::move(weights));
}

int64_t ClipVisionModel::feature_dim() const {
  return weights_.visual_projection ? weights_.visual_projection->rows : config_.hidden_size;
}

// ---------------------------------------------------------------------------------------
// Forward

namespace {

void resize(std::vector<float>& v, size_t n) {
  if (v.size() != n) v.resize(n);
}

// q, k and v in one GEMM against their stacked weights [3D, D]: one large product runs
// closer to the machine's peak than three of a third the size. Hugging Face scales q
// (bias included) by head_dim^-0.5 before the attention product.
void qkv_projection(const ClipVisionConfig& c, const ClipBlockWeights& w, const float* x, int64_t rows,
                    Stream::Scratch& s) {
  const int64_t d = c.hidden_size;
  const size_t dd = static_cast<size_t>(d * d);
  resize(s.weights, 3 * dd);
  std::copy(w.q_proj.weight.data.begin(), w.q_proj.weight.data.end(), s.weights.begin());
  std::copy(w.k_proj.weight.data.begin(), w.k_proj.weight.data.end(), s.weights.begin() + static_cast<long>(dd));
  std::copy(w.v_proj.weight.data.begin(), w.v_proj.weight.data.end(), s.weights.begin() + static_cast<long>(2 * dd));
  resize(s.qkv, static_cast<size_t>(rows * 3 * d));
  sgemm_fixed_blocks(false, true, rows, 3 * d, d, 1.0f, x, d, s.weights.data(), d, 0.0f, s.qkv.data(), 3 * d);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim())));
  const float *bq = w.q_proj.bias.data(), *bk = w.k_proj.bias.data(), *bv = w.v_proj.bias.data();
  parallel_chunks(static_cast<size_t>(rows), 256, [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      float* q = s.qkv.data() + r * static_cast<size_t>(3 * d);
      float *k = q + d, *v = q + 2 * d;
      for (int64_t i = 0; i < d; ++i) {
        q[i] = (q[i] + bq[i]) * scale;
        k[i] += bk[i];
        v[i] += bv[i];
      }
    }
  });
}

}  // namespace

Stream ClipVisionModel::embed(std::span<const float> pixels, int64_t batch) const {
  Stream h;
  embed(pixels, batch, h);
  return h;
}

void ClipVisionModel::embed(std::span<const float> pixels, int64_t batch, Stream& h) const {
  const auto& c = config_;
  const int64_t g = c.patches_per_side(), p = c.patch_size, ch = c.num_channels, side = c.image_size;
  const int64_t d = c.hidden_size, tokens = c.tokens(), kernel = ch * p * p;
  if (batch < 0 || pixels.size() != static_cast<size_t>(batch * ch * side * side))
    throw std::invalid_argument("ClipVisionModel::embed: " + std::to_string(pixels.size()) + " pixel values for " +
                                std::to_string(batch) + " images of " + std::to_string(ch) + "x" +
                                std::to_string(side) + "x" + std::to_string(side));
  h.set_uniform(batch, tokens, d);
  if (batch == 0) return;

  // The stride-P convolution is one GEMM over every patch of the batch (im2col), with the
  // patch flattened in the kernel's (channel, y, x) order.
  const int64_t patches = batch * g * g;
  auto& cols = h.scratch.hidden;
  resize(cols, static_cast<size_t>(patches * kernel));
  im2col_patches(pixels.data(), batch, ch, side, p, cols.data());
  auto& out = h.scratch.normed;
  resize(out, static_cast<size_t>(patches * d));
  sgemm_fixed_blocks(false, true, patches, d, kernel, 1.0f, cols.data(), kernel, weights_.patch_embedding.data.data(),
                     kernel, 0.0f, out.data(), d);

  const float* pos = weights_.position_embedding.data.data();
  parallel_chunks(static_cast<size_t>(batch * tokens), 128, [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const int64_t b = static_cast<int64_t>(r) / tokens, t = static_cast<int64_t>(r) % tokens;
      const float* src = t == 0 ? weights_.class_embedding.data() : out.data() + (b * g * g + t - 1) * d;
      float* dst = h.row(static_cast<int64_t>(r));
      for (int64_t i = 0; i < d; ++i) dst[i] = src[i] + pos[t * d + i];
    }
  });
  layer_norm(h.data.data(), h.data.data(), batch * tokens, d, weights_.pre_layrnorm, c.layer_norm_eps);
}

void run_clip_block(const ClipVisionConfig& c, const ClipBlockWeights& w, int64_t layer, Stream& h,
                    const SiteTap& tap) {
  const int64_t rows = h.rows(), d = h.width, f = c.intermediate_size;
  if (h.sequences() * c.tokens() != rows)
    throw std::invalid_argument("run_clip_block: a stream that is not a batch of whole images");
  if (d != c.hidden_size) throw std::invalid_argument("run_clip_block: hidden states of the wrong width");
  if (rows == 0) return;
  auto& s = h.scratch;
  const size_t n = static_cast<size_t>(rows * d);
  resize(s.normed, n);
  resize(s.context, n);
  resize(s.hidden, static_cast<size_t>(rows * f));

  layer_norm(h.data.data(), s.normed.data(), rows, d, w.layer_norm1, c.layer_norm_eps);
  call_tap(tap, layer, SiteRole::AttentionInput, s.normed.data(), rows, d);
  qkv_projection(c, w, s.normed.data(), rows, s);
  // q is scaled already: the attention's own scale is 1.
  attention_forward<float>(s.qkv.data(), h.sequences(), c.tokens(), d, c.num_attention_heads, 1.0f, nullptr,
                           s.context.data());
  call_tap(tap, layer, SiteRole::AttentionOutput, s.context.data(), rows, d);
  linear(s.context.data(), rows, w.out_proj, h.data.data(), true);

  layer_norm(h.data.data(), s.normed.data(), rows, d, w.layer_norm2, c.layer_norm_eps);
  call_tap(tap, layer, SiteRole::MlpInput, s.normed.data(), rows, d);
  linear(s.normed.data(), rows, w.fc1, s.hidden.data(), false);
  activate(s.hidden.data(), s.hidden.size(), c.hidden_act);
  call_tap(tap, layer, SiteRole::MlpOutput, s.hidden.data(), rows, f);
  linear(s.hidden.data(), rows, w.fc2, h.data.data(), true);
}

void ClipVisionModel::run_block(int64_t layer, Stream& h, const SiteTap& tap) const {
  run_clip_block(config_, weights_.layers.at(static_cast<size_t>(layer)), layer, h, tap);
}

void ClipVisionModel::run_block(int64_t layer, const BlockWeights& block, Stream& h, const SiteTap& tap) const {
  run_clip_block(config_, dynamic_cast<const ClipBlockWeights&>(block), layer, h, tap);
}

std::vector<LinearSiteSpec> ClipVisionModel::linear_sites(int64_t layer) const {
  std::vector<LinearSiteSpec> sites;
  for (auto& s : clip_linear_sites(config_, weights_.visual_projection.has_value()))
    if (s.layer == layer) sites.push_back(std::move(s));
  return sites;
}

std::vector<std::string> ClipVisionModel::block_tensor_names(int64_t layer) const {
  ClipBlockWeights shapes;
  std::vector<std::string> names;
  for (const auto& p : clip_block_parameters(config_, shapes, layer)) names.push_back(p.name);
  return names;
}

std::unique_ptr<BlockWeights> ClipVisionModel::read_block(int64_t layer) const {
  return std::make_unique<ClipBlockWeights>(weights_.layers.at(static_cast<size_t>(layer)));
}

std::unique_ptr<BlockWeights> ClipVisionModel::read_block(const CheckpointReader& checkpoint, int64_t layer) const {
  return std::make_unique<ClipBlockWeights>(load_clip_block(checkpoint, config_, layer));
}

Matrix ClipVisionModel::pool(const Stream& h, const SiteTap& tap) const {
  const int64_t d = config_.hidden_size;
  Matrix cls = pick_tokens(h, TokenPick::First);
  layer_norm(cls.data.data(), cls.data.data(), cls.rows, d, weights_.post_layernorm, config_.layer_norm_eps);
  if (!weights_.visual_projection) return cls;
  call_tap(tap, -1, SiteRole::Head, cls.data.data(), cls.rows, d);
  return matmul(cls, *weights_.visual_projection, false, true);
}

Matrix ClipVisionModel::features(std::span<const float> pixels, int64_t batch, const SiteTap& tap) const {
  // Without a tap (which sees whole-batch activations in order), a large batch runs as
  // shards of kShardImages images, one per thread with single-threaded BLAS inside, each
  // thread reusing one set of buffers: threaded GEMMs of a zoo-sized model spent more time
  // at their barriers than multiplying, and fresh buffers per shard more in page faults.
  // Every operation works row by row or image by image, so the shards compute what the whole
  // batch would (up to the GEMM's rounding; the tests hold both to the reference forward).
  constexpr int64_t kShardImages = 32;
  // The same shards on any thread count (one thread runs them in turn): the same bits.
  const int threads = num_threads();
  if (!tap && batch > kShardImages) {
    const size_t image_floats = static_cast<size_t>(config_.num_channels * config_.image_size * config_.image_size);
    if (pixels.size() != static_cast<size_t>(batch) * image_floats)
      throw std::invalid_argument("ClipVisionModel::features: " + std::to_string(pixels.size()) + " pixel values for " +
                                  std::to_string(batch) + " images");
    Matrix out(batch, feature_dim());
    std::vector<Stream> states(static_cast<size_t>(threads));
    const int64_t shards = (batch + kShardImages - 1) / kShardImages;
    parallel_for(static_cast<size_t>(shards), [&](size_t s) {
      const int64_t first = static_cast<int64_t>(s) * kShardImages, n = std::min(kShardImages, batch - first);
      Stream& h = states[static_cast<size_t>(thread_index())];
      embed(pixels.subspan(static_cast<size_t>(first) * image_floats, static_cast<size_t>(n) * image_floats), n, h);
      for (int64_t l = 0; l < config_.num_hidden_layers; ++l) run_block(l, h);
      const Matrix f = pool(h);
      std::copy(f.data.begin(), f.data.end(), out.row(first));
    });
    return out;
  }
  Stream h = embed(pixels, batch);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) run_block(l, h, tap);
  return pool(h, tap);
}

// ---------------------------------------------------------------------------------------
// Random weights and saving

namespace {

// Approximately normal (a sum of four uniforms, rescaled to unit variance) from a counter.
float normal_noise(uint64_t key, uint64_t i) {
  float sum = 0;
  for (uint64_t j = 0; j < 4; ++j) sum += static_cast<float>(mix64(key ^ mix64(4 * i + j)) >> 40) * 0x1p-24f - 0.5f;
  return sum * 1.7320508f;  // variance of the sum: 4/12
}

}  // namespace

ClipVisionWeights random_clip_vision_weights(const ClipVisionConfig& config, uint64_t seed, bool with_projection) {
  ClipVisionWeights w;
  const auto table = clip_parameters(config, w, with_projection);
  parallel_for(table.size(), [&](size_t t) {
    const ClipParameter& p = table[t];
    uint64_t key = mix64(seed);
    for (unsigned char ch : p.name) key = mix64(key ^ ch);
    const size_t n = expected_size(p);
    const float offset = p.kind == ClipParameter::Kind::LayerNormWeight ? 1.0f : 0.0f;
    for (size_t i = 0; i < n; ++i) p.data[i] = offset + p.init_scale * normal_noise(key, i);
  });
  return w;
}

void save_clip_vision(const std::filesystem::path& dir, const ClipVisionConfig& config,
                      const ClipVisionWeights& weights, DType dtype, bool force,
                      const std::optional<nlohmann::json>& preprocessor_config) {
  check_shapes(config, weights);
  AtomicOutput output(dir, force);
  const auto table = parameter_table(config, weights);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ClipParameter& p : table) {
    const Tensor f32 = Tensor::from_f32(p.shape, std::span<const float>(p.data, expected_size(p)));
    tensors.emplace_back(p.name, f32.to(dtype));
  }
  save_safetensors(output.staging() / "model.safetensors", tensors);
  nlohmann::json json = config.to_json();
  json["architectures"] = {weights.visual_projection ? "CLIPVisionModelWithProjection" : "CLIPVisionModel"};
  json["torch_dtype"] = torch_dtype_name(dtype);
  write_text_file(output.staging() / "config.json", json.dump(2) + "\n");
  if (preprocessor_config)
    write_text_file(output.staging() / "preprocessor_config.json", preprocessor_config->dump(2) + "\n");
  output.commit();
}

namespace {

// The tensor table from config.json alone: one scratch block (its shapes) at a time, and the
// tensors outside the blocks from a one-layer model's table, split around its block.
ArchitectureTable clip_architecture_table(const CheckpointReader& checkpoint) {
  const std::string where = (checkpoint.dir() / "config.json").string();
  const ClipVisionConfig config = ClipVisionConfig::from_json(*checkpoint.config(), where);
  ArchitectureTable table;
  ClipBlockWeights scratch;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    auto& names = table.blocks.emplace_back();
    for (const ClipParameter& p : clip_block_parameters(config, scratch, l)) names.push_back(p.name);
  }
  ClipVisionConfig one_layer = config;
  one_layer.num_hidden_layers = 1;
  ClipVisionWeights outside;
  const std::string block_prefix = clip_layer_prefix(0);
  bool past_block = false;
  for (const ClipParameter& p : clip_parameters(one_layer, outside, /*with_projection=*/true)) {
    if (p.name.starts_with(block_prefix)) {
      past_block = true;
      continue;
    }
    (past_block ? table.after : table.before).push_back(p.name);
  }
  return table;
}

// A config.json's model: with its visual projection unless `architectures` names the
// projection-less CLIPVisionModel (the zoo's contrastive pretraining trains through it).
std::unique_ptr<Model> random_clip_vision_model(const nlohmann::json& json, uint64_t seed, const std::string& where) {
  const ClipVisionConfig config = ClipVisionConfig::from_json(json, where);
  bool with_projection = true;
  if (json.contains("architectures") && json["architectures"].is_array())
    for (const auto& a : json["architectures"])
      if (a == "CLIPVisionModel") with_projection = false;
  return std::make_unique<ClipVisionModel>(config, random_clip_vision_weights(config, seed, with_projection));
}

const bool registered = register_model_family(
    {"CLIP vision", [](const std::string& type) { return type == "clip_vision_model" || type == "clip"; },
     [](const std::filesystem::path& checkpoint) -> std::unique_ptr<Model> {
       return std::make_unique<ClipVisionModel>(ClipVisionModel::load(checkpoint));
     },
     clip_architecture_table, random_clip_vision_model});

}  // namespace

}  // namespace amalgam
