// Decoder-only language models (Llama, Mistral, Qwen 2 and 3, GPT-2), computed as Hugging Face's
// modeling code computes them, in F32 on the CPU from F32, F16 or BF16 weights.
//
//   ids -> embed_tokens -> L x block -> final norm -> lm_head (or the embeddings, tied)
//   block: h += o_proj(attention(rope(q), rope(k), v) of norm1(h));  h += mlp(norm2(h))
//
// A family is a table: how its config.json reads (decoder_config_from_json) and what its
// tensors are called; each registers itself from its own file (model/families/) under its
// config.json model_type, and nothing else names it.
//
// Sequences of different lengths are packed: the stream holds each sequence's tokens one
// after another, no padding rows, so every linear layer runs on valid tokens only and its
// tap sees nothing else; attention runs per sequence under the causal (and, for Mistral,
// sliding-window) mask. The model keeps its checkpoint mapped and converts one block at a
// time (load_block), so memory holds one block of F32 weights beside the activations.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "model/kernels.h"
#include "model/linear_sites.h"
#include "model/model.h"
#include "model/stream.h"

namespace amalgam {

// Rotary position embedding: inverse frequencies theta^(-2i/d), optionally rescaled.
struct RopeConfig {
  double theta = 10000.0;
  enum class Scaling { None, Linear, Llama3 } scaling = Scaling::None;
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // Llama 3
  int64_t original_max_position_embeddings = 8192;       // Llama 3
};

// Where a family keeps its tensors: module names ("self_attn.q_proj": its ".weight" and,
// where the config has biases, ".bias"), blocks under `block` with "{}" for the layer. The
// defaults are Llama's; a family changes what differs.
struct DecoderLayout {
  std::string prefix;  // dropped from every name when the checkpoint stores them without it
  std::string embed = "model.embed_tokens.weight";
  std::string positions;  // learned position table (GPT-2), or empty: rotary embeddings
  std::string final_norm = "model.norm", head = "lm_head.weight";
  std::string block = "model.layers.{}.";
  std::string input_norm = "input_layernorm", post_attention_norm = "post_attention_layernorm";
  std::string q = "self_attn.q_proj", k = "self_attn.k_proj", v = "self_attn.v_proj";
  std::string qkv;  // one module holding q, k and v stacked (GPT-2's c_attn) instead of three
  std::string o = "self_attn.o_proj";
  std::string q_norm = "self_attn.q_norm", k_norm = "self_attn.k_norm";
  std::string gate = "mlp.gate_proj", up = "mlp.up_proj", down = "mlp.down_proj";  // no gate: a plain MLP
  bool conv1d = false;  // weights stored [in, out] (GPT-2's Conv1D), transposed on loading
};

struct DecoderConfig {
  std::string model_type;
  DecoderLayout layout;
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0;
  int64_t num_attention_heads = 0, num_key_value_heads = 0, head_dim = 0;
  double norm_eps = 1e-6;
  bool layer_norm = false;                   // LayerNorm with bias (GPT-2), else RMSNorm
  Activation activation = Activation::Silu;  // of the MLP (gated: SwiGLU)
  int64_t max_position_embeddings = 0;       // learned positions: the table's length
  RopeConfig rope;
  bool attention_bias = false;  // q, k, v (and o, for Llama's attention_bias) biases
  bool output_bias = false;     // o_proj bias
  bool mlp_bias = false;
  bool norm_bias = false;  // LayerNorm's bias
  bool qk_norm = false;    // Qwen 3: RMSNorm over each head of q and k before rope
  bool tie_word_embeddings = false;
  std::optional<int64_t> sliding_window;  // Mistral: a token sees the last `window` tokens
};

// One family: its config reader, registered under its model_type.
struct DecoderFamily {
  std::string model_type;
  std::function<DecoderConfig(const nlohmann::json& config, const std::string& where)> read_config;
  // Real models of the family by name ("llama-3.2-1b"): their config.json as published, for
  // `amalgam generate --architecture` (random weights of the real shapes).
  std::map<std::string, nlohmann::json> shapes;
};
// Registers a family (from a static initialiser in its file); returns true.
bool register_decoder_family(DecoderFamily family);
// The family of config.json's model_type, or nullptr.
const DecoderFamily* find_decoder_family(const std::string& model_type);
std::vector<std::string> decoder_family_names();
// config.json read by its model_type's family: InputError naming `where` and the model_type
// when no family has it.
DecoderConfig read_decoder_config(const nlohmann::json& config, const std::string& where);
// A real model's config.json from any family's shapes, or nullopt; every shape's name.
std::optional<nlohmann::json> find_decoder_shape(const std::string& name);
std::vector<std::string> decoder_shape_names();
// Every tensor a checkpoint of `config` holds, in checkpoint order (before the blocks, each
// block, after), named by the family's layout, with its stored shape.
std::vector<std::pair<std::string, Shape>> decoder_parameters(const DecoderConfig& config);

// Whether a checkpoint (a directory, or a file in one) has a config.json whose model_type is
// a decoder family amalgam runs. A config.json that is not JSON is an InputError naming it.
bool is_decoder_checkpoint(const std::filesystem::path& checkpoint);

// config.json readers for the families' files: a missing key takes `fallback` (none: an
// InputError naming the key), a value of the wrong kind is an InputError naming it.
int64_t config_int(const nlohmann::json& j, const char* key, std::optional<int64_t> fallback, const std::string& where);
double config_number(const nlohmann::json& j, const char* key, double fallback, const std::string& where);
bool config_flag(const nlohmann::json& j, const char* key, bool fallback, const std::string& where);

// Shared by the Llama-like families: the Llama fields of config.json (hidden_size, heads,
// rope_theta and rope_scaling, ...), InputError naming the key otherwise.
DecoderConfig read_llama_like_config(const nlohmann::json& config, const std::string& where);

struct DecoderBlockWeights : BlockWeights {
  LayerNormParams input_norm, post_attention_norm;  // bias empty for RMSNorm
  LinearParams q, k, v, o;
  std::vector<float> q_norm, k_norm;  // [head_dim], Qwen 3 only
  LinearParams gate, up, down;
};

class DecoderModel final : public Model {
 public:
  // A checkpoint directory with config.json (a known model_type, else InputError naming it)
  // and its safetensors; shapes are checked against the config, naming the tensor.
  static DecoderModel open(const std::filesystem::path& dir);

  const DecoderConfig& config() const { return config_; }
  const CheckpointReader& checkpoint() const { return *checkpoint_; }

  // Block `layer`'s linear sites, in the order its tap reports them: q/k/v (or GPT-2's
  // c_attn), o_proj, gate/up (or up alone), down_proj. The weights are the checkpoint's names
  // (GPT-2's Conv1D weights are stored [in, out]).
  // With layer -1: none (lm_head is not merged by its input statistics).
  std::vector<LinearSiteSpec> linear_sites(int64_t layer) const override;
  std::vector<std::string> block_tensor_names(int64_t layer) const override;

  // The family interface (model/model.h). head() is logits().
  std::string model_type() const override { return config_.model_type; }
  int64_t num_layers() const override { return config_.num_hidden_layers; }
  Stream embed(const ModelInput& batch) const override;
  std::unique_ptr<BlockWeights> read_block(int64_t layer) const override;
  std::unique_ptr<BlockWeights> read_block(const CheckpointReader& checkpoint, int64_t layer) const override;
  void run_block(int64_t layer, const BlockWeights& block, Stream& stream, const SiteTap& tap = {}) const override;
  Matrix head(const Stream& stream, const SiteTap& /*tap*/ = {}) const override { return logits(stream); }
  int64_t head_width() const override { return config_.vocab_size; }

  Stream embed(const std::vector<std::vector<int32_t>>& sequences) const;
  DecoderBlockWeights load_block(int64_t layer) const;
  // The same into `into`, reusing its buffers (a loop over blocks converts each into the
  // last one's memory).
  void load_block(int64_t layer, DecoderBlockWeights& into) const;
  // The final norm, then lm_head over `rows` of the stream ([rows.size(), vocab]); lm_head
  // is converted a slice of the vocabulary at a time.
  Matrix logits(const Stream& stream) const;
  // -log p(target_r | stream row r) for each row r with targets[r] >= 0 (else 0), without
  // holding the [rows, vocab] logits: slices of the vocabulary with a running log-sum-exp.
  std::vector<double> negative_log_likelihood(const Stream& stream, const std::vector<int32_t>& targets) const;

 private:
  DecoderModel(DecoderConfig config, std::unique_ptr<CheckpointReader> checkpoint);
  Stream embed_sequences(std::span<const std::vector<int32_t>> sequences) const;
  void load_block(const CheckpointReader& checkpoint, int64_t layer, DecoderBlockWeights& into) const;
  // The final norm applied to a copy of the stream.
  std::vector<float> final_normed(const Stream& stream) const;
  std::string block_name(int64_t layer, const std::string& module) const;
  // Calls body(first_token, count, logits [rows, count]) for slices of the vocabulary.
  void for_vocab_slices(const std::vector<float>& normed, int64_t rows,
                        const std::function<void(int64_t, int64_t, const float*)>& body) const;

  DecoderConfig config_;
  std::unique_ptr<CheckpointReader> checkpoint_;
  std::string head_name_;
  std::vector<double> inv_freq_;  // rope, [head_dim / 2]
};

}  // namespace amalgam
