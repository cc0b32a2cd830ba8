#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numbers>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/tensor.h"
#include "io/json_file.h"

namespace amalgam {

// ---------------------------------------------------------------------------------------
// Families

namespace {

std::map<std::string, DecoderFamily>& families() {
  static std::map<std::string, DecoderFamily> registry;
  return registry;
}

}  // namespace

int64_t config_int(const nlohmann::json& j, const char* key, std::optional<int64_t> fallback,
                   const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) {
    if (fallback) return *fallback;
    throw InputError(where, std::string("config key '") + key + "' is missing");
  }
  if (!j[key].is_number_integer() || j[key].get<int64_t>() <= 0)
    throw InputError(where, std::string("config key '") + key + "' must be a positive integer, got " + j[key].dump());
  return j[key].get<int64_t>();
}

double config_number(const nlohmann::json& j, const char* key, double fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number() || !(j[key].get<double>() > 0))
    throw InputError(where, std::string("config key '") + key + "' must be a positive number, got " + j[key].dump());
  return j[key].get<double>();
}

bool config_flag(const nlohmann::json& j, const char* key, bool fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) throw InputError(where, std::string("config key '") + key + "' must be true or false");
  return j[key].get<bool>();
}

namespace {

RopeConfig read_rope(const nlohmann::json& j, const std::string& where) {
  RopeConfig rope;
  rope.theta = config_number(j, "rope_theta", 10000.0, where);
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return rope;
  const auto& s = j["rope_scaling"];
  if (!s.is_object()) throw InputError(where, "config key 'rope_scaling' must be an object");
  // "rope_type" since transformers 4.43; "type" before.
  const std::string type = s.value("rope_type", s.value("type", std::string("default")));
  if (type == "default") return rope;
  rope.factor = config_number(s, "factor", 1.0, where);
  if (type == "linear") {
    rope.scaling = RopeConfig::Scaling::Linear;
  } else if (type == "llama3") {
    rope.scaling = RopeConfig::Scaling::Llama3;
    rope.low_freq_factor = config_number(s, "low_freq_factor", 1.0, where);
    rope.high_freq_factor = config_number(s, "high_freq_factor", 4.0, where);
    rope.original_max_position_embeddings = config_int(s, "original_max_position_embeddings", 8192, where);
    if (rope.high_freq_factor <= rope.low_freq_factor)
      throw InputError(where, "config key 'rope_scaling': high_freq_factor must exceed low_freq_factor");
  } else {
    throw InputError(
        where, "config key 'rope_scaling': rope_type '" + type + "' is not supported (default, linear and llama3 are)");
  }
  return rope;
}

// HF's inverse frequencies, rescaled as the config says (transformers' _compute_llama3_parameters).
std::vector<double> inverse_frequencies(const DecoderConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(c.rope.theta, static_cast<double>(2 * i) / static_cast<double>(c.head_dim));
    if (c.rope.scaling == RopeConfig::Scaling::Linear) f /= c.rope.factor;
    if (c.rope.scaling == RopeConfig::Scaling::Llama3) {
      const double old_context = static_cast<double>(c.rope.original_max_position_embeddings);
      const double low_wavelen = old_context / c.rope.low_freq_factor;
      const double high_wavelen = old_context / c.rope.high_freq_factor;
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= c.rope.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (old_context / wavelen - c.rope.low_freq_factor) / (c.rope.high_freq_factor - c.rope.low_freq_factor);
        f = (1 - smooth) * f / c.rope.factor + smooth * f;
      }
    }
    inv[static_cast<size_t>(i)] = f;
  }
  return inv;
}

}  // namespace

bool register_decoder_family(DecoderFamily family) {
  const std::string name = family.model_type;
  families().insert_or_assign(name, std::move(family));
  return true;
}

const DecoderFamily* find_decoder_family(const std::string& model_type) {
  const auto it = families().find(model_type);
  return it == families().end() ? nullptr : &it->second;
}

DecoderConfig read_decoder_config(const nlohmann::json& json, const std::string& where) {
  const std::string type = json.is_object() ? json.value("model_type", "") : "";
  const DecoderFamily* family = find_decoder_family(type);
  if (!family) {
    std::string known;
    for (const auto& name : decoder_family_names()) known += (known.empty() ? "" : ", ") + name;
    throw InputError(where, "model_type '" + type + "' is not a decoder family amalgam runs (" + known +
                                "); data-free merging works on any architecture");
  }
  DecoderConfig config = family->read_config(json, where);
  config.model_type = type;
  return config;
}

std::optional<nlohmann::json> find_decoder_shape(const std::string& name) {
  for (const auto& [type, family] : families()) {
    const auto it = family.shapes.find(name);
    if (it != family.shapes.end()) return it->second;
  }
  return std::nullopt;
}

std::vector<std::string> decoder_shape_names() {
  std::vector<std::string> names;
  for (const auto& [type, family] : families())
    for (const auto& [name, config] : family.shapes) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

bool is_decoder_checkpoint(const std::filesystem::path& checkpoint) {
  const auto dir = std::filesystem::is_directory(checkpoint) ? checkpoint : checkpoint.parent_path();
  if (!std::filesystem::is_regular_file(dir / "config.json")) return false;
  const auto config = read_json_file(dir / "config.json");
  return config.is_object() && config.contains("model_type") && config["model_type"].is_string() &&
         find_decoder_family(config["model_type"].get<std::string>()) != nullptr;
}

std::vector<std::string> decoder_family_names() {
  std::vector<std::string> names;
  for (const auto& [name, family] : families()) names.push_back(name);
  return names;
}

DecoderConfig read_llama_like_config(const nlohmann::json& j, const std::string& where) {
  DecoderConfig c;
  c.model_type = j.value("model_type", "");
  c.vocab_size = config_int(j, "vocab_size", std::nullopt, where);
  c.hidden_size = config_int(j, "hidden_size", std::nullopt, where);
  c.intermediate_size = config_int(j, "intermediate_size", std::nullopt, where);
  c.num_hidden_layers = config_int(j, "num_hidden_layers", std::nullopt, where);
  c.num_attention_heads = config_int(j, "num_attention_heads", std::nullopt, where);
  c.num_key_value_heads = config_int(j, "num_key_value_heads", c.num_attention_heads, where);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw InputError(where, "config: num_attention_heads (" + std::to_string(c.num_attention_heads) +
                                ") must be a multiple of num_key_value_heads (" +
                                std::to_string(c.num_key_value_heads) + ")");
  if (!j.contains("head_dim") && c.hidden_size % c.num_attention_heads != 0)
    throw InputError(where, "config: hidden_size must be a multiple of num_attention_heads, or head_dim given");
  c.head_dim = config_int(j, "head_dim", c.hidden_size / c.num_attention_heads, where);
  if (c.head_dim % 2 != 0) throw InputError(where, "config key 'head_dim' must be even (rotary embedding)");
  c.norm_eps = config_number(j, "rms_norm_eps", 1e-6, where);
  c.rope = read_rope(j, where);
  c.attention_bias = config_flag(j, "attention_bias", false, where);
  c.output_bias = c.attention_bias;
  c.mlp_bias = config_flag(j, "mlp_bias", false, where);
  c.tie_word_embeddings = config_flag(j, "tie_word_embeddings", false, where);
  return c;
}

// ---------------------------------------------------------------------------------------
// Loading

DecoderModel::DecoderModel(DecoderConfig config, std::unique_ptr<CheckpointReader> checkpoint)
    : config_(std::move(config)), checkpoint_(std::move(checkpoint)) {
  inv_freq_ = inverse_frequencies(config_);
}

namespace {

void check_shape(const CheckpointReader& ckpt, const std::string& name, const Shape& expected) {
  const auto& info = ckpt.info(name);  // InputError naming the checkpoint when missing
  if (info.shape != expected)
    throw InputError(
        ckpt.path(), name,
        "shape " + shape_to_string(info.shape) + " does not match the config's " + shape_to_string(expected));
  if (info.dtype != DType::F32 && info.dtype != DType::F16 && info.dtype != DType::BF16)
    throw InputError(ckpt.path(), name,
                     std::string("dtype ") + std::string(dtype_name(info.dtype)) +
                         " is not one a decoder computes from (F32, F16, BF16)");
}

std::string layout_block_name(const DecoderLayout& layout, int64_t layer, const std::string& module) {
  std::string prefix = layout.block;
  const auto at = prefix.find("{}");
  if (at != std::string::npos) prefix.replace(at, 2, std::to_string(layer));
  return prefix + module;
}

// The tensors of one block with their shapes (biases only where the config has them), named
// by the family's layout through `name`.
std::vector<std::pair<std::string, Shape>> block_tensors(const DecoderConfig& c,
                                                         const std::function<std::string(const std::string&)>& name) {
  const auto& l = c.layout;
  const int64_t d = c.hidden_size, q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  const int64_t inter = c.intermediate_size;
  std::vector<std::pair<std::string, Shape>> t;
  // A linear module: weight [out, in] ([in, out] for Conv1D), and its bias.
  auto linear = [&](const std::string& module, int64_t out, int64_t in, bool bias) {
    t.push_back({name(module + ".weight"), l.conv1d ? Shape{in, out} : Shape{out, in}});
    if (bias) t.push_back({name(module + ".bias"), {out}});
  };
  auto norm = [&](const std::string& module, int64_t width) {
    t.push_back({name(module + ".weight"), {width}});
    if (c.norm_bias) t.push_back({name(module + ".bias"), {width}});
  };
  norm(l.input_norm, d);
  if (l.qkv.empty()) {
    linear(l.q, q, d, c.attention_bias);
    linear(l.k, kv, d, c.attention_bias);
    linear(l.v, kv, d, c.attention_bias);
  } else {
    linear(l.qkv, q + 2 * kv, d, c.attention_bias);
  }
  if (c.qk_norm) {
    t.push_back({name(l.q_norm + ".weight"), {c.head_dim}});
    t.push_back({name(l.k_norm + ".weight"), {c.head_dim}});
  }
  linear(l.o, d, q, c.output_bias);
  norm(l.post_attention_norm, d);
  if (!l.gate.empty()) linear(l.gate, inter, d, c.mlp_bias);
  linear(l.up, inter, d, c.mlp_bias);
  linear(l.down, d, inter, c.mlp_bias);
  return t;
}

// Into `out`, reusing its memory: a block's weights converted into the last block's buffers
// cost no page faults.
void read_f32_into(const CheckpointReader& ckpt, const std::string& name, std::vector<float>& out) {
  const Tensor t = ckpt.tensor(name);
  out.resize(static_cast<size_t>(t.numel()));
  convert_to_f32(t.dtype(), t.bytes().data(), out.data(), out.size());
  ckpt.release(name);
}

std::vector<float> read_f32(const CheckpointReader& ckpt, const std::string& name) {
  std::vector<float> out;
  read_f32_into(ckpt, name, out);
  return out;
}

Matrix transposed(const Matrix& m) {
  Matrix t(m.cols, m.rows);
  for (int64_t i = 0; i < m.rows; ++i)
    for (int64_t j = 0; j < m.cols; ++j) t(j, i) = m(i, j);
  return t;
}

// A linear module's weight as [out, in] (Conv1D's [in, out] transposed) and its bias, into
// `l`'s buffers.
void read_linear_into(const CheckpointReader& ckpt, const std::string& module, bool bias, bool conv1d,
                      LinearParams& l) {
  const auto& info = ckpt.info(module + ".weight");
  l.weight.rows = info.shape.at(0);
  l.weight.cols = info.shape.at(1);
  read_f32_into(ckpt, module + ".weight", l.weight.data);
  if (conv1d) l.weight = transposed(l.weight);
  if (bias)
    read_f32_into(ckpt, module + ".bias", l.bias);
  else
    l.bias.clear();
}

LinearParams read_linear(const CheckpointReader& ckpt, const std::string& module, bool bias, bool conv1d) {
  LinearParams l;
  read_linear_into(ckpt, module, bias, conv1d, l);
  return l;
}

// Rows [first, first + count) of a linear module: q, k and v out of a stacked module.
LinearParams rows_of(const LinearParams& l, int64_t first, int64_t count) {
  LinearParams part;
  part.weight = Matrix(count, l.weight.cols);
  std::copy_n(l.weight.row(first), count * l.weight.cols, part.weight.data.begin());
  if (!l.bias.empty()) part.bias.assign(l.bias.begin() + first, l.bias.begin() + first + count);
  return part;
}

}  // namespace

std::vector<std::pair<std::string, Shape>> decoder_parameters(const DecoderConfig& c) {
  const auto& l = c.layout;
  std::vector<std::pair<std::string, Shape>> t = {{l.embed, {c.vocab_size, c.hidden_size}}};
  if (!l.positions.empty()) t.push_back({l.positions, {c.max_position_embeddings, c.hidden_size}});
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const auto block = block_tensors(c, [&](const std::string& m) { return layout_block_name(l, layer, m); });
    t.insert(t.end(), block.begin(), block.end());
  }
  t.push_back({l.final_norm + ".weight", {c.hidden_size}});
  if (c.norm_bias) t.push_back({l.final_norm + ".bias", {c.hidden_size}});
  if (!c.tie_word_embeddings) t.push_back({l.head, {c.vocab_size, c.hidden_size}});
  return t;
}

namespace {

// A checkpoint's config, its layout named as the checkpoint names its tensors: a base-model
// checkpoint (GPT2Model rather than GPT2LMHeadModel) stores them without the prefix.
DecoderConfig decoder_config_of(const CheckpointReader& ckpt) {
  const auto config_file = ckpt.dir() / "config.json";
  if (!ckpt.config()) throw InputError(config_file, "not found: a language model needs its config.json");
  DecoderConfig config = read_decoder_config(*ckpt.config(), config_file.string());
  auto& layout = config.layout;
  if (!layout.prefix.empty() && !ckpt.contains(layout.embed) &&
      ckpt.contains(layout.embed.substr(layout.prefix.size()))) {
    for (auto* name : {&layout.embed, &layout.positions, &layout.final_norm, &layout.block})
      if (name->starts_with(layout.prefix)) name->erase(0, layout.prefix.size());
  }
  return config;
}

}  // namespace

DecoderModel DecoderModel::open(const std::filesystem::path& dir) {
  auto ckpt = std::make_unique<CheckpointReader>(dir);
  DecoderConfig config = decoder_config_of(*ckpt);
  DecoderModel model(std::move(config), std::move(ckpt));
  const auto& c = model.config_;
  const auto& r = *model.checkpoint_;
  check_shape(r, c.layout.embed, {c.vocab_size, c.hidden_size});
  if (!c.layout.positions.empty()) check_shape(r, c.layout.positions, {c.max_position_embeddings, c.hidden_size});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (const auto& [name, shape] : block_tensors(c, [&](const std::string& m) { return model.block_name(l, m); }))
      check_shape(r, name, shape);
  check_shape(r, c.layout.final_norm + ".weight", {c.hidden_size});
  if (c.norm_bias) check_shape(r, c.layout.final_norm + ".bias", {c.hidden_size});
  // Tied: the embeddings are the output layer, whatever lm_head a checkpoint also stores
  // (transformers ties them on load).
  model.head_name_ = c.tie_word_embeddings ? c.layout.embed : c.layout.head;
  check_shape(r, model.head_name_, {c.vocab_size, c.hidden_size});
  return model;
}

std::string DecoderModel::block_name(int64_t layer, const std::string& module) const {
  return layout_block_name(config_.layout, layer, module);
}

DecoderBlockWeights DecoderModel::load_block(int64_t layer) const {
  DecoderBlockWeights b;
  load_block(layer, b);
  return b;
}

void DecoderModel::load_block(int64_t layer, DecoderBlockWeights& b) const {
  load_block(*checkpoint_, layer, b);
}

std::unique_ptr<BlockWeights> DecoderModel::read_block(int64_t layer) const {
  return std::make_unique<DecoderBlockWeights>(load_block(layer));
}

std::unique_ptr<BlockWeights> DecoderModel::read_block(const CheckpointReader& checkpoint, int64_t layer) const {
  auto block = std::make_unique<DecoderBlockWeights>();
  load_block(checkpoint, layer, *block);
  return block;
}

void DecoderModel::load_block(const CheckpointReader& r, int64_t layer, DecoderBlockWeights& b) const {
  if (layer < 0 || layer >= config_.num_hidden_layers)
    throw std::out_of_range("DecoderModel::load_block: layer " + std::to_string(layer) + " is not a block");
  const auto& c = config_;
  const auto& l = c.layout;
  auto name = [&](const std::string& module) { return block_name(layer, module); };
  auto norm = [&](const std::string& module, LayerNormParams& n) {
    read_f32_into(r, name(module + ".weight"), n.weight);
    if (c.norm_bias)
      read_f32_into(r, name(module + ".bias"), n.bias);
    else
      n.bias.clear();
  };
  auto linear = [&](const std::string& module, bool bias, LinearParams& into) {
    read_linear_into(r, name(module), bias, l.conv1d, into);
  };
  norm(l.input_norm, b.input_norm);
  norm(l.post_attention_norm, b.post_attention_norm);
  if (l.qkv.empty()) {
    linear(l.q, c.attention_bias, b.q);
    linear(l.k, c.attention_bias, b.k);
    linear(l.v, c.attention_bias, b.v);
  } else {
    const auto qkv = read_linear(r, name(l.qkv), c.attention_bias, l.conv1d);
    const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
    b.q = rows_of(qkv, 0, q);
    b.k = rows_of(qkv, q, kv);
    b.v = rows_of(qkv, q + kv, kv);
  }
  linear(l.o, c.output_bias, b.o);
  if (c.qk_norm) {
    read_f32_into(r, name(l.q_norm + ".weight"), b.q_norm);
    read_f32_into(r, name(l.k_norm + ".weight"), b.k_norm);
  }
  if (!l.gate.empty()) linear(l.gate, c.mlp_bias, b.gate);
  linear(l.up, c.mlp_bias, b.up);
  linear(l.down, c.mlp_bias, b.down);
}

std::vector<std::string> DecoderModel::block_tensor_names(int64_t layer) const {
  std::vector<std::string> names;
  for (const auto& [name, shape] : block_tensors(config_, [&](const std::string& m) { return block_name(layer, m); }))
    names.push_back(name);
  return names;
}

std::vector<LinearSiteSpec> DecoderModel::linear_sites(int64_t layer) const {
  const auto& c = config_;
  const auto& l = c.layout;
  // A site's Gram is named for the module that reads it, or, where several do, for their
  // parent module and what they are: "model.layers.3.self_attn.qkv.gram".
  auto parent = [](const std::string& module) { return module.substr(0, module.rfind('.') + 1); };
  auto weight = [&](const std::string& module) { return block_name(layer, module + ".weight"); };
  auto site = [&](SiteRole role, std::string gram, std::vector<std::string> weights, int64_t width) {
    return LinearSiteSpec{layer, role, block_name(layer, gram + ".gram"), std::move(weights), width, l.conv1d};
  };
  std::vector<LinearSiteSpec> sites;
  if (layer < 0 || layer >= c.num_hidden_layers) return sites;
  if (l.qkv.empty())
    sites.push_back(
        site(SiteRole::AttentionInput, parent(l.q) + "qkv", {weight(l.q), weight(l.k), weight(l.v)}, c.hidden_size));
  else
    sites.push_back(site(SiteRole::AttentionInput, l.qkv, {weight(l.qkv)}, c.hidden_size));
  sites.push_back(site(SiteRole::AttentionOutput, l.o, {weight(l.o)}, c.num_attention_heads * c.head_dim));
  if (l.gate.empty())
    sites.push_back(site(SiteRole::MlpInput, l.up, {weight(l.up)}, c.hidden_size));
  else
    sites.push_back(
        site(SiteRole::MlpInput, parent(l.gate) + "gate_up", {weight(l.gate), weight(l.up)}, c.hidden_size));
  sites.push_back(site(SiteRole::MlpOutput, l.down, {weight(l.down)}, c.intermediate_size));
  return sites;
}

// ---------------------------------------------------------------------------------------
// Forward

Stream DecoderModel::embed(const std::vector<std::vector<int32_t>>& sequences) const {
  return embed_sequences(sequences);
}

Stream DecoderModel::embed_sequences(std::span<const std::vector<int32_t>> sequences) const {
  const auto& c = config_;
  Stream s;
  s.width = c.hidden_size;
  for (const auto& seq : sequences) s.offsets.push_back(s.offsets.back() + static_cast<int64_t>(seq.size()));
  s.data.resize(static_cast<size_t>(s.rows() * s.width));
  const Tensor table = checkpoint_->tensor(c.layout.embed);
  const size_t row_bytes = static_cast<size_t>(c.hidden_size) * dtype_size(table.dtype());
  for (size_t q = 0; q < sequences.size(); ++q)
    for (size_t t = 0; t < sequences[q].size(); ++t) {
      const int32_t id = sequences[q][t];
      if (id < 0 || id >= c.vocab_size)
        throw InputError("token id " + std::to_string(id) + " is outside the vocabulary (vocab_size " +
                         std::to_string(c.vocab_size) + ")");
      const auto row = static_cast<size_t>(s.offsets[q]) + t;
      convert_to_f32(table.dtype(), table.bytes().data() + static_cast<size_t>(id) * row_bytes,
                     s.data.data() + row * static_cast<size_t>(s.width), static_cast<size_t>(s.width));
    }
  if (c.layout.positions.empty()) return s;
  // Learned positions: row t of the table added to each sequence's token t.
  const std::vector<float> positions = read_f32(*checkpoint_, c.layout.positions);
  for (size_t q = 0; q < sequences.size(); ++q) {
    if (static_cast<int64_t>(sequences[q].size()) > c.max_position_embeddings)
      throw InputError("a sequence of " + std::to_string(sequences[q].size()) + " tokens is longer than the " +
                       std::to_string(c.max_position_embeddings) + " positions the model has");
    for (size_t t = 0; t < sequences[q].size(); ++t) {
      float* row = s.data.data() + (static_cast<size_t>(s.offsets[q]) + t) * static_cast<size_t>(s.width);
      const float* p = positions.data() + t * static_cast<size_t>(s.width);
      for (int64_t i = 0; i < s.width; ++i) row[i] += p[i];
    }
  }
  return s;
}

namespace {

// x[:, head * hd + i] rotated by position * inv_freq[i] (HF's rotate_half convention: the
// first half of each head pairs with the second).
void apply_rope(float* x, int64_t heads, int64_t hd, int64_t row_stride, const Stream& s,
                const std::vector<double>& inv_freq) {
  const int64_t half = hd / 2;
  parallel_chunks(s.offsets.size() - 1, 1, [&](size_t begin, size_t end) {
    std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
    for (size_t q = begin; q < end; ++q)
      for (int64_t r = s.offsets[q]; r < s.offsets[q + 1]; ++r) {
        const auto position = static_cast<double>(r - s.offsets[q]);
        for (int64_t i = 0; i < half; ++i) {
          const double angle = position * inv_freq[static_cast<size_t>(i)];
          cos_t[static_cast<size_t>(i)] = static_cast<float>(std::cos(angle));
          sin_t[static_cast<size_t>(i)] = static_cast<float>(std::sin(angle));
        }
        for (int64_t h = 0; h < heads; ++h) {
          float* v = x + r * row_stride + h * hd;
          for (int64_t i = 0; i < half; ++i) {
            const float a = v[i], b = v[i + half], cs = cos_t[static_cast<size_t>(i)],
                        sn = sin_t[static_cast<size_t>(i)];
            v[i] = a * cs - b * sn;
            v[i + half] = b * cs + a * sn;
          }
        }
      }
  });
}

// context[seq, head] = softmax(q k^T / sqrt(hd), causal and windowed) v for every sequence
// and head; key/value head h / (heads / kv_heads) serves query head h (grouped-query attention).
void causal_attention(const float* q, const float* k, const float* v, float* context, const Stream& s,
                      const DecoderConfig& c) {
  const int64_t heads = c.num_attention_heads, hd = c.head_dim, group = heads / c.num_key_value_heads;
  const int64_t q_stride = heads * hd, kv_stride = c.num_key_value_heads * hd;
  const auto scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const int64_t sequences = static_cast<int64_t>(s.offsets.size()) - 1, pairs = sequences * heads;
#pragma omp parallel
  {
    std::vector<float> scores;
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t seq = p / heads, h = p % heads, kvh = h / group;
      const int64_t first = s.offsets[static_cast<size_t>(seq)], len = s.offsets[static_cast<size_t>(seq) + 1] - first;
      if (len == 0) continue;
      scores.assign(static_cast<size_t>(len * len), 0.0f);
      sgemm(false, true, len, len, hd, scale, q + first * q_stride + h * hd, q_stride, k + first * kv_stride + kvh * hd,
            kv_stride, 0.0f, scores.data(), len);
      for (int64_t i = 0; i < len; ++i) {
        float* row = scores.data() + i * len;
        const int64_t lo = c.sliding_window ? std::max<int64_t>(0, i - *c.sliding_window + 1) : 0;
        std::fill(row, row + lo, 0.0f);
        softmax_rows(row + lo, 1, i + 1 - lo);
        std::fill(row + i + 1, row + len, 0.0f);
      }
      sgemm(false, false, len, hd, len, 1.0f, scores.data(), len, v + first * kv_stride + kvh * hd, kv_stride, 0.0f,
            context + first * q_stride + h * hd, q_stride);
    }
  }
}

}  // namespace

Stream DecoderModel::embed(const ModelInput& batch) const {
  if (batch.images > 0 || !batch.pixels.empty())
    throw std::invalid_argument("DecoderModel::embed: a language model takes token ids, not images");
  return embed_sequences(batch.sequences);
}

void DecoderModel::run_block(int64_t layer, const BlockWeights& block, Stream& s, const SiteTap& tap) const {
  const auto& w = dynamic_cast<const DecoderBlockWeights&>(block);
  const auto& c = config_;
  const int64_t n = s.rows(), d = c.hidden_size;
  const int64_t q_width = c.num_attention_heads * c.head_dim, kv_width = c.num_key_value_heads * c.head_dim;
  if (n == 0) return;
  // The activations live in the stream's scratch, sized once: fresh buffers of this size
  // cost page faults and zeroing on every call (27% of a Llama-3.2-1B forward's time under
  // perf before they were kept).
  auto& scratch = s.scratch;
  auto sized = [](std::vector<float>& v, int64_t size) -> std::vector<float>& {
    v.resize(static_cast<size_t>(size));
    return v;
  };
  auto& x = sized(scratch.normed, n * d);
  auto norm = [&](const LayerNormParams& params) {
    if (c.layer_norm)
      layer_norm(s.data.data(), x.data(), n, d, params, c.norm_eps);
    else
      rms_norm(s.data.data(), x.data(), n, d, params.weight, c.norm_eps);
  };
  norm(w.input_norm);
  call_tap(tap, layer, SiteRole::AttentionInput, x.data(), n, d);
  auto& q = sized(scratch.q, n * q_width);
  auto& k = sized(scratch.k, n * kv_width);
  auto& v = sized(scratch.v, n * kv_width);
  linear(x.data(), n, w.q, q.data(), false);
  linear(x.data(), n, w.k, k.data(), false);
  linear(x.data(), n, w.v, v.data(), false);
  if (c.qk_norm) {
    rms_norm(q.data(), q.data(), n * c.num_attention_heads, c.head_dim, w.q_norm, c.norm_eps);
    rms_norm(k.data(), k.data(), n * c.num_key_value_heads, c.head_dim, w.k_norm, c.norm_eps);
  }
  if (c.layout.positions.empty()) {
    apply_rope(q.data(), c.num_attention_heads, c.head_dim, q_width, s, inv_freq_);
    apply_rope(k.data(), c.num_key_value_heads, c.head_dim, kv_width, s, inv_freq_);
  }
  auto& context = sized(scratch.context, n * q_width);
  causal_attention(q.data(), k.data(), v.data(), context.data(), s, c);
  call_tap(tap, layer, SiteRole::AttentionOutput, context.data(), n, q_width);
  linear(context.data(), n, w.o, s.data.data(), true);

  norm(w.post_attention_norm);
  call_tap(tap, layer, SiteRole::MlpInput, x.data(), n, d);
  // Gated (SwiGLU): act(gate x) * (up x); plain (GPT-2): act(up x).
  const int64_t inter = c.intermediate_size;
  auto& hidden = sized(scratch.hidden, n * inter);
  linear(x.data(), n, w.up, hidden.data(), false);
  if (w.gate.weight.rows > 0) {
    auto& gate = sized(scratch.gate, n * inter);
    linear(x.data(), n, w.gate, gate.data(), false);
    activate(gate.data(), gate.size(), c.activation);
    parallel_chunks(gate.size(), 1 << 14, [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) hidden[i] *= gate[i];
    });
  } else {
    activate(hidden.data(), hidden.size(), c.activation);
  }
  call_tap(tap, layer, SiteRole::MlpOutput, hidden.data(), n, inter);
  linear(hidden.data(), n, w.down, s.data.data(), true);
}

std::vector<float> DecoderModel::final_normed(const Stream& s) const {
  const auto& c = config_;
  LayerNormParams norm{read_f32(*checkpoint_, c.layout.final_norm + ".weight"), {}};
  if (c.norm_bias) norm.bias = read_f32(*checkpoint_, c.layout.final_norm + ".bias");
  std::vector<float> normed(s.data.size());
  if (c.layer_norm)
    layer_norm(s.data.data(), normed.data(), s.rows(), s.width, norm, c.norm_eps);
  else
    rms_norm(s.data.data(), normed.data(), s.rows(), s.width, norm.weight, c.norm_eps);
  return normed;
}

void DecoderModel::for_vocab_slices(const std::vector<float>& normed, int64_t rows,
                                    const std::function<void(int64_t, int64_t, const float*)>& body) const {
  const auto& c = config_;
  const Tensor head = checkpoint_->tensor(head_name_);
  const size_t row_bytes = static_cast<size_t>(c.hidden_size) * dtype_size(head.dtype());
  // 4,096 vocabulary rows a slice: 32 MB of F32 weights at width 2048, and logits of
  // [rows, 4096]; the products stay large enough for BLAS to run near its peak.
  constexpr int64_t kSlice = 4096;
  std::vector<float> weights, logits;
  for (int64_t first = 0; first < c.vocab_size; first += kSlice) {
    const int64_t count = std::min(kSlice, c.vocab_size - first);
    weights.resize(static_cast<size_t>(count * c.hidden_size));
    convert_to_f32(head.dtype(), head.bytes().data() + static_cast<size_t>(first) * row_bytes, weights.data(),
                   weights.size());
    logits.resize(static_cast<size_t>(rows * count));
    sgemm_fixed_blocks(false, true, rows, count, c.hidden_size, 1.0f, normed.data(), c.hidden_size, weights.data(),
                       c.hidden_size, 0.0f, logits.data(), count);
    body(first, count, logits.data());
  }
}

Matrix DecoderModel::logits(const Stream& s) const {
  const auto normed = final_normed(s);
  Matrix out(s.rows(), config_.vocab_size);
  for_vocab_slices(normed, s.rows(), [&](int64_t first, int64_t count, const float* logits) {
    for (int64_t r = 0; r < s.rows(); ++r) std::copy_n(logits + r * count, count, out.row(r) + first);
  });
  return out;
}

std::vector<double> DecoderModel::negative_log_likelihood(const Stream& s, const std::vector<int32_t>& targets) const {
  const int64_t rows = s.rows();
  if (static_cast<int64_t>(targets.size()) != rows) throw std::logic_error("negative_log_likelihood: one target a row");
  const auto normed = final_normed(s);
  // Per row: running maximum and sum of exp(logit - maximum), in double, and the target's logit.
  std::vector<double> maximum(static_cast<size_t>(rows), -std::numeric_limits<double>::infinity());
  std::vector<double> sum(static_cast<size_t>(rows), 0.0), target_logit(static_cast<size_t>(rows), 0.0);
  for_vocab_slices(normed, rows, [&](int64_t first, int64_t count, const float* logits) {
    parallel_chunks(static_cast<size_t>(rows), 16, [&](size_t begin, size_t end) {
      for (size_t r = begin; r < end; ++r) {
        if (targets[r] < 0) continue;
        const float* row = logits + r * static_cast<size_t>(count);
        const double slice_max = *std::max_element(row, row + count);
        if (slice_max > maximum[r]) {
          sum[r] *= std::exp(maximum[r] - slice_max);
          maximum[r] = slice_max;
        }
        double s_sum = 0;
        for (int64_t j = 0; j < count; ++j) s_sum += std::exp(static_cast<double>(row[j]) - maximum[r]);
        sum[r] += s_sum;
        if (targets[r] >= first && targets[r] < first + count) target_logit[r] = row[targets[r] - first];
      }
    });
  });
  std::vector<double> nll(static_cast<size_t>(rows), 0.0);
  for (size_t r = 0; r < nll.size(); ++r)
    if (targets[r] >= 0) nll[r] = maximum[r] + std::log(sum[r]) - target_logit[r];
  return nll;
}

namespace {

// The tensor table from config.json alone: the layout's names, each block's from the same
// list the model reads its blocks by.
ArchitectureTable decoder_architecture_table(const CheckpointReader& checkpoint) {
  const DecoderConfig c = decoder_config_of(checkpoint);
  const auto& l = c.layout;
  ArchitectureTable table;
  table.before.push_back(l.embed);
  if (!l.positions.empty()) table.before.push_back(l.positions);
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    auto& names = table.blocks.emplace_back();
    for (const auto& [name, shape] :
         block_tensors(c, [&](const std::string& m) { return layout_block_name(l, layer, m); }))
      names.push_back(name);
  }
  table.after = {l.final_norm + ".weight", l.final_norm + ".bias", l.head};
  return table;
}

const bool registered = register_model_family(
    {"decoder language model", [](const std::string& type) { return find_decoder_family(type) != nullptr; },
     [](const std::filesystem::path& checkpoint) -> std::unique_ptr<Model> {
       const auto dir = std::filesystem::is_directory(checkpoint) ? checkpoint : checkpoint.parent_path();
       return std::make_unique<DecoderModel>(DecoderModel::open(dir));
     },
     decoder_architecture_table, nullptr});

}  // namespace

}  // namespace amalgam
