// GPT-2: LayerNorm with biases, learned positions, q, k and v stacked in one Conv1D
// (c_attn, weights stored [in, out]), biases on every linear layer, a plain MLP with gelu_new,
// the output layer tied to the token embeddings. GPT2LMHeadModel's names ("transformer.h.0.")
// or GPT2Model's ("h.0.").
#include "core/error.h"
#include "model/decoder.h"

namespace amalgam {
namespace {

DecoderConfig read_gpt2_config(const nlohmann::json& j, const std::string& where) {
  DecoderConfig c;
  c.vocab_size = config_int(j, "vocab_size", 50257, where);
  c.hidden_size = config_int(j, "n_embd", 768, where);
  c.num_hidden_layers = config_int(j, "n_layer", 12, where);
  c.num_attention_heads = c.num_key_value_heads = config_int(j, "n_head", 12, where);
  if (c.hidden_size % c.num_attention_heads != 0)
    throw InputError(where, "config: n_embd must be a multiple of n_head");
  c.head_dim = c.hidden_size / c.num_attention_heads;
  c.intermediate_size = config_int(j, "n_inner", 4 * c.hidden_size, where);
  c.max_position_embeddings = config_int(j, "n_positions", 1024, where);
  c.norm_eps = config_number(j, "layer_norm_epsilon", 1e-5, where);
  c.layer_norm = c.norm_bias = true;
  c.attention_bias = c.output_bias = c.mlp_bias = true;
  c.tie_word_embeddings = config_flag(j, "tie_word_embeddings", true, where);
  const std::string act = j.value("activation_function", "gelu_new");
  if (act == "gelu_new" || act == "gelu_pytorch_tanh")
    c.activation = Activation::GeluTanh;
  else if (act == "gelu")
    c.activation = Activation::Gelu;
  else
    throw InputError(where, "config key 'activation_function': '" + act + "' is not supported");
  // Options that change the attention's arithmetic, refused rather than ignored.
  if (!config_flag(j, "scale_attn_weights", true, where) ||
      config_flag(j, "scale_attn_by_inverse_layer_idx", false, where))
    throw InputError(where, "config: GPT-2 attention without the 1/sqrt(head_dim) scale is not supported");

  DecoderLayout& l = c.layout;
  l.prefix = "transformer.";
  l.embed = "transformer.wte.weight";
  l.positions = "transformer.wpe.weight";
  l.final_norm = "transformer.ln_f";
  l.head = "lm_head.weight";
  l.block = "transformer.h.{}.";
  l.input_norm = "ln_1";
  l.post_attention_norm = "ln_2";
  l.qkv = "attn.c_attn";
  l.o = "attn.c_proj";
  l.gate.clear();
  l.up = "mlp.c_fc";
  l.down = "mlp.c_proj";
  l.conv1d = true;
  return c;
}

// openai-community/gpt2's config.json (124M).
const nlohmann::json gpt2_small = {{"architectures", {"GPT2LMHeadModel"}},
                                   {"model_type", "gpt2"},
                                   {"n_embd", 768},
                                   {"n_layer", 12},
                                   {"n_head", 12},
                                   {"n_positions", 1024},
                                   {"n_ctx", 1024},
                                   {"activation_function", "gelu_new"},
                                   {"layer_norm_epsilon", 1e-5},
                                   {"vocab_size", 50257}};

const bool registered = register_decoder_family({"gpt2", read_gpt2_config, {{"gpt2", gpt2_small}}});

}  // namespace
}  // namespace amalgam
