// Qwen 3 (dense): Llama's block with an RMSNorm over each head of q and k before the rotary
// embedding, an explicit head_dim (128 where hidden_size / heads is not), no biases unless
// attention_bias says so.
#include "core/error.h"
#include "model/decoder.h"

namespace amalgam {
namespace {

DecoderConfig read_qwen3_config(const nlohmann::json& j, const std::string& where) {
  DecoderConfig c = read_llama_like_config(j, where);
  c.qk_norm = true;
  c.output_bias = c.attention_bias;
  c.mlp_bias = false;
  if (j.value("use_sliding_window", false))
    throw InputError(where, "config key 'use_sliding_window': Qwen 3's per-layer sliding window is not supported");
  return c;
}

// Qwen/Qwen3-0.6B's config.json.
const nlohmann::json qwen3_06b = {{"architectures", {"Qwen3ForCausalLM"}},
                                  {"model_type", "qwen3"},
                                  {"hidden_size", 1024},
                                  {"intermediate_size", 3072},
                                  {"num_hidden_layers", 28},
                                  {"num_attention_heads", 16},
                                  {"num_key_value_heads", 8},
                                  {"head_dim", 128},
                                  {"hidden_act", "silu"},
                                  {"rms_norm_eps", 1e-6},
                                  {"rope_theta", 1000000.0},
                                  {"max_position_embeddings", 40960},
                                  {"vocab_size", 151936},
                                  {"tie_word_embeddings", true}};

const bool registered = register_decoder_family({"qwen3", read_qwen3_config, {{"qwen3-0.6b", qwen3_06b}}});

}  // namespace
}  // namespace amalgam
