// Fuzzes the merge YAML (parse_merge_config): syntax, keys, settings. A config that parses
// is then used as the engine uses it (every parameter resolved for a few tensors) and
// written back with merge_config_to_yaml, which must parse again: amalgam records that text
// in every output as amalgam_config.yaml.
#include <cstdlib>

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
  for (const auto& name : names)
    for (const char* tensor : {"model.layers.0.mlp.fc1.weight", "lm_head.weight", ""})
      for (double t : {0.0, 0.37, 1.0}) {
        (void)resolve_param(config, name, std::nullopt, tensor, t);
        for (size_t i = 0; i < config.models.size(); ++i) (void)resolve_param(config, name, i, tensor, t);
      }
}

// YAML text is printable Unicode in UTF-8 (tab, LF and CR the only control characters).
// yaml-cpp reads other bytes as they are but writes U+FFFD for them, so the round trip
// below holds only for text like this. (Reported: the parser could refuse other bytes.)
bool is_yaml_text(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    if (n == 1 && ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f)) return false;
    uint32_t cp = n == 1 ? c : c & (0x7f >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0) || cp == 0xfeff ||
        cp == 0xfffe || cp == 0xffff)
      return false;
    i += n;
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
  if (!is_yaml_text(fuzz::as_text(data, size))) return 0;
  // Not inside accept_input_errors: amalgam's own output failing to parse is a bug.
  const MergeConfig again = parse_merge_config(merge_config_to_yaml(*config), source);
  if (again.merge_method != config->merge_method || again.models.size() != config->models.size() ||
      again.parameters != config->parameters)
    std::abort();
  return 0;
}
