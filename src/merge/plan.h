// What a merge writes, tensor by tensor: each output tensor's inputs (which checkpoint, under
// which name), its base, and whose settings apply. A models: merge reads every candidate's
// tensor of the output's own name; mergekit's slices renumber layers and take each slice's
// layers from its own sources (plan_slices).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "merge/config.h"
#include "merge/method.h"

namespace amalgam {

struct TensorSource {
  const CheckpointReader* reader = nullptr;
  std::string name;
  ParamOwner owner;  // whose settings this input's parameters come from
};

struct PlannedTensor {
  TensorSpec out;
  std::vector<TensorSource> inputs;  // what the method merges, in order
  std::optional<TensorSource> base;
  std::optional<size_t> slice;  // the slice whose global settings apply (slices merges)
  double t = 0;                 // position for gradients: 0 first layer (and outside them), 1 last
};

// Where a tensor name sits in a stack of layers: the first dot-separated component made of
// digits, with the prefix before it ("model.layers.") and the number; nullopt outside layers.
struct LayerName {
  std::string prefix;
  int index = 0;
  std::string suffix;  // after the number's dot
};
std::optional<LayerName> layer_of(const std::string& name);

// Where a tensor sits in the depth of its model, for mergekit gradients: layer i of n in
// its stack ("...layers.i..." and the like) is i / (n - 1) (a lone layer: 1); tensors
// outside the layers, before them (embeddings) or after (final norms, heads), are 0, as
// mergekit's planner gives every weight outside its slices.
// `stack_sizes` maps a stack's name prefix (the name up to the layer number) to its layer count.
double layer_position(const std::string& tensor_name, const std::map<std::string, int>& stack_sizes);
std::map<std::string, int> find_layer_stacks(const std::vector<std::string>& tensor_names);

// Every tensor's position in a checkpoint, as layer_position defines it: from its family's
// table (model/model.h) where config.json names an architecture amalgam runs, from the
// tensors' names otherwise (data-free merging takes any architecture) and for a tensor the
// table does not list.
class LayerPositions {
 public:
  explicit LayerPositions(const CheckpointReader& checkpoint);
  double operator()(const std::string& tensor_name) const;

 private:
  std::map<std::string, double> from_table_;
  std::map<std::string, int> stacks_;
};

// A tensor outside the layers that comes before them (embeddings: "embed", GPT-2's wte and
// wpe, CLIP's pre_layrnorm); every other one comes after (final norms, heads). mergekit's
// architecture tables say the same for the families it knows.
bool before_layers(const std::string& name);

// The embeddings and the LM head (names with "embed", GPT-2's wte and wpe, "lm_head", outside
// the layers): what RegMean's `embeddings: base` keeps from the base model.
bool embedding_or_head(const std::string& name);

// mergekit's slices planned (its plan_module and plan_slice), module by module (top-level
// slices: the one module "default"; merge/modules.h): a module's tensors before its layers
// from its first slice's sources, each slice's layers renumbered from 0 in output order with
// t = i / (n - 1) across a slice of n layers (a lone layer: 1), its tensors after the layers
// from its last slice's sources. `readers[i]` reads config.models[i]; `base` the base_model.
// InputError naming the config key for a layer range outside a model, slices of unequal
// lengths, a missing tensor, a slice without the base a method needs, a module the
// checkpoint does not have, or a multi-module checkpoint's tensor that is in no module.
struct SlicePlan {
  std::vector<PlannedTensor> tensors;
  // Each module's layers in the output, by its config.json key (ModuleLayout::layers_key).
  std::vector<std::pair<std::string, int64_t>> layer_counts;
  std::vector<std::string> modules_left_out;  // the checkpoint's modules the config does not give
};
SlicePlan plan_slices(const MergeConfig& config, const MethodSpec& spec, const CheckpointReader* base,
                      std::span<const CheckpointReader* const> readers);

}  // namespace amalgam
