// mergekit's modules: which tensors of a checkpoint belong to which named module, for the
// config's `modules:` (merge/config.h). A vision-language model is a text_decoder, a
// vision_tower and a multi_modal_projector; an encoder-decoder an encoder and a decoder. Each
// module owns the tensors under its name prefixes (the longest prefix wins) and has at most
// one stack of layers, whose count config.json holds under its key. The names, prefixes and
// keys are mergekit's (its architecture tables, read at commit a6e4028), so a config written
// for mergekit names the same modules here.
#pragma once

#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace amalgam {

struct ModuleLayout {
  std::string name;
  std::vector<std::string> prefixes;  // the tensors it owns; {""}: every tensor
  std::string stack;                  // its layers' name prefix ("language_model.model.layers."); empty: none
  std::string layers_key;             // config.json's count of them, dotted ("text_config.num_hidden_layers");
                                      // empty for "default": num_hidden_layers or GPT-2's n_layer
  bool several_stacks = false;        // "default" only: no one stack to slice (`stack` is empty)
};

// A checkpoint's modules: mergekit's for the multi-module architectures it defines (found by
// config.json's `architectures`), else one module, "default", owning every tensor, whose stack
// is the checkpoint's one stack of layers (layer numbers in the names).
std::vector<ModuleLayout> module_layouts(const CheckpointReader& checkpoint);

// The module that owns `tensor_name` (the longest matching prefix), or nullptr.
const ModuleLayout* owning_module(const std::vector<ModuleLayout>& modules, const std::string& tensor_name);

}  // namespace amalgam
