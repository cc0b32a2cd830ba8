// Llama (1, 2, 3, 3.1, 3.2): the Llama fields of config.json as they are, RMSNorm, rotary
// embeddings (default, linear or Llama 3.1 scaling), grouped-query attention, SwiGLU, tied or
// untied embeddings, optional attention and MLP biases.
#include "model/decoder.h"

namespace amalgam {
namespace {

const bool registered = register_decoder_family({"llama", read_llama_like_config});

}  // namespace
}  // namespace amalgam
