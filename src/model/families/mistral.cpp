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

const bool registered = register_decoder_family({"mistral", read_mistral_config});

}  // namespace
}  // namespace amalgam
