#include "merge/plan.h"

#include <algorithm>
#include <map>

#include "core/error.h"
#include "merge/modules.h"
#include "model/model.h"

namespace amalgam {

std::optional<LayerName> layer_of(const std::string& name) {
  size_t start = 0;
  while (start < name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string::npos) end = name.size();
    const std::string part = name.substr(start, end - start);
    if (!part.empty() && part.size() < 9 && part.find_first_not_of("0123456789") == std::string::npos)
      return LayerName{name.substr(0, start), std::stoi(part), end < name.size() ? name.substr(end + 1) : ""};
    start = end + 1;
  }
  return std::nullopt;
}

std::map<std::string, int> find_layer_stacks(const std::vector<std::string>& tensor_names) {
  std::map<std::string, int> stacks;
  for (const auto& name : tensor_names)
    if (auto l = layer_of(name)) stacks[l->prefix] = std::max(stacks[l->prefix], l->index + 1);
  return stacks;
}

double layer_position(const std::string& name, const std::map<std::string, int>& stack_sizes) {
  if (auto l = layer_of(name)) {
    const auto it = stack_sizes.find(l->prefix);
    const int n = it == stack_sizes.end() ? 1 : it->second;
    return n > 1 ? static_cast<double>(l->index) / (n - 1) : 1.0;
  }
  // mergekit plans the weights before and after the layers (embeddings, final norm, lm_head)
  // with t = 0: the gradient's first value on both sides.
  return 0.0;
}

LayerPositions::LayerPositions(const CheckpointReader& checkpoint) : stacks_(find_layer_stacks(checkpoint.names())) {
  // The names give the same positions for every checkpoint a family runs; a config.json that
  // names a family but does not fit it (a merge reads no config otherwise) keeps them.
  std::optional<ArchitectureTable> table;
  try {
    table = architecture_table(checkpoint);
  } catch (const InputError&) {
  }
  if (!table) return;
  for (const auto& name : table->before) from_table_[name] = 0;
  for (const auto& name : table->after) from_table_[name] = 0;
  const auto n = table->blocks.size();
  for (size_t l = 0; l < n; ++l)
    for (const auto& name : table->blocks[l])
      from_table_[name] = n > 1 ? static_cast<double>(l) / static_cast<double>(n - 1) : 1.0;
}

double LayerPositions::operator()(const std::string& tensor_name) const {
  const auto it = from_table_.find(tensor_name);
  return it != from_table_.end() ? it->second : layer_position(tensor_name, stacks_);
}

namespace {

// Token, position and patch embeddings: "embed" (embed_tokens, CLIP's embeddings.*), GPT-2's
// wte and wpe.
bool names_an_embedding(const std::string& name) {
  for (const char* marker : {"embed", "wte.", "wpe."})
    if (name.find(marker) != std::string::npos) return true;
  return false;
}

}  // namespace

bool before_layers(const std::string& name) {
  return names_an_embedding(name) || name.find("pre_layrnorm") != std::string::npos ||
         name.find("pre_layernorm") != std::string::npos;
}

bool embedding_or_head(const std::string& name) {
  return !layer_of(name) && (names_an_embedding(name) || name.find("lm_head") != std::string::npos);
}

namespace {

std::string with_layer(const LayerName& l, int64_t index) {
  return l.prefix + std::to_string(index) + (l.suffix.empty() ? "" : "." + l.suffix);
}

std::string module_names(const std::vector<ModuleLayout>& layouts) {
  std::string names;
  for (const ModuleLayout& m : layouts) names.append(names.empty() ? "" : ", ").append(m.name);
  return names;
}

// Plans one module at a time: its tensors before the layers from its first slice's sources,
// its slices' layers renumbered from 0 within its own stack, its tensors after the layers from
// its last slice's sources. Top-level slices are the "default" module's.
class SlicePlanner {
 public:
  SlicePlanner(const MergeConfig& config, const MethodSpec& spec, const CheckpointReader* base,
               std::span<const CheckpointReader* const> readers)
      : config_(config), spec_(spec), base_(base), readers_(readers), layouts_(module_layouts(reader(0, 0))) {}

  SlicePlan plan() {
    if (config_.modules.empty()) {
      if (layouts_.size() > 1)
        throw InputError(config_.source, "slices: " + reader(0, 0).path().string() + " has modules (" +
                                             module_names(layouts_) +
                                             "); slices of it go under modules: NAME: slices: (as mergekit)");
      plan_module(layouts_.front(), 0, config_.slices.size());
      return std::move(plan_);
    }
    check_every_tensor_has_a_module();
    for (const MergeModule& m : config_.modules) {
      const auto layout =
          std::find_if(layouts_.begin(), layouts_.end(), [&](const ModuleLayout& l) { return l.name == m.name; });
      if (layout == layouts_.end())
        throw InputError(config_.source, "modules." + m.name + ": " + reader(0, 0).path().string() +
                                             " has no such module (its modules: " + module_names(layouts_) + ")");
      plan_module(*layout, m.first_slice, m.slice_count);
    }
    for (const ModuleLayout& l : layouts_)
      if (std::none_of(config_.modules.begin(), config_.modules.end(),
                       [&](const MergeModule& m) { return m.name == l.name; }))
        plan_.modules_left_out.push_back(l.name);
    return std::move(plan_);
  }

 private:
  const CheckpointReader& reader(size_t slice, size_t source) const {
    const SliceSource& s = config_.slices.at(slice).sources.at(source);
    return s.candidate ? *readers_[*s.candidate] : *base_;
  }

  // A multi-module checkpoint's tensors each belong to a module (mergekit writes no other).
  void check_every_tensor_has_a_module() const {
    const CheckpointReader& r = reader(0, 0);
    for (const std::string& name : r.names())
      if (!owning_module(layouts_, name))
        throw InputError(r.path(), name,
                         "belongs to none of the checkpoint's modules (" + module_names(layouts_) + ")");
  }

  bool in_stack(const ModuleLayout& module, const std::string& name) const {
    if (module.stack.empty()) return false;
    const auto l = layer_of(name);
    return l && l->prefix == module.stack;
  }

  bool owns(const ModuleLayout& module, const std::string& name) const {
    return owning_module(layouts_, name) == &module;
  }

  void plan_module(const ModuleLayout& module, size_t first, size_t count) {
    check_slices(module, first, count);
    for (const std::string& name : reader(first, 0).names())
      if (owns(module, name) && !in_stack(module, name) && (module.stack.empty() || before_layers(name)))
        add_outside(name, first);
    int64_t layers = 0;
    for (size_t s = first; s < first + count; ++s) {
      const auto [begin, end] = range(module, s, 0);
      for (int64_t i = 0; i < end - begin; ++i) add_layer(module, s, i, end - begin, layers++);
    }
    if (module.stack.empty()) return;  // every tensor came from the first slice
    const size_t last = first + count - 1;
    for (const std::string& name : reader(last, 0).names())
      if (owns(module, name) && !in_stack(module, name) && !before_layers(name)) add_outside(name, last);
    plan_.layer_counts.emplace_back(module.layers_key, layers);
  }

  // Each source's layers exist and every source of a slice gives as many; each slice has the
  // base its method needs and as many models as it merges.
  void check_slices(const ModuleLayout& module, size_t first, size_t count) {
    for (size_t s = first; s < first + count; ++s) {
      const MergeSlice& slice = config_.slices[s];
      const auto [first0, end0] = range(module, s, 0);
      for (size_t j = 0; j < slice.sources.size(); ++j) {
        const SliceSource& src = slice.sources[j];
        const auto [begin, end] = range(module, s, j);
        const int64_t layers = layer_count(module, reader(s, j), source_key(config_, s, j));
        if (end > layers)
          throw InputError(config_.source, source_key(config_, s, j) + ".layer_range: [" + std::to_string(src.first) +
                                               ", " + std::to_string(src.end) + "] goes past the model's " +
                                               std::to_string(layers) + " layers");
        if (end - begin != end0 - first0)
          throw InputError(config_.source,
                           slice_key(config_, s) + ": every source must give the same number of layers (" +
                               source_key(config_, s, 0) + " gives " + std::to_string(end0 - first0) + ", " +
                               source_key(config_, s, j) + " " + std::to_string(end - begin) + ")");
      }
      const size_t merged = slice.sources.size() - (spec_.needs_base && base_source(s) ? 1 : 0);
      if (spec_.needs_base && !base_source(s))
        throw InputError(config_.source, slice_key(config_, s) + ": " + spec_.name +
                                             " needs the base model among the slice's sources (base_model)");
      if (merged < spec_.min_models || merged > spec_.max_models)
        throw InputError(config_.source, slice_key(config_, s) + ": " + spec_.name + " merges " +
                                             std::to_string(spec_.min_models) +
                                             (spec_.max_models == spec_.min_models ? "" : " or more") + " model(s)" +
                                             (spec_.needs_base ? " besides the base" : "") + ", the slice has " +
                                             std::to_string(merged));
    }
  }

  // Source j of slice s: its layer_range, or its model's whole stack.
  std::pair<int64_t, int64_t> range(const ModuleLayout& module, size_t s, size_t j) {
    const SliceSource& src = config_.slices[s].sources[j];
    if (!src.whole_stack) return {src.first, src.end};
    return {0, layer_count(module, reader(s, j), source_key(config_, s, j))};
  }

  // The number of layers in a checkpoint's stack of the module.
  int64_t layer_count(const ModuleLayout& module, const CheckpointReader& r, const std::string& key) {
    const auto id = std::make_pair(&r, &module);
    if (const auto known = counts_.find(id); known != counts_.end()) return known->second;
    if (module.several_stacks)
      throw InputError(r.path(), key + ": slices take layers from a model with one stack of layers; this one has " +
                                     std::to_string(find_layer_stacks(r.names()).size()));
    int64_t layers = 0;
    for (const std::string& name : r.names())
      if (in_stack(module, name)) layers = std::max<int64_t>(layers, layer_of(name)->index + 1);
    return counts_[id] = layers;
  }

  // The slice's base: its own base_model, else a source that is the config's base_model.
  std::optional<size_t> base_source(size_t s) const {
    const MergeSlice& slice = config_.slices[s];
    if (slice.base_source) return slice.base_source;
    for (size_t j = 0; j < slice.sources.size(); ++j)
      if (!slice.sources[j].candidate) return j;
    return std::nullopt;
  }

  TensorSource input(size_t s, size_t j, const std::string& name, const std::string& out_name) const {
    const CheckpointReader& r = reader(s, j);
    if (!r.contains(name))
      throw InputError(r.path(), name,
                       "missing (" + source_key(config_, s, j) + " gives it to the output's '" + out_name + "')");
    return {&r, name, ParamOwner{config_.slices[s].sources[j].candidate, s, j}};
  }

  // One output tensor from slice `s`: input name j for source j.
  void add(size_t s, const std::string& out_name, const std::vector<std::string>& names, double t) {
    PlannedTensor p;
    p.slice = s;
    p.t = t;
    const auto base = base_source(s);
    for (size_t j = 0; j < names.size(); ++j) {
      TensorSource in = input(s, j, names[j], out_name);
      if (base && j == *base) {
        p.base = in;
        if (spec_.needs_base) continue;  // a task vector of the base against itself is zero
      }
      p.inputs.push_back(std::move(in));
    }
    const TensorSource& shape_of = p.inputs.empty() ? *p.base : p.inputs.front();
    const TensorInfo& info = shape_of.reader->info(shape_of.name);
    for (const TensorSource& in : p.inputs)
      if (in.reader->info(in.name).shape != info.shape)
        throw InputError(in.reader->path(), in.name,
                         "has shape " + shape_to_string(in.reader->info(in.name).shape) + ", " +
                             shape_of.reader->path().string() + "'s '" + shape_of.name + "' has " +
                             shape_to_string(info.shape) + " (both go to the output's '" + out_name + "')");
    const DType dtype =
        is_floating(info.dtype) ? config_.out_dtype.value_or(config_.dtype.value_or(info.dtype)) : info.dtype;
    p.out = {out_name, dtype, info.shape};
    plan_.tensors.push_back(std::move(p));
  }

  void add_outside(const std::string& name, size_t s) {
    add(s, name, std::vector<std::string>(config_.slices[s].sources.size(), name), 0.0);
  }

  // Layer i of slice s's n, written as the module's layer `out_layer`.
  void add_layer(const ModuleLayout& module, size_t s, int64_t i, int64_t n, int64_t out_layer) {
    const MergeSlice& slice = config_.slices[s];
    const double t = n > 1 ? static_cast<double>(i) / static_cast<double>(n - 1) : 1.0;
    std::vector<int64_t> firsts;
    for (size_t j = 0; j < slice.sources.size(); ++j) firsts.push_back(range(module, s, j).first);
    for (const std::string& name : reader(s, 0).names()) {
      const auto l = layer_of(name);
      if (!l || !in_stack(module, name) || l->index != firsts[0] + i) continue;
      std::vector<std::string> names;
      for (const int64_t f : firsts) names.push_back(with_layer(*l, f + i));
      add(s, with_layer(*l, out_layer), names, t);
    }
  }

  const MergeConfig& config_;
  const MethodSpec& spec_;
  const CheckpointReader* base_;
  std::span<const CheckpointReader* const> readers_;
  std::vector<ModuleLayout> layouts_;
  std::map<std::pair<const CheckpointReader*, const ModuleLayout*>, int64_t> counts_;
  SlicePlan plan_;
};

}  // namespace

SlicePlan plan_slices(const MergeConfig& config, const MethodSpec& spec, const CheckpointReader* base,
                      std::span<const CheckpointReader* const> readers) {
  return SlicePlanner(config, spec, base, readers).plan();
}

}  // namespace amalgam
