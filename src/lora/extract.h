// `amalgam extract-lora`: a PEFT LoRA adapter from the difference between a fine-tune and its
// base, as mergekit-extract-lora writes it (its options and layout).
//
// Every module (a name without its ".weight"/".bias") is one of:
//   - a LoRA target: a 2-D ".weight" of a linear layer. The task vector D = W_ft - W_base
//     [out, in] is cut to its best rank-r approximation by a thin SVD, D ~ U_r S_r V_r^T,
//     and stored as lora_A = S_r^1/2 V_r^T [r, in], lora_B = U_r S_r^1/2 [out, r] (with
//     --no-distribute-scale: lora_A = S_r V_r^T, lora_B = U_r). A bias's difference is
//     lora_B.bias. lora_alpha = r, so PEFT adds B A unscaled.
//   - saved at full rank ("modules_to_save"): the embeddings and the output head (unless
//     --embed-lora, which decomposes the transposed embedding difference into
//     lora_embedding_A [r, vocab] and lora_embedding_B [hidden, r]), modules named by
//     --save-module, and modules that are no linear layer (norms; GPT-2's Conv1D layers,
//     which PEFT's plain LoRA does not take), unless --skip-undecomposable drops them.
// Tensors are named "base_model.model.<module>.lora_A.weight" and the like, in the fine-tune's
// dtype; adapter_config.json has r (the largest rank kept), rank_pattern and alpha_pattern for
// modules with fewer (a matrix of lower rank, or --sv-epsilon), target_modules (the modules'
// last name components) and modules_to_save.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace amalgam {

struct LoraExtractOptions {
  int64_t max_rank = 128;
  bool distribute_scale = true;
  bool embed_lora = false;
  std::vector<std::string> save_modules;     // last name components or whole module names
  std::vector<std::string> include_regexes;  // when given, only modules matching one are decomposed
  std::vector<std::string> exclude_regexes;
  double sv_epsilon = 0;  // singular values at most this are dropped
  bool skip_undecomposable = false;
  bool force = false;
  bool quiet = false;
};

struct LoraExtractSummary {
  int64_t decomposed = 0;     // modules stored as lora_A / lora_B
  int64_t saved = 0;          // tensors stored at full rank
  int64_t rank = 0;           // the largest rank kept
  double discarded_norm = 0;  // sqrt(sum over modules of the discarded singular values squared)
};

// Writes the adapter directory atomically. InputError naming the file and tensor when the
// fine-tune lacks a base tensor or holds it in another shape, or a regex does not parse.
LoraExtractSummary extract_lora(const std::filesystem::path& finetune, const std::filesystem::path& base,
                                const std::filesystem::path& output, const LoraExtractOptions& options);

}  // namespace amalgam
