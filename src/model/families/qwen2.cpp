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

const bool registered = register_decoder_family({"qwen2", read_qwen2_config});

}  // namespace
}  // namespace amalgam
