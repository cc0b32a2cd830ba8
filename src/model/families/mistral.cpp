// Mistral: Llama's block with sliding-window attention (a token sees the `sliding_window`
// tokens up to itself; null: all of them) and no biases.
#include "core/error.h"
#include "model/decoder.h"

namespace amalgam {
namespace {

DecoderConfig read_mistral_config(const nlohmann::json& j, const std::string& where) {
  DecoderConfig c = read_llama_like_config(j, where);
  c.attention_bias = c.output_bias = c.mlp_bias = false;
  if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    if (!j["sliding_window"].is_number_integer() || j["sliding_window"].get<int64_t>() <= 0)
      throw InputError(where, "config key 'sliding_window' must be a positive integer or null");
    c.sliding_window = j["sliding_window"].get<int64_t>();
  }
  return c;
}

// mistralai/Mistral-7B-v0.1's config.json.
const nlohmann::json mistral_7b = {{"architectures", {"MistralForCausalLM"}},
                                   {"model_type", "mistral"},
                                   {"hidden_size", 4096},
                                   {"intermediate_size", 14336},
                                   {"num_hidden_layers", 32},
                                   {"num_attention_heads", 32},
                                   {"num_key_value_heads", 8},
                                   {"hidden_act", "silu"},
                                   {"rms_norm_eps", 1e-5},
                                   {"rope_theta", 10000.0},
                                   {"max_position_embeddings", 32768},
                                   {"sliding_window", 4096},
                                   {"vocab_size", 32000},
                                   {"tie_word_embeddings", false}};

const bool registered = register_decoder_family({"mistral", read_mistral_config, {{"mistral-7b", mistral_7b}}});

}  // namespace
}  // namespace amalgam
