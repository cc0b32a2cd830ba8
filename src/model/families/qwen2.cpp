// Qwen 2 and 2.5: Llama's block with biases on q, k and v (never on o_proj or the MLP).
// Sliding-window attention applies only with use_sliding_window, which no released Qwen 2
// model sets; amalgam refuses it rather than compute something else.
#include "core/error.h"
#include "model/decoder.h"

namespace amalgam {
namespace {

DecoderConfig read_qwen2_config(const nlohmann::json& j, const std::string& where) {
  DecoderConfig c = read_llama_like_config(j, where);
  c.attention_bias = true;
  c.output_bias = c.mlp_bias = false;
  if (j.value("use_sliding_window", false))
    throw InputError(where, "config key 'use_sliding_window': Qwen 2's per-layer sliding window is not supported");
  return c;
}

// Qwen/Qwen2.5-0.5B's config.json.
const nlohmann::json qwen25_05b = {{"architectures", {"Qwen2ForCausalLM"}},
                                   {"model_type", "qwen2"},
                                   {"hidden_size", 896},
                                   {"intermediate_size", 4864},
                                   {"num_hidden_layers", 24},
                                   {"num_attention_heads", 14},
                                   {"num_key_value_heads", 2},
                                   {"hidden_act", "silu"},
                                   {"rms_norm_eps", 1e-6},
                                   {"rope_theta", 1000000.0},
                                   {"max_position_embeddings", 32768},
                                   {"use_sliding_window", false},
                                   {"vocab_size", 151936},
                                   {"tie_word_embeddings", true}};

const bool registered = register_decoder_family({"qwen2", read_qwen2_config, {{"qwen2.5-0.5b", qwen25_05b}}});

}  // namespace
}  // namespace amalgam
