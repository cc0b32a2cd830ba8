// The merge configuration: a superset of mergekit's YAML.
//
//   merge_method: ties
//   base_model: path/to/base
//   models:
//     - model: path/to/a
//       parameters: {weight: 1.0, density: [0.2, 0.8]}   # gradient over layers
//     - model: path/to/b
//       parameters:
//         weight: [{filter: mlp, value: 0.5}, {value: 1.0}]  # conditional on the tensor name
//   parameters: {lambda: 0.3}
//   dtype: float32        # compute dtype (amalgam always computes in float32 or better)
//   out_dtype: bfloat16
//
// This layer checks syntax only (known keys, value shapes); the merge engine checks each
// parameter against the chosen method.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/dtype.h"

namespace YAML {
class Node;
}

namespace amalgam {

// One parameter's value as mergekit allows it:
//  - a scalar (number or bool; bools are 1 and 0),
//  - a gradient: a list of numbers interpolated linearly across the layers (t in [0, 1]),
//  - a conditional list: [{filter: SUBSTRING, value: SETTING}, ..., {value: FALLBACK}], the
//    first entry whose filter is absent, "*", or a substring of the tensor name wins.
class ParamSetting {
 public:
  struct Conditional;
  using Gradient = std::vector<double>;

  static ParamSetting scalar(double v);
  static ParamSetting gradient(Gradient g);
  static ParamSetting conditional(std::vector<Conditional> c);

  // The value for a tensor at layer position t (0 = first layer, 1 = last; clamped to that
  // range), or nullopt when no conditional entry matches, so the caller falls back to the
  // next level.
  std::optional<double> evaluate(std::string_view tensor_name, double t) const;

  bool is_scalar() const;

  bool operator==(const ParamSetting&) const;

 private:
  std::variant<double, Gradient, std::vector<Conditional>> value_;
  friend YAML::Node param_to_yaml(const ParamSetting&);
};

struct ParamSetting::Conditional {
  std::optional<std::string> filter;
  ParamSetting value;
  bool operator==(const Conditional&) const = default;
};

using ParamMap = std::map<std::string, ParamSetting>;

// Parameters whose values are words ("embeddings: base"): the config holds a word as its index
// in `words`, a scalar like any other, and writes it back as the word. nullptr for the rest.
struct WordParameter {
  std::string_view name;
  std::vector<std::string_view> words;
};
const WordParameter* word_parameter(std::string_view name);

struct ModelEntry {
  std::string model;           // as written in the config
  std::filesystem::path path;  // resolved: relative to the working directory if it exists there,
                               // else relative to the config file's directory
  // "BASE+ADAPTER" (mergekit's syntax): `path` is the base, this its PEFT LoRA adapter.
  std::optional<std::filesystem::path> adapter;
  ParamMap parameters;
  // Data-aware extensions (RegMean and later): calibration data (one task directory, or a
  // list of them whose examples are drawn in equal shares) or precomputed statistics.
  std::vector<std::filesystem::path> data;
  std::optional<std::filesystem::path> stats;
};

// mergekit's slices: the output's layers, slice after slice, each slice a merge of the same
// number of consecutive layers from each of its sources (a frankenmerge when a slice has one
// source: passthrough).
//
//   slices:
//     - sources:
//         - model: a
//           layer_range: [0, 24]
//         - model: b
//           layer_range: [0, 24]
//           parameters: {weight: 0.7}
//       parameters: {t: [0, 1]}      # a gradient runs across the slice's own layers
struct SliceSource {
  std::string model;                // as written
  std::optional<size_t> candidate;  // its entry in MergeConfig::models; nullopt: the base_model
  int64_t first = 0, end = 0;       // layer_range [first, end)
  // A module's `models:` entry: the model's whole stack of layers in its module (the planner
  // counts them); `added_base`: the base_model, which mergekit adds to a module's models
  // when they do not list it.
  bool whole_stack = false;
  bool added_base = false;
  ParamMap parameters;
};
struct MergeSlice {
  std::vector<SliceSource> sources;
  std::optional<size_t> base_source;      // the slice's own base_model: one of its sources
  std::optional<double> residual_weight;  // read and kept; mergekit's current code does not use it
  ParamMap parameters;
  std::optional<size_t> module;  // its entry in MergeConfig::modules, with `modules:`
};

// mergekit's modules: the parts of a multi-module checkpoint (a vision-language model's
// text_decoder, vision_tower and multi_modal_projector; an encoder-decoder's encoder and
// decoder), each merged from its own models or slices (merge/modules.h says which tensors
// belong to which). A one-module checkpoint's only module is "default".
//
//   modules:
//     text_decoder:
//       slices: [...]                      # as the top-level slices
//     vision_tower:
//       models: [{model: a}, {model: b}]   # each model's whole module
//       parameters: {weight: 0.5}          # between a slice's settings and the global ones
//
// Parsed as mergekit normalizes it: every module's models become one slice whose sources
// take each model's whole stack, and all modules' slices lie in MergeConfig::slices, module
// after module.
struct MergeModule {
  std::string name;
  size_t first_slice = 0, slice_count = 0;  // its slices in MergeConfig::slices
  bool from_models = false;                 // given as models: (and written back so)
  ParamMap parameters;
};

// mergekit's tokenizer options (`tokenizer_source`, or the `tokenizer:` section, which wins):
// the output's vocabulary, and where a token's embedding row comes from in a model that lacks
// the token (merge/vocabulary.h). A model named here is one of the merge's, as written.
struct TokenEmbedding {
  enum class Source { Auto, Zero, Model, ModelToken };
  Source source = Source::Auto;      // Auto: as mergekit assigns it (one model has it, the base, or the mean)
  std::string model;                 // Model, ModelToken: as written
  std::optional<size_t> candidate;   // its entry in MergeConfig::models; nullopt: the base_model
  std::optional<int64_t> token_id;   // ModelToken: a row of that model's own embeddings
  std::optional<std::string> token;  // ModelToken: or the token whose row it is
  bool force = false;                // this row even in the models that have the token
};
struct TokenizerSettings {
  std::string source = "union";                                // "union", "base", or a model as written
  std::optional<std::filesystem::path> source_path;            // a model's, resolved
  std::vector<std::pair<std::string, TokenEmbedding>> tokens;  // added to the vocabulary, in config order
  std::optional<int64_t> pad_to_multiple_of;
};

struct MergeConfig {
  std::filesystem::path source;  // the file it came from, for messages
  std::string merge_method;
  std::optional<std::string> base_model;
  std::optional<std::filesystem::path> base_path;     // resolved like ModelEntry::path
  std::optional<std::filesystem::path> base_adapter;  // "BASE+ADAPTER", as for a model
  std::vector<ModelEntry> models;                     // with slices: the distinct models they read, base_model apart
  std::vector<MergeSlice> slices;
  std::vector<MergeModule> modules;  // with modules: (their slices in `slices`)
  ParamMap parameters;
  std::optional<DType> dtype;
  std::optional<DType> out_dtype;
  std::optional<uint64_t> seed;  // amalgam extension; --seed on the command line overrides it
  // mergekit's chat_template: "auto", a template name or a Jinja template (merge/chat_template.h).
  std::optional<std::string> chat_template;
  std::optional<TokenizerSettings> tokenizer;  // none: the base's tokenizer files, shapes must match
};

// Parses YAML text. Errors are InputError naming `source` and the key, e.g.
// "merge.yaml: models[1].parameters.weight: expected a number, a list of numbers, or a list of
// {filter, value}, got 'abc'". Unknown keys are errors. Exactly one of models, slices and
// modules. Numbers must be plain YAML scalars (a quoted
// "0.5" is a string, an error) and finite. An optional key set to null counts as absent, and a models entry may be a
// bare string, short for {model: STRING}.
MergeConfig parse_merge_config(std::string_view yaml_text, const std::filesystem::path& source);
MergeConfig load_merge_config(const std::filesystem::path& path);

// The resolved config, written into every output as amalgam_config.yaml. Parsing it back
// (with the same working directory and source) gives an equal config: `model` and
// `base_model` are written as given, data and stats as their resolved paths.
std::string merge_config_to_yaml(const MergeConfig& config);

// Whose settings a parameter is looked up in: a model of `models` (with slices: the source
// `source` of slice `slice`), or nobody's (the method's global parameters).
struct ParamOwner {
  std::optional<size_t> model;
  std::optional<size_t> slice;
  std::optional<size_t> source;
};
// mergekit's precedence: the slice source's setting, the slice's, its module's, then the
// global one (with models: the model's own, then the global); a setting that evaluates to nullopt (no
// conditional matched) falls through. nullopt if none applies.
std::optional<double> resolve_param(const MergeConfig& config, const std::string& name, const ParamOwner& owner,
                                    std::string_view tensor_name, double t);
// A models: merge's lookup: model `model_index` of `models`, or the global parameters.
inline std::optional<double> resolve_param(const MergeConfig& config, const std::string& name,
                                           std::optional<size_t> model_index, std::string_view tensor_name, double t) {
  return resolve_param(config, name, ParamOwner{model_index, std::nullopt, std::nullopt}, tensor_name, t);
}

// Where the config writes slice `s` and its source `j`, for messages: "slices[1]",
// "modules.text_decoder.slices[0].sources[1]", "modules.vision_tower.models[0]".
std::string slice_key(const MergeConfig& config, size_t s);
std::string source_key(const MergeConfig& config, size_t s, size_t j);

// Shared with the other YAML configs (MASS): the text parsed, a syntax error an InputError
// naming `source`, the line and the column; and a path written in a config, resolved
// against the working directory first, then against the config file's directory.
YAML::Node parse_yaml_text(std::string_view text, const std::filesystem::path& source);

// What every YAML config parser shares (merge configs, MASS configs): errors naming the file
// and the key path ("merge.yaml: models[1].parameters.weight: ..."), maps walked with
// non-string and duplicate keys refused, and values described for messages.
class YamlConfigReader {
 public:
  explicit YamlConfigReader(const std::filesystem::path& source) : source_(source) {}

 protected:
  [[noreturn]] void fail(const std::string& path, std::string_view message) const;
  void for_each_entry(const YAML::Node& map, const std::string& path,
                      const std::function<void(const std::string&, const YAML::Node&)>& fn) const;
  // A scalar as written ('abc'), anything else by its kind (a list, a map, nothing).
  static std::string describe(const YAML::Node& n);

  const std::filesystem::path& source_;
};
std::filesystem::path resolve_path(const std::string& given, const std::filesystem::path& source);
// A model as mergekit users name it: a local path (resolve_path), else a Hugging Face id
// ("org/name", "org/name@revision") in the local hub cache (io/hub_cache.h); as given when
// neither holds it (the caller reports where it looked).
std::filesystem::path resolve_model_path(const std::string& given, const std::filesystem::path& source);

// "float32", "float16", "bfloat16", "float64" (torch names, with or without "torch."),
// and amalgam's own names ("F32", "BF16", ...); nullopt otherwise.
std::optional<DType> parse_dtype_name(std::string_view name);

}  // namespace amalgam
