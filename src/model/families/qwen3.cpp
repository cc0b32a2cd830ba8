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

const bool registered = register_decoder_family({"qwen3", read_qwen3_config});

}  // namespace
}  // namespace amalgam
