// Llama (1, 2, 3, 3.1, 3.2): the Llama fields of config.json as they are, RMSNorm, rotary
// embeddings (default, linear or Llama 3.1 scaling), grouped-query attention, SwiGLU, tied or
// untied embeddings, optional attention and MLP biases.
#include "model/decoder.h"

namespace amalgam {
namespace {

// Published config.json fields of real Llama models (Hugging Face meta-llama/*), for
// random checkpoints of their shapes.
nlohmann::json llama_shape(int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads, int64_t kv_heads,
                           int64_t vocab, double rope_theta, int64_t max_positions, bool tied) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", hidden},
          {"intermediate_size", intermediate},
          {"num_hidden_layers", layers},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kv_heads},
          {"head_dim", hidden / heads},
          {"hidden_act", "silu"},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", rope_theta},
          {"max_position_embeddings", max_positions},
          {"vocab_size", vocab},
          {"tie_word_embeddings", tied},
          {"attention_bias", false},
          {"mlp_bias", false}};
}

nlohmann::json with_llama3_rope(nlohmann::json config, double factor) {
  config["rope_scaling"] = {{"rope_type", "llama3"},
                            {"factor", factor},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 8192}};
  return config;
}

const bool registered = register_decoder_family(
    {"llama",
     read_llama_like_config,
     {{"llama-2-7b", llama_shape(4096, 11008, 32, 32, 32, 32000, 10000.0, 4096, false)},
      {"llama-3.1-8b", with_llama3_rope(llama_shape(4096, 14336, 32, 32, 8, 128256, 500000.0, 131072, false), 8.0)},
      {"llama-3.2-1b", with_llama3_rope(llama_shape(2048, 8192, 16, 32, 8, 128256, 500000.0, 131072, true), 32.0)},
      {"llama-3.2-3b", with_llama3_rope(llama_shape(3072, 8192, 28, 24, 8, 128256, 500000.0, 131072, true), 32.0)}}});

}  // namespace
}  // namespace amalgam
