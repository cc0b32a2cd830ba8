// Fuzzes the merge YAML (parse_merge_config): syntax, keys, settings. A config that parses
// is then used as the engine uses it (every parameter resolved for a few tensors) and
// written back with merge_config_to_yaml, which must parse again: amalgam records that text
// in every output as amalgam_config.yaml.
#include <cstdlib>

#include "core/utf8.h"
#include "fuzz_util.h"
#include "merge/config.h"

namespace {

using namespace amalgam;
namespace fs = std::filesystem;

void resolve_everything(const MergeConfig& config) {
  std::vector<std::string> names;
  for (const auto& [name, setting] : config.parameters) names.push_back(name);
  for (const auto& m : config.models)
    for (const auto& [name, setting] : m.parameters) names.push_back(name);
  for (const auto& slice : config.slices) {
    for (const auto& [name, setting] : slice.parameters) names.push_back(name);
    for (const auto& source : slice.sources)
      for (const auto& [name, setting] : source.parameters) names.push_back(name);
  }
  for (const auto& name : names)
    for (const char* tensor : {"model.layers.0.mlp.fc1.weight", "lm_head.weight", ""})
      for (double t : {0.0, 0.37, 1.0}) {
        (void)resolve_param(config, name, std::nullopt, tensor, t);
        for (size_t i = 0; i < config.models.size(); ++i) (void)resolve_param(config, name, i, tensor, t);
        for (size_t s = 0; s < config.slices.size(); ++s)
          for (size_t j = 0; j < config.slices[s].sources.size(); ++j)
            (void)resolve_param(config, name, ParamOwner{config.slices[s].sources[j].candidate, s, j}, tensor, t);
      }
}

// What the round trip below holds for: the parser has refused anything but UTF-8, and yaml-cpp
// writes other control characters (and non-characters) back escaped or replaced.
bool is_printable_yaml_text(std::string_view s) {
  uint32_t cp = 0;
  for (size_t i = 0, n = 0; i < s.size(); i += n) {
    n = decode_utf8(s, i, cp);
    if (n == 0) return false;
    if ((cp < 0x20 && cp != '\t' && cp != '\n' && cp != '\r') || (cp >= 0x7f && cp < 0xa0) || cp == 0xfeff ||
        cp == 0xfffe || cp == 0xffff)
      return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path source = fuzz::work_dir() / "merge.yaml";
  std::optional<MergeConfig> config;
  fuzz::accept_input_errors([&] { config = parse_merge_config(fuzz::as_text(data, size), source); });
  if (!config) return 0;
  resolve_everything(*config);
  if (!is_printable_yaml_text(fuzz::as_text(data, size))) return 0;
  // Not inside accept_input_errors: amalgam's own output failing to parse is a bug.
  const MergeConfig again = parse_merge_config(merge_config_to_yaml(*config), source);
  if (again.merge_method != config->merge_method || again.models.size() != config->models.size() ||
      again.parameters != config->parameters || again.slices.size() != config->slices.size() ||
      again.modules.size() != config->modules.size())
    std::abort();
  for (size_t m = 0; m < config->modules.size(); ++m) {
    const MergeModule &a = config->modules[m], &b = again.modules[m];
    if (a.name != b.name || a.first_slice != b.first_slice || a.slice_count != b.slice_count ||
        a.from_models != b.from_models || a.parameters != b.parameters)
      std::abort();
  }
  if (again.tokenizer.has_value() != config->tokenizer.has_value()) std::abort();
  if (config->tokenizer) {
    const TokenizerSettings &a = *config->tokenizer, &b = *again.tokenizer;
    if (a.source != b.source || a.pad_to_multiple_of != b.pad_to_multiple_of || a.tokens.size() != b.tokens.size())
      std::abort();
    for (size_t i = 0; i < a.tokens.size(); ++i) {
      const TokenEmbedding &x = a.tokens[i].second, &y = b.tokens[i].second;
      if (a.tokens[i].first != b.tokens[i].first || x.source != y.source || x.candidate != y.candidate ||
          x.token_id != y.token_id || x.token != y.token || x.force != y.force)
        std::abort();
    }
  }
  for (size_t s = 0; s < config->slices.size(); ++s)
    for (size_t j = 0; j < config->slices[s].sources.size(); ++j) {
      const SliceSource &a = config->slices[s].sources[j], &b = again.slices[s].sources.at(j);
      if (a.candidate != b.candidate || a.first != b.first || a.end != b.end || a.parameters != b.parameters ||
          a.whole_stack != b.whole_stack || a.added_base != b.added_base)
        std::abort();
    }
  return 0;
}
