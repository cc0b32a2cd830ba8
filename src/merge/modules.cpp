#include "merge/modules.h"

#include <map>

#include "merge/plan.h"

namespace amalgam {

namespace {

// mergekit's multi-module architectures, keyed by config.json's architectures[0]. A tensor
// these prefixes leave out belongs to no module (mergekit would not write it).
const std::map<std::string, std::vector<ModuleLayout>>& multi_module_architectures() {
  // The vision-language models whose checkpoints put the language model under
  // "language_model." (transformers before 4.52 saved them so; mergekit's tables read them so).
  const auto vlm = [](std::string vision_name, std::string vision_prefix, std::string vision_stack) {
    return std::vector<ModuleLayout>{
        {"text_decoder", {"language_model."}, "language_model.model.layers.", "text_config.num_hidden_layers"},
        {"multi_modal_projector", {"multi_modal_projector."}, "", ""},
        {std::move(vision_name),
         {std::move(vision_prefix)},
         std::move(vision_stack),
         "vision_config.num_hidden_layers"},
    };
  };
  // Qwen's vision-language models: the language model under `text` (Qwen2: "model.", Qwen3:
  // "model.language_model."), the vision tower and its merger under `visual`.
  const auto qwen_vl = [](const std::string& text, const std::string& visual, std::string text_layers_key) {
    return std::vector<ModuleLayout>{
        {"text_decoder", {text, "lm_head."}, text + "layers.", std::move(text_layers_key)},
        {"multi_modal_projector", {visual + "merger.", visual + "deepstack_merger_list."}, "", ""},
        {"vision_tower", {visual}, visual + "blocks.", "vision_config.depth"},
    };
  };
  static const std::map<std::string, std::vector<ModuleLayout>> kTable = {
      {"Gemma3ForConditionalGeneration",
       vlm("vision_tower", "vision_tower.", "vision_tower.vision_model.encoder.layers.")},
      {"Llama4ForConditionalGeneration", vlm("vision_model", "vision_model.", "vision_model.model.layers.")},
      {"Mistral3ForConditionalGeneration", vlm("vision_tower", "vision_tower.", "vision_tower.transformer.layers.")},
      {"Qwen2VLForConditionalGeneration", qwen_vl("model.", "visual.", "num_hidden_layers")},
      {"Qwen2_5_VLForConditionalGeneration", qwen_vl("model.", "visual.", "text_config.num_hidden_layers")},
      {"Qwen3VLForConditionalGeneration",
       qwen_vl("model.language_model.", "model.visual.", "text_config.num_hidden_layers")},
      {"Qwen3VLMoeForConditionalGeneration",
       qwen_vl("model.language_model.", "model.visual.", "text_config.num_hidden_layers")},
      {"T5ForConditionalGeneration",
       {{"decoder", {"decoder."}, "decoder.block.", "num_decoder_layers"},
        {"encoder", {"encoder."}, "encoder.block.", "num_layers"},
        {"shared", {"shared.", "lm_head."}, "", ""}}},
      {"WhisperForConditionalGeneration",
       {{"decoder", {"model.decoder.", "proj_out."}, "model.decoder.layers.", "decoder_layers"},
        {"encoder", {"model.encoder."}, "model.encoder.layers.", "encoder_layers"}}},
  };
  return kTable;
}

}  // namespace

std::vector<ModuleLayout> module_layouts(const CheckpointReader& checkpoint) {
  if (const auto& config = checkpoint.config()) {
    const auto architectures = config->find("architectures");
    if (architectures != config->end() && architectures->is_array() && !architectures->empty() &&
        architectures->front().is_string()) {
      const auto& table = multi_module_architectures();
      if (const auto found = table.find(architectures->front().get<std::string>()); found != table.end())
        return found->second;
    }
  }
  const std::map<std::string, int> stacks = find_layer_stacks(checkpoint.names());
  ModuleLayout everything{"default", {""}, stacks.size() == 1 ? stacks.begin()->first : "", "", stacks.size() > 1};
  return {everything};
}

const ModuleLayout* owning_module(const std::vector<ModuleLayout>& modules, const std::string& tensor_name) {
  const ModuleLayout* owner = nullptr;
  size_t longest = 0;
  for (const ModuleLayout& m : modules)
    for (const std::string& prefix : m.prefixes)
      if (tensor_name.starts_with(prefix) && (!owner || prefix.size() > longest)) {
        owner = &m;
        longest = prefix.size();
      }
  return owner;
}

}  // namespace amalgam
