#include "merge/config.h"
#include "io/hub_cache.h"
#include "merge/chat_template.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/parser.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <utility>

#include "core/error.h"
#include "core/utf8.h"
#include "io/json_file.h"

namespace amalgam {

namespace fs = std::filesystem;

// ---- ParamSetting -----------------------------------------------------------------------

ParamSetting ParamSetting::scalar(double v) {
  ParamSetting s;
  s.value_ = v;
  return s;
}

ParamSetting ParamSetting::gradient(Gradient g) {
  ParamSetting s;
  s.value_ = std::move(g);
  return s;
}

ParamSetting ParamSetting::conditional(std::vector<Conditional> c) {
  ParamSetting s;
  s.value_ = std::move(c);
  return s;
}

namespace {

// mergekit's interpolation, term for term, so that amalgam and mergekit agree to the last bit.
// t is clamped to [0, 1] because mergekit would index out of range (or wrap) outside it.
double interpolate(const ParamSetting::Gradient& g, double t) {
  if (g.empty()) throw std::logic_error("ParamSetting: empty gradient");
  if (!(t >= 0)) t = 0;  // also catches NaN, which would make the index below undefined
  t = std::min(t, 1.0);
  const size_t last = g.size() - 1;
  const double scaled = t * static_cast<double>(last);
  const size_t i0 = std::min(last, static_cast<size_t>(scaled));
  const size_t i1 = std::min(last, i0 + 1);
  const double frac = scaled - static_cast<double>(i0);
  return (1 - frac) * g[i0] + frac * g[i1];
}

// mergekit: `filter is None or filter == "*" or (tensor_name and filter in tensor_name)`.
bool filter_matches(const std::optional<std::string>& filter, std::string_view tensor_name) {
  if (!filter || *filter == "*") return true;
  return !tensor_name.empty() && tensor_name.find(*filter) != std::string_view::npos;
}

}  // namespace

std::optional<double> ParamSetting::evaluate(std::string_view tensor_name, double t) const {
  if (const double* v = std::get_if<double>(&value_)) return *v;
  if (const Gradient* g = std::get_if<Gradient>(&value_)) return interpolate(*g, t);
  for (const Conditional& c : std::get<std::vector<Conditional>>(value_))
    if (filter_matches(c.filter, tensor_name)) return c.value.evaluate(tensor_name, t);
  return std::nullopt;
}

bool ParamSetting::is_scalar() const {
  return std::holds_alternative<double>(value_);
}

bool ParamSetting::operator==(const ParamSetting& other) const {
  return value_ == other.value_;
}

// ---- Parsing ----------------------------------------------------------------------------

namespace {

constexpr std::string_view kSettingShape = "expected a number, a list of numbers, or a list of {filter, value}";

std::string key_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::string index_path(const std::string& parent, size_t i) {
  return parent + "[" + std::to_string(i) + "]";
}

// Only plain scalars are numbers: a quoted "0.5" is a string in YAML, and amalgam takes YAML's
// word for it rather than guessing. Bools count because mergekit (Python) treats them as 0/1.
std::optional<double> as_number(const YAML::Node& n) {
  if (!n.IsScalar() || n.Tag() != "?") return std::nullopt;
  double d = 0;
  if (YAML::convert<double>::decode(n, d)) return d;
  bool b = false;
  if (YAML::convert<bool>::decode(n, b)) return b ? 1.0 : 0.0;
  return std::nullopt;
}

class ConfigParser : YamlConfigReader {
 public:
  using YamlConfigReader::YamlConfigReader;

  MergeConfig parse(const YAML::Node& root) const;

 private:
  void parse_top_key(MergeConfig& c, const std::string& key, const YAML::Node& v) const;
  std::string parse_string(const YAML::Node& n, const std::string& path) const;
  std::string parse_model_name(const YAML::Node& n, const std::string& path) const;
  std::filesystem::path resolve_model(const std::string& given, const std::string& path,
                                      std::optional<std::filesystem::path>& adapter) const;
  fs::path parse_path(const YAML::Node& n, const std::string& path) const;
  std::vector<ModelEntry> parse_models(const YAML::Node& n) const;
  std::vector<MergeSlice> parse_slices(const YAML::Node& n, const std::string& path,
                                       std::vector<std::string>& slice_bases) const;
  void parse_modules(const YAML::Node& n, MergeConfig& c, std::vector<std::string>& slice_bases) const;
  void add_bases_to_modules(MergeConfig& c) const;
  SliceSource parse_slice_source(const YAML::Node& n, const std::string& path) const;
  void link_slices(MergeConfig& c, const std::vector<std::string>& slice_bases) const;
  TokenizerSettings parse_tokenizer(const YAML::Node& n, const std::string& path) const;
  TokenEmbedding parse_token_embedding(const YAML::Node& n, const std::string& path) const;
  void resolve_tokenizer_source(TokenizerSettings& t, const std::string& path) const;
  void link_tokenizer(MergeConfig& c) const;
  ModelEntry parse_model(const YAML::Node& n, const std::string& path) const;
  ParamMap parse_params(const YAML::Node& n, const std::string& path) const;
  ParamSetting parse_setting(const YAML::Node& n, const std::string& path) const;
  ParamSetting parse_gradient(const YAML::Node& n, const std::string& path) const;
  ParamSetting::Conditional parse_conditional(const YAML::Node& n, const std::string& path) const;
  double parse_number(const YAML::Node& n, const std::string& path, std::string_view shape) const;
  DType parse_dtype_value(const YAML::Node& n, const std::string& path) const;
  uint64_t parse_seed(const YAML::Node& n) const;

  mutable bool tokenizer_section_ = false;  // seen: its source wins over tokenizer_source
};

// yaml-cpp keeps duplicate keys and lookups return the first, so a repeated key would be
// silently ignored: it is an error here.
MergeConfig ConfigParser::parse(const YAML::Node& root) const {
  if (!root.IsMap()) fail("", "expected a map with merge_method and models, got " + describe(root));
  MergeConfig c;
  c.source = source_;
  std::vector<std::string> slice_bases;
  std::vector<std::string> given;  // of models, slices and modules
  for_each_entry(root, "", [&](const std::string& key, const YAML::Node& v) {
    if ((key == "models" || key == "slices" || key == "modules") && !v.IsNull()) given.push_back(key);
    if (key == "slices" && !v.IsNull())
      c.slices = parse_slices(v, "slices", slice_bases);
    else if (key == "modules" && !v.IsNull())
      parse_modules(v, c, slice_bases);
    else
      parse_top_key(c, key, v);
  });
  if (c.merge_method.empty()) fail("merge_method", "required");
  if (given.size() > 1)
    fail("", "give one of models, slices and modules (as mergekit), not " + given[0] + " and " + given[1]);
  if (c.slices.empty() && c.models.empty())
    fail("models", "required: the list of models to merge (or slices, or modules)");
  add_bases_to_modules(c);
  link_slices(c, slice_bases);
  link_tokenizer(c);
  return c;
}

bool is_known_key(const std::string& key) {
  return key == "merge_method" || key == "models" || key == "slices" || key == "modules" || key == "base_model" ||
         key == "parameters" || key == "dtype" || key == "out_dtype" || key == "seed" || key == "tokenizer_source" ||
         key == "tokenizer" || key == "chat_template";
}

// A key set to null counts as absent, as in mergekit, where every optional field is Optional.
void ConfigParser::parse_top_key(MergeConfig& c, const std::string& key, const YAML::Node& v) const {
  if (!is_known_key(key)) fail("", "unknown key '" + key + "'");
  if (key == "merge_method") {
    c.merge_method = parse_string(v, key);
    if (c.merge_method.empty()) fail(key, "must not be empty");
  } else if (key == "models") {
    c.models = parse_models(v);
  } else if (v.IsNull()) {
    return;
  } else if (key == "base_model") {
    c.base_model = parse_model_name(v, key);
    c.base_path = resolve_model(*c.base_model, key, c.base_adapter);
  } else if (key == "parameters") {
    c.parameters = parse_params(v, key);
  } else if (key == "dtype" || key == "out_dtype") {
    (key == "dtype" ? c.dtype : c.out_dtype) = parse_dtype_value(v, key);
  } else if (key == "seed") {
    c.seed = parse_seed(v);
  } else if (key == "chat_template") {
    c.chat_template = parse_string(v, key);
    if (!is_chat_template_choice(*c.chat_template))
      fail(key, "'" + *c.chat_template + "' is neither auto, a template name (" + chat_template_names() +
                    ") nor a Jinja template");
  } else if (key == "tokenizer") {
    c.tokenizer = parse_tokenizer(v, key);
    tokenizer_section_ = true;
  } else if (!tokenizer_section_) {  // tokenizer_source; the tokenizer: section's source wins
    c.tokenizer = TokenizerSettings{};
    c.tokenizer->source = parse_model_name(v, key);
    resolve_tokenizer_source(*c.tokenizer, key);
  }
}

void ConfigParser::resolve_tokenizer_source(TokenizerSettings& t, const std::string& path) const {
  if (t.source == "union" || t.source == "base") return;
  std::optional<fs::path> adapter;
  t.source_path = resolve_model(t.source, path, adapter);
  if (adapter) fail(path, "'" + t.source + "': a tokenizer comes from a model, not a LoRA adapter");
}

TokenizerSettings ConfigParser::parse_tokenizer(const YAML::Node& n, const std::string& path) const {
  if (!n.IsMap()) fail(path, "expected a map with source, tokens or pad_to_multiple_of, got " + describe(n));
  TokenizerSettings t;
  for_each_entry(n, path, [&](const std::string& key, const YAML::Node& v) {
    const std::string at = key_path(path, key);
    if (v.IsNull()) return;
    if (key == "source") {
      t.source = parse_model_name(v, at);
      resolve_tokenizer_source(t, at);
    } else if (key == "pad_to_multiple_of") {
      const double m = parse_number(v, at, "a positive integer");
      if (m < 1 || m > 1e6 || m != std::floor(m)) fail(at, "expected a positive integer, got " + describe(v));
      t.pad_to_multiple_of = static_cast<int64_t>(m);
    } else if (key == "tokens") {
      if (!v.IsMap()) fail(at, "expected a map of token -> {source, force}, got " + describe(v));
      for_each_entry(v, at, [&](const std::string& token, const YAML::Node& e) {
        t.tokens.emplace_back(token, parse_token_embedding(e, key_path(at, token)));
      });
    } else {
      fail(path, "unknown key '" + key + "'");
    }
  });
  return t;
}

// {source: MODEL | {kind: zero} | {kind: model_token, model, token_id | token}, force: bool}
TokenEmbedding ConfigParser::parse_token_embedding(const YAML::Node& n, const std::string& path) const {
  TokenEmbedding e;
  if (n.IsNull()) return e;
  if (!n.IsMap()) fail(path, "expected a map with source and force, got " + describe(n));
  for_each_entry(n, path, [&](const std::string& key, const YAML::Node& v) {
    const std::string at = key_path(path, key);
    if (key == "force") {
      if (!v.IsScalar() || (v.Scalar() != "true" && v.Scalar() != "false"))
        fail(at, "expected true or false, got " + describe(v));
      e.force = v.Scalar() == "true";
    } else if (key != "source") {
      fail(path, "unknown key '" + key + "'");
    } else if (v.IsNull()) {
      e.source = TokenEmbedding::Source::Auto;
    } else if (v.IsScalar()) {
      e.source = TokenEmbedding::Source::Model;
      e.model = parse_model_name(v, at);
    } else if (v.IsMap()) {
      std::string kind;
      for_each_entry(v, at, [&](const std::string& k, const YAML::Node& x) {
        const std::string xat = key_path(at, k);
        if (k == "kind") {
          kind = parse_string(x, xat);
        } else if (k == "model") {
          e.model = parse_model_name(x, xat);
        } else if (k == "token_id") {
          const double id = parse_number(x, xat, "a token id");
          if (id < 0 || id != std::floor(id) || id > 1e12) fail(xat, "expected a token id, got " + describe(x));
          e.token_id = static_cast<int64_t>(id);
        } else if (k == "token") {
          e.token = parse_string(x, xat);
        } else {
          fail(at, "unknown key '" + k + "'");
        }
      });
      if (kind == "zero") {
        e.source = TokenEmbedding::Source::Zero;
        if (!e.model.empty() || e.token_id || e.token) fail(at, "a zero source takes no model or token");
      } else if (kind == "model_token") {
        e.source = TokenEmbedding::Source::ModelToken;
        if (e.model.empty()) fail(key_path(at, "model"), "required for kind model_token");
        if (e.token_id.has_value() == e.token.has_value()) fail(at, "give one of token_id and token");
      } else {
        fail(key_path(at, "kind"), "expected zero or model_token, got '" + kind + "'");
      }
    } else {
      fail(at, "expected a model, {kind: zero} or {kind: model_token, ...}, got " + describe(v));
    }
  });
  return e;
}

// A token's source model is one of the merge's: its entry in models, or the base_model.
void ConfigParser::link_tokenizer(MergeConfig& c) const {
  if (!c.tokenizer) return;
  for (auto& [token, e] : c.tokenizer->tokens) {
    if (e.model.empty()) continue;
    const std::string at = "tokenizer.tokens." + token + ".source";
    bool found = c.base_model && *c.base_model == e.model;
    for (size_t i = 0; i < c.models.size() && !found; ++i)
      if (c.models[i].model == e.model) {
        e.candidate = i;
        found = true;
      }
    if (!found) fail(at, "'" + e.model + "' is not a model of this merge");
  }
}

std::string ConfigParser::parse_string(const YAML::Node& n, const std::string& path) const {
  if (!n.IsScalar()) fail(path, "expected a string, got " + describe(n));
  return n.Scalar();
}

std::string ConfigParser::parse_model_name(const YAML::Node& n, const std::string& path) const {
  std::string name = parse_string(n, path);
  if (name.empty()) fail(path, "must not be empty");
  return name;
}

// mergekit's "BASE+ADAPTER": a PEFT LoRA adapter applied to its base (a path that exists as
// written, '+' and all, is a path). Returns the checkpoint's path, and sets `adapter`.
fs::path ConfigParser::resolve_model(const std::string& given, const std::string& path,
                                     std::optional<fs::path>& adapter) const {
  fs::path resolved = resolve_model_path(given, source_);
  std::error_code ec;
  const size_t plus = given.find('+');
  if (plus == std::string::npos || fs::exists(resolved, ec)) return resolved;
  if (given.find('+', plus + 1) != std::string::npos)
    fail(path, "'" + given + "': one '+' joins a base and its LoRA adapter, this has more");
  adapter = resolve_model_path(given.substr(plus + 1), source_);
  return resolve_model_path(given.substr(0, plus), source_);
}

fs::path ConfigParser::parse_path(const YAML::Node& n, const std::string& path) const {
  const std::string s = parse_string(n, path);
  if (s.empty()) fail(path, "must not be empty");
  return resolve_path(s, source_);
}

std::vector<ModelEntry> ConfigParser::parse_models(const YAML::Node& n) const {
  if (!n.IsSequence() || n.size() == 0) fail("models", "expected a non-empty list, got " + describe(n));
  std::vector<ModelEntry> models;
  for (size_t i = 0; i < n.size(); ++i) models.push_back(parse_model(n[i], index_path("models", i)));
  return models;
}

std::vector<MergeSlice> ConfigParser::parse_slices(const YAML::Node& n, const std::string& at_key,
                                                   std::vector<std::string>& slice_bases) const {
  if (!n.IsSequence() || n.size() == 0) fail(at_key, "expected a non-empty list, got " + describe(n));
  std::vector<MergeSlice> slices;
  for (size_t i = 0; i < n.size(); ++i) {
    const std::string path = index_path(at_key, i);
    if (!n[i].IsMap()) fail(path, "expected a map with 'sources', got " + describe(n[i]));
    MergeSlice slice;
    std::string base;
    for_each_entry(n[i], path, [&](const std::string& key, const YAML::Node& v) {
      const std::string at = key_path(path, key);
      if (key == "sources") {
        if (!v.IsSequence() || v.size() == 0) fail(at, "expected a non-empty list, got " + describe(v));
        for (size_t j = 0; j < v.size(); ++j) slice.sources.push_back(parse_slice_source(v[j], index_path(at, j)));
      } else if (key != "base_model" && key != "residual_weight" && key != "parameters") {
        fail(path, "unknown key '" + key + "'");
      } else if (v.IsNull()) {
        // absent
      } else if (key == "base_model") {
        base = parse_model_name(v, at);
      } else if (key == "residual_weight") {
        slice.residual_weight = parse_number(v, at, "expected a number");
      } else {
        slice.parameters = parse_params(v, at);
      }
    });
    if (slice.sources.empty()) fail(path, "missing 'sources'");
    slices.push_back(std::move(slice));
    slice_bases.push_back(base);
  }
  return slices;
}

SliceSource ConfigParser::parse_slice_source(const YAML::Node& n, const std::string& path) const {
  if (!n.IsMap()) fail(path, "expected a map with 'model' and 'layer_range', got " + describe(n));
  SliceSource s;
  bool have_range = false;
  for_each_entry(n, path, [&](const std::string& key, const YAML::Node& v) {
    const std::string at = key_path(path, key);
    if (key == "model") {
      s.model = parse_model_name(v, at);
    } else if (key == "layer_range") {
      if (!v.IsSequence() || v.size() != 2) fail(at, "expected [first, end], got " + describe(v));
      const double first = parse_number(v[0], index_path(at, 0), "expected a layer number");
      const double end = parse_number(v[1], index_path(at, 1), "expected a layer number");
      if (first != std::floor(first) || end != std::floor(end) || first < 0 || end <= first || end > 1e6)
        fail(at, "expected whole numbers 0 <= first < end, got [" + v[0].Scalar() + ", " + v[1].Scalar() + "]");
      s.first = static_cast<int64_t>(first);
      s.end = static_cast<int64_t>(end);
      have_range = true;
    } else if (key == "parameters") {
      if (!v.IsNull()) s.parameters = parse_params(v, at);
    } else {
      fail(path, "unknown key '" + key + "'");
    }
  });
  if (s.model.empty()) fail(path, "missing 'model'");
  if (!have_range) fail(path, "missing 'layer_range'");
  return s;
}

// modules: NAME -> {models | slices, parameters}, normalized as mergekit normalizes it: a
// module's models become one slice of whole stacks; every module's slices go to c.slices.
void ConfigParser::parse_modules(const YAML::Node& n, MergeConfig& c, std::vector<std::string>& slice_bases) const {
  if (!n.IsMap() || n.size() == 0) fail("modules", "expected a non-empty map of module names, got " + describe(n));
  for_each_entry(n, "modules", [&](const std::string& name, const YAML::Node& def) {
    const std::string path = key_path("modules", name);
    if (!def.IsMap()) fail(path, "expected a map with models or slices, got " + describe(def));
    MergeModule module{name, c.slices.size(), 0, false, {}};
    std::vector<MergeSlice> slices;
    bool given_slices = false;
    for_each_entry(def, path, [&](const std::string& key, const YAML::Node& v) {
      const std::string at = key_path(path, key);
      if (key != "models" && key != "slices" && key != "parameters") fail(path, "unknown key '" + key + "'");
      if (v.IsNull()) return;
      if (key == "parameters") {
        module.parameters = parse_params(v, at);
      } else if (key == "slices") {
        slices = parse_slices(v, at, slice_bases);
        given_slices = true;
      } else {
        if (!v.IsSequence() || v.size() == 0) fail(at, "expected a non-empty list, got " + describe(v));
        MergeSlice whole;
        for (size_t j = 0; j < v.size(); ++j) {
          ModelEntry m = parse_model(v[j], index_path(at, j));
          if (!m.data.empty() || m.stats)
            fail(index_path(at, j), "data and stats take a models: merge (data-aware methods merge whole models)");
          whole.sources.push_back({m.model, std::nullopt, 0, 0, true, false, std::move(m.parameters)});
        }
        slices.push_back(std::move(whole));
        slice_bases.emplace_back();
        module.from_models = true;
      }
    });
    if (module.from_models == given_slices) fail(path, "give either models or slices (as mergekit)");
    module.slice_count = slices.size();
    for (MergeSlice& slice : slices) {
      slice.module = c.modules.size();
      c.slices.push_back(std::move(slice));
    }
    c.modules.push_back(std::move(module));
  });
}

// mergekit adds the base_model to a module's models when they do not list it.
void ConfigParser::add_bases_to_modules(MergeConfig& c) const {
  if (!c.base_model) return;
  for (const MergeModule& module : c.modules) {
    if (!module.from_models) continue;
    MergeSlice& slice = c.slices[module.first_slice];
    const bool listed = std::any_of(slice.sources.begin(), slice.sources.end(),
                                    [&](const SliceSource& s) { return s.model == *c.base_model; });
    if (!listed) slice.sources.push_back({*c.base_model, std::nullopt, 0, 0, true, true, {}});
  }
}

// With slices, `models` lists the distinct models the sources read, in order of first
// appearance, except the base_model, which stays apart as with models; a slice's own
// base_model must be one of its sources.
void ConfigParser::link_slices(MergeConfig& c, const std::vector<std::string>& slice_bases) const {
  for (size_t i = 0; i < c.slices.size(); ++i) {
    MergeSlice& slice = c.slices[i];
    for (size_t j = 0; j < slice.sources.size(); ++j) {
      SliceSource& s = slice.sources[j];
      if (c.base_model && s.model == *c.base_model) continue;
      const auto known =
          std::find_if(c.models.begin(), c.models.end(), [&](const ModelEntry& m) { return m.model == s.model; });
      s.candidate = static_cast<size_t>(known - c.models.begin());
      if (known != c.models.end()) continue;
      ModelEntry m;
      m.model = s.model;
      m.path = resolve_model(s.model, source_key(c, i, j) + ".model", m.adapter);
      c.models.push_back(std::move(m));
    }
    if (slice_bases[i].empty()) continue;
    const auto base = std::find_if(slice.sources.begin(), slice.sources.end(),
                                   [&](const SliceSource& s) { return s.model == slice_bases[i]; });
    if (base == slice.sources.end())
      fail(slice_key(c, i) + ".base_model", "'" + slice_bases[i] + "' is not one of the slice's sources");
    slice.base_source = static_cast<size_t>(base - slice.sources.begin());
  }
}

// An entry is a map; a bare string is accepted too as shorthand for {model: STRING}.
ModelEntry ConfigParser::parse_model(const YAML::Node& n, const std::string& path) const {
  ModelEntry m;
  if (n.IsScalar()) {
    m.model = parse_model_name(n, path);
  } else if (n.IsMap()) {
    for_each_entry(n, path, [&](const std::string& key, const YAML::Node& v) {
      if (key == "model") {
        m.model = parse_model_name(v, key_path(path, key));
      } else if (key != "parameters" && key != "data" && key != "stats") {
        fail(path, "unknown key '" + key + "'");
      } else if (v.IsNull()) {
        // absent
      } else if (key == "parameters") {
        m.parameters = parse_params(v, key_path(path, key));
      } else if (key == "stats") {
        m.stats = parse_path(v, key_path(path, key));
      } else if (v.IsSequence() && v.size() > 0) {
        for (size_t j = 0; j < v.size(); ++j) m.data.push_back(parse_path(v[j], index_path(key_path(path, key), j)));
      } else {
        m.data.push_back(parse_path(v, key_path(path, key)));
      }
    });
    if (m.model.empty()) fail(path, "missing 'model'");
  } else {
    fail(path, "expected a map with 'model', got " + describe(n));
  }
  m.path = resolve_model(m.model, path, m.adapter);
  return m;
}

ParamMap ConfigParser::parse_params(const YAML::Node& n, const std::string& path) const {
  if (!n.IsMap()) fail(path, "expected a map of parameter names to values, got " + describe(n));
  ParamMap params;
  for_each_entry(n, path, [&](const std::string& name, const YAML::Node& v) {
    const std::string at = key_path(path, name);
    if (const WordParameter* word = word_parameter(name)) {
      std::string choices;
      for (size_t i = 0; i < word->words.size(); ++i) {
        if (v.IsScalar() && v.Scalar() == word->words[i]) {
          params.emplace(name, ParamSetting::scalar(static_cast<double>(i)));
          return;
        }
        choices += (i ? ", " : "") + std::string(word->words[i]);
      }
      fail(at, "expected one of " + choices + ", got " + describe(v));
    }
    params.emplace(name, parse_setting(v, at));
  });
  return params;
}

// The shape is decided by the node: a scalar, a map (one conditional, which mergekit's schema
// allows), or a list whose first element says whether it is a gradient or conditionals.
ParamSetting ConfigParser::parse_setting(const YAML::Node& n, const std::string& path) const {
  if (n.IsScalar()) return ParamSetting::scalar(parse_number(n, path, kSettingShape));
  if (n.IsMap()) return ParamSetting::conditional({parse_conditional(n, path)});
  if (!n.IsSequence()) fail(path, std::string(kSettingShape) + ", got " + describe(n));
  if (n.size() == 0) fail(path, "empty list: a gradient needs at least one number");
  if (n[0].IsScalar()) return parse_gradient(n, path);
  if (!n[0].IsMap()) fail(index_path(path, 0), std::string(kSettingShape) + ", got " + describe(n[0]));
  std::vector<ParamSetting::Conditional> conds;
  for (size_t i = 0; i < n.size(); ++i) {
    if (!n[i].IsMap())
      fail(index_path(path, i), "expected {filter, value} like the entries before it, got " + describe(n[i]));
    conds.push_back(parse_conditional(n[i], index_path(path, i)));
  }
  return ParamSetting::conditional(std::move(conds));
}

ParamSetting ConfigParser::parse_gradient(const YAML::Node& n, const std::string& path) const {
  ParamSetting::Gradient g;
  for (size_t i = 0; i < n.size(); ++i) g.push_back(parse_number(n[i], index_path(path, i), "expected a number"));
  return ParamSetting::gradient(std::move(g));
}

ParamSetting::Conditional ConfigParser::parse_conditional(const YAML::Node& n, const std::string& path) const {
  ParamSetting::Conditional c;
  bool have_value = false;
  for_each_entry(n, path, [&](const std::string& key, const YAML::Node& v) {
    if (key == "filter") {
      if (!v.IsNull()) c.filter = parse_string(v, key_path(path, key));  // null: no filter, as in mergekit
    } else if (key == "value") {
      c.value = parse_setting(v, key_path(path, key));
      have_value = true;
    } else {
      fail(path, "unknown key '" + key + "' (a conditional has only filter and value)");
    }
  });
  if (!have_value) fail(path, "missing 'value'");
  return c;
}

// Infinities and NaN are rejected: no merge parameter means them, and NaN would also break
// the equality a round trip through merge_config_to_yaml promises.
double ConfigParser::parse_number(const YAML::Node& n, const std::string& path, std::string_view shape) const {
  const std::optional<double> d = as_number(n);
  if (!d) {
    const bool quoted = n.IsScalar() && n.Tag() == "!";
    fail(path, std::string(shape) + ", got " + (quoted ? "the string " : "") + describe(n));
  }
  if (!std::isfinite(*d)) fail(path, "expected a finite number, got " + describe(n));
  return *d;
}

DType ConfigParser::parse_dtype_value(const YAML::Node& n, const std::string& path) const {
  const std::string name = parse_string(n, path);
  const std::optional<DType> t = parse_dtype_name(name);
  if (!t) fail(path, "unknown dtype '" + name + "' (expected float32, float16, bfloat16, float64 or F32, BF16, ...)");
  return *t;
}

uint64_t ConfigParser::parse_seed(const YAML::Node& n) const {
  const std::string s = n.IsScalar() && n.Tag() == "?" ? n.Scalar() : std::string();
  uint64_t seed = 0;
  // Decimal digits only: yaml-cpp's own integer decoding would read "010" as octal.
  const bool digits = !s.empty() && std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), seed);
  if (!digits || ec != std::errc() || end != s.data() + s.size())
    fail("seed", "expected a non-negative integer below 2^64, got " + describe(n));
  return seed;
}

}  // namespace

// The path is resolved where the user most likely meant it: the working directory first (as
// mergekit does), then beside the config file, so configs can ship next to their models.
fs::path resolve_path(const std::string& given, const fs::path& source) {
  const fs::path p(given);
  std::error_code ec;
  if (p.is_absolute() || fs::exists(p, ec)) return p;
  const fs::path dir = source.parent_path();
  if (!dir.empty() && fs::exists(dir / p, ec)) return dir / p;
  return p;
}

fs::path resolve_model_path(const std::string& given, const fs::path& source) {
  const fs::path local = resolve_path(given, source);
  std::error_code ec;
  if (fs::exists(local, ec)) return local;
  return find_in_hub_cache(given).value_or(local);
}

void YamlConfigReader::fail(const std::string& path, std::string_view message) const {
  throw InputError(source_, path.empty() ? std::string(message) : path + ": " + std::string(message));
}

void YamlConfigReader::for_each_entry(const YAML::Node& map, const std::string& path,
                                      const std::function<void(const std::string&, const YAML::Node&)>& fn) const {
  std::set<std::string> seen;
  for (const auto& kv : map) {
    if (!kv.first.IsScalar()) fail(path, "keys must be plain strings, got " + describe(kv.first));
    const std::string& key = kv.first.Scalar();
    if (!seen.insert(key).second) fail(path, "duplicate key '" + key + "'");
    fn(key, kv.second);
  }
}

std::string YamlConfigReader::describe(const YAML::Node& n) {
  if (n.IsScalar()) return "'" + n.Scalar() + "'";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a map";
  return "nothing";
}

namespace {

// Reads documents without building them, for their count alone.
struct DocumentCounter final : YAML::EventHandler {
  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// Whether `text` holds a second document. Stops at two: yaml-cpp's LoadAll never ends on
// some malformed input (found by fuzzing: it yields empty documents forever).
bool more_than_one_document(std::string_view text) {
  std::istringstream in{std::string(text)};
  YAML::Parser parser(in);
  DocumentCounter counter;
  return parser.HandleNextDocument(counter) && parser.HandleNextDocument(counter);
}

// Every line break as "\n": YAML 1.2 reads CR LF, a lone CR and LF alike as one line break,
// but yaml-cpp keeps the first CR of "\r\r\n" inside the scalar before it ("ties\r": an
// unknown method, and a config whose re-emission reads back differently; found by
// fuzz_merge_config).
std::string with_lf_line_breaks(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\r') {
      out.push_back(text[i]);
      continue;
    }
    out.push_back('\n');
    if (i + 1 < text.size() && text[i + 1] == '\n') ++i;
  }
  return out;
}

}  // namespace

YAML::Node parse_yaml_text(std::string_view text, const fs::path& source) {
  // YAML is UTF-8; yaml-cpp would carry stray bytes into paths and names, where they surface
  // later as a confusing "file not found" (and come back as U+FFFD when written).
  if (const size_t bad = first_invalid_utf8(text); bad != std::string_view::npos) {
    const size_t line =
        1 + static_cast<size_t>(std::count(text.begin(), text.begin() + static_cast<ptrdiff_t>(bad), '\n'));
    const size_t newline = bad == 0 ? std::string_view::npos : text.rfind('\n', bad - 1);
    const size_t column = newline == std::string_view::npos ? bad + 1 : bad - newline;
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned char>(text[bad]));
    throw InputError(source, "not UTF-8 text: byte " + std::string(byte) + " at line " + std::to_string(line) +
                                 ", column " + std::to_string(column) + " (save the config as UTF-8)");
  }
  try {
    // yaml-cpp's Load keeps the first document and drops the rest without a word: a second
    // document (after "---") is most likely a second merge the user expects to run.
    const std::string lf_text = with_lf_line_breaks(text);
    if (more_than_one_document(lf_text))
      throw InputError(source,
                       "holds more than one YAML document (separated by '---'); a config is one document: put "
                       "each merge in its own file");
    return YAML::Load(lf_text);
  } catch (const YAML::Exception& e) {
    // yaml-cpp's marks are 0-based; editors count from 1.
    const std::string where = e.mark.is_null() ? std::string()
                                               : " at line " + std::to_string(e.mark.line + 1) + ", column " +
                                                     std::to_string(e.mark.column + 1);
    throw InputError(source, "YAML syntax error" + where + ": " + e.msg);
  }
}

MergeConfig parse_merge_config(std::string_view yaml_text, const fs::path& source) {
  return ConfigParser(source).parse(parse_yaml_text(yaml_text, source));
}

MergeConfig load_merge_config(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw InputError(path, "merge config not found");
  return parse_merge_config(read_text_file(path), path);
}

// ---- Writing ----------------------------------------------------------------------------

namespace {

// The shortest text that reads back as the same double. Exponents get a ".0" because YAML 1.1
// readers (PyYAML, so mergekit) take "1e-07" for a string; "1.0e-07" is a float to both.
std::string format_number(double v) {
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc()) throw std::logic_error("format_number: to_chars failed");
  std::string s(buf, end);
  const size_t e = s.find('e');
  if (e != std::string::npos && s.find('.') == std::string::npos) s.insert(e, ".0");
  return s;
}

// Torch's names where parse_dtype_name reads them back (the float types), so the file also
// reads as a mergekit config; safetensors' names otherwise.
std::string dtype_config_name(DType t) {
  const bool torch_name = t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64;
  return std::string(torch_name ? torch_dtype_name(t) : dtype_name(t));
}

// A string that a YAML reader would take for a number, a bool or null unless it is quoted
// (yaml-cpp 0.7's emitter quotes only the null words). amalgam reads these fields as text
// either way; the quotes are for other readers such as mergekit.
bool reads_as_non_string(const std::string& s) {
  const YAML::Node plain(s);
  double d = 0;
  bool b = false;
  return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL" ||
         YAML::convert<double>::decode(plain, d) || YAML::convert<bool>::decode(plain, b);
}

// A text node; the non-specific tag "!" (YAML's mark of a quoted scalar) tells emit() to
// quote it where needed.
YAML::Node text_node(const std::string& s) {
  YAML::Node n(s);
  if (reads_as_non_string(s)) n.SetTag("!");
  return n;
}

// Emitting a Node directly would drop the "!" tags; this walk turns them into quotes.
void emit(YAML::Emitter& out, const YAML::Node& n, bool is_key = false) {
  if (n.IsScalar()) {
    if (n.Tag() == "!" || (is_key && reads_as_non_string(n.Scalar()))) out << YAML::DoubleQuoted;
    out << n.Scalar();
  } else if (n.IsSequence()) {
    if (n.Style() == YAML::EmitterStyle::Flow) out << YAML::Flow;
    out << YAML::BeginSeq;
    for (const YAML::Node& e : n) emit(out, e);
    out << YAML::EndSeq;
  } else {
    out << YAML::BeginMap;
    for (const auto& kv : n) {
      out << YAML::Key;
      emit(out, kv.first, true);
      out << YAML::Value;
      emit(out, kv.second);
    }
    out << YAML::EndMap;
  }
}

}  // namespace

// Numbers go in as preformatted strings: yaml-cpp's own double encoding prints 17 digits
// (0.3 becomes 0.29999999999999999), which round-trips but is unreadable.
YAML::Node param_to_yaml(const ParamSetting& s) {
  if (const double* v = std::get_if<double>(&s.value_)) return YAML::Node(format_number(*v));
  YAML::Node list(YAML::NodeType::Sequence);
  if (const ParamSetting::Gradient* g = std::get_if<ParamSetting::Gradient>(&s.value_)) {
    list.SetStyle(YAML::EmitterStyle::Flow);
    for (double v : *g) list.push_back(format_number(v));
    return list;
  }
  for (const ParamSetting::Conditional& c : std::get<std::vector<ParamSetting::Conditional>>(s.value_)) {
    YAML::Node entry(YAML::NodeType::Map);
    if (c.filter) entry["filter"] = text_node(*c.filter);
    entry["value"] = param_to_yaml(c.value);
    list.push_back(entry);
  }
  return list;
}

namespace {

YAML::Node params_to_yaml(const ParamMap& params) {
  YAML::Node map(YAML::NodeType::Map);
  for (const auto& [name, setting] : params) {
    const WordParameter* word = word_parameter(name);
    map[name] = word ? YAML::Node(std::string(word->words.at(static_cast<size_t>(*setting.evaluate("", 0)))))
                     : param_to_yaml(setting);
  }
  return map;
}

YAML::Node model_to_yaml(const ModelEntry& m) {
  YAML::Node node(YAML::NodeType::Map);
  node["model"] = text_node(m.model);
  if (!m.parameters.empty()) node["parameters"] = params_to_yaml(m.parameters);
  if (m.data.size() == 1) node["data"] = text_node(m.data.front().string());
  if (m.data.size() > 1) {
    YAML::Node list(YAML::NodeType::Sequence);
    for (const auto& d : m.data) list.push_back(text_node(d.string()));
    node["data"] = list;
  }
  if (m.stats) node["stats"] = text_node(m.stats->string());
  return node;
}

// Sources name their models as `models` and base_model do (the resolved config names them by
// absolute path).
YAML::Node slices_to_yaml(const MergeConfig& config, size_t first, size_t count) {
  YAML::Node slices(YAML::NodeType::Sequence);
  for (size_t i = first; i < first + count; ++i) {
    const MergeSlice& slice = config.slices[i];
    YAML::Node node(YAML::NodeType::Map);
    YAML::Node sources(YAML::NodeType::Sequence);
    auto name_of = [&](const SliceSource& s) {
      return s.candidate ? config.models.at(*s.candidate).model : config.base_model.value();
    };
    for (const SliceSource& s : slice.sources) {
      YAML::Node source(YAML::NodeType::Map);
      source["model"] = text_node(name_of(s));
      YAML::Node range(YAML::NodeType::Sequence);
      range.SetStyle(YAML::EmitterStyle::Flow);
      range.push_back(std::to_string(s.first));
      range.push_back(std::to_string(s.end));
      source["layer_range"] = range;
      if (!s.parameters.empty()) source["parameters"] = params_to_yaml(s.parameters);
      sources.push_back(source);
    }
    node["sources"] = sources;
    if (slice.base_source) node["base_model"] = text_node(name_of(slice.sources.at(*slice.base_source)));
    if (slice.residual_weight) node["residual_weight"] = format_number(*slice.residual_weight);
    if (!slice.parameters.empty()) node["parameters"] = params_to_yaml(slice.parameters);
    slices.push_back(node);
  }
  return slices;
}

// A module given as models: its slice's sources as model entries, less the base mergekit adds.
YAML::Node modules_to_yaml(const MergeConfig& config) {
  YAML::Node modules(YAML::NodeType::Map);
  for (const MergeModule& module : config.modules) {
    YAML::Node node(YAML::NodeType::Map);
    if (module.from_models) {
      YAML::Node models(YAML::NodeType::Sequence);
      for (const SliceSource& s : config.slices.at(module.first_slice).sources) {
        if (s.added_base) continue;
        YAML::Node entry(YAML::NodeType::Map);
        entry["model"] = text_node(s.candidate ? config.models.at(*s.candidate).model : config.base_model.value());
        if (!s.parameters.empty()) entry["parameters"] = params_to_yaml(s.parameters);
        models.push_back(entry);
      }
      node["models"] = models;
    } else {
      node["slices"] = slices_to_yaml(config, module.first_slice, module.slice_count);
    }
    if (!module.parameters.empty()) node["parameters"] = params_to_yaml(module.parameters);
    modules[text_node(module.name)] = node;
  }
  return modules;
}

YAML::Node tokenizer_to_yaml(const MergeConfig& config) {
  const TokenizerSettings& t = *config.tokenizer;
  YAML::Node node(YAML::NodeType::Map);
  node["source"] = text_node(t.source_path ? t.source_path->string() : t.source);
  if (!t.tokens.empty()) {
    YAML::Node tokens(YAML::NodeType::Map);
    for (const auto& [token, e] : t.tokens) {
      YAML::Node entry(YAML::NodeType::Map);
      const std::string model =
          e.candidate ? config.models.at(*e.candidate).model : config.base_model.value_or(e.model);
      if (e.source == TokenEmbedding::Source::Model) {
        entry["source"] = text_node(model);
      } else if (e.source == TokenEmbedding::Source::Zero) {
        YAML::Node zero(YAML::NodeType::Map);
        zero["kind"] = "zero";
        entry["source"] = zero;
      } else if (e.source == TokenEmbedding::Source::ModelToken) {
        YAML::Node source(YAML::NodeType::Map);
        source["kind"] = "model_token";
        source["model"] = text_node(model);
        if (e.token_id) source["token_id"] = std::to_string(*e.token_id);
        if (e.token) source["token"] = text_node(*e.token);
        entry["source"] = source;
      }
      entry["force"] = e.force ? "true" : "false";
      tokens[text_node(token)] = entry;
    }
    node["tokens"] = tokens;
  }
  if (t.pad_to_multiple_of) node["pad_to_multiple_of"] = std::to_string(*t.pad_to_multiple_of);
  return node;
}

}  // namespace

std::string merge_config_to_yaml(const MergeConfig& config) {
  YAML::Node root(YAML::NodeType::Map);
  root["merge_method"] = text_node(config.merge_method);
  if (config.base_model) root["base_model"] = text_node(*config.base_model);
  if (!config.modules.empty()) {
    root["modules"] = modules_to_yaml(config);
  } else if (config.slices.empty()) {
    YAML::Node models(YAML::NodeType::Sequence);
    for (const ModelEntry& m : config.models) models.push_back(model_to_yaml(m));
    root["models"] = models;
  } else {
    root["slices"] = slices_to_yaml(config, 0, config.slices.size());
  }
  if (!config.parameters.empty()) root["parameters"] = params_to_yaml(config.parameters);
  if (config.dtype) root["dtype"] = dtype_config_name(*config.dtype);
  if (config.out_dtype) root["out_dtype"] = dtype_config_name(*config.out_dtype);
  if (config.seed) root["seed"] = std::to_string(*config.seed);
  if (config.chat_template) root["chat_template"] = text_node(*config.chat_template);
  if (config.tokenizer) root["tokenizer"] = tokenizer_to_yaml(config);
  YAML::Emitter out;
  emit(out, root);
  if (!out.good()) throw std::logic_error("merge_config_to_yaml: " + out.GetLastError());
  return std::string(out.c_str()) + "\n";
}

// ---- Lookups ----------------------------------------------------------------------------

const WordParameter* word_parameter(std::string_view name) {
  // RegMean's and RegMean++'s: the embeddings and lm_head averaged or kept from the base.
  static const WordParameter kWords[] = {{"embeddings", {"mean", "base"}}};
  for (const WordParameter& w : kWords)
    if (w.name == name) return &w;
  return nullptr;
}

std::optional<double> resolve_param(const MergeConfig& config, const std::string& name, const ParamOwner& owner,
                                    std::string_view tensor_name, double t) {
  auto from = [&](const ParamMap& params) -> std::optional<double> {
    if (auto it = params.find(name); it != params.end()) return it->second.evaluate(tensor_name, t);
    return std::nullopt;
  };
  if (owner.slice) {
    const MergeSlice& slice = config.slices.at(*owner.slice);
    if (owner.source)
      if (std::optional<double> v = from(slice.sources.at(*owner.source).parameters)) return v;
    if (std::optional<double> v = from(slice.parameters)) return v;
    if (slice.module)
      if (std::optional<double> v = from(config.modules.at(*slice.module).parameters)) return v;
  } else if (owner.model) {
    if (std::optional<double> v = from(config.models.at(*owner.model).parameters)) return v;
  }
  if (auto it = config.parameters.find(name); it != config.parameters.end()) return it->second.evaluate(tensor_name, t);
  return std::nullopt;
}

std::string slice_key(const MergeConfig& config, size_t s) {
  const MergeSlice& slice = config.slices.at(s);
  if (!slice.module) return "slices[" + std::to_string(s) + "]";
  const MergeModule& module = config.modules.at(*slice.module);
  const std::string at = "modules." + module.name;
  return module.from_models ? at + ".models" : at + ".slices[" + std::to_string(s - module.first_slice) + "]";
}

std::string source_key(const MergeConfig& config, size_t s, size_t j) {
  const MergeSlice& slice = config.slices.at(s);
  if (slice.module && config.modules.at(*slice.module).from_models) {
    if (slice.sources.at(j).added_base) return "base_model";
    return slice_key(config, s) + "[" + std::to_string(j) + "]";
  }
  return slice_key(config, s) + ".sources[" + std::to_string(j) + "]";
}

std::optional<DType> parse_dtype_name(std::string_view name) {
  static constexpr std::pair<std::string_view, DType> kTorchNames[] = {
      {"float32", DType::F32}, {"float", DType::F32},  {"fp32", DType::F32},      {"float16", DType::F16},
      {"half", DType::F16},    {"fp16", DType::F16},   {"bfloat16", DType::BF16}, {"bf16", DType::BF16},
      {"float64", DType::F64}, {"double", DType::F64},
  };
  const std::string_view bare = name.starts_with("torch.") ? name.substr(6) : name;
  for (const auto& [torch_name, t] : kTorchNames)
    if (bare == torch_name) return t;
  return parse_dtype(name);
}

}  // namespace amalgam
