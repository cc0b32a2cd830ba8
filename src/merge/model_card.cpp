#include "merge/model_card.h"

#include <sstream>

#include "core/version.h"

namespace amalgam {

nlohmann::ordered_json config_for_output(nlohmann::ordered_json config, std::optional<DType> weights) {
  if (!weights || !config.is_object()) return config;
  const std::string name(torch_dtype_name(*weights));
  config["torch_dtype"] = name;
  if (config.contains("dtype")) config["dtype"] = name;
  return config;
}

namespace {

// A value for YAML front matter: JSON strings are valid YAML scalars, quotes and all.
std::string yaml_string(const std::string& s) {
  return nlohmann::json(s).dump();
}

}  // namespace

std::string merge_model_card(const MergeConfig& resolved, std::string_view config_yaml, std::optional<DType> weights) {
  std::ostringstream card;
  card << "---\n";
  if (resolved.base_model) card << "base_model:\n- " << yaml_string(*resolved.base_model) << "\n";
  card << "library_name: transformers\ntags:\n- amalgam\n- merge\n---\n\n";
  card << "# Merged model\n\n";
  card << "Merged by " << kWrittenBy << " with the `" << resolved.merge_method << "` method";
  if (weights) card << ", weights stored as " << torch_dtype_name(*weights);
  card << ".\n\n## Models\n\n";
  if (resolved.base_model) card << "- base: `" << *resolved.base_model << "`\n";
  for (const auto& m : resolved.models) card << "- `" << m.model << "`\n";
  card << "\n## Configuration\n\nThe configuration below reproduces this merge (`amalgam merge "
          "amalgam_config.yaml -o OUT`):\n\n```yaml\n"
       << config_yaml << (config_yaml.ends_with('\n') ? "" : "\n") << "```\n";
  return card.str();
}

}  // namespace amalgam
