#include "mass/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <functional>

#include "core/error.h"
#include "io/json_file.h"
#include "merge/config.h"

namespace amalgam::mass {

namespace fs = std::filesystem;

namespace {

class Parser : YamlConfigReader {
 public:
  using YamlConfigReader::YamlConfigReader;

  MassConfig parse(const YAML::Node& root) const {
    if (!root.IsMap()) fail("", "expected a map with base_model and models, got " + describe(root));
    MassConfig c;
    c.source = source_;
    for_each_entry(root, "", [&](const std::string& key, const YAML::Node& v) {
      if (key == "base_model") {
        c.base_model = nonempty_string(v, key);
        c.base_path = resolve_path(c.base_model, source_);
      } else if (key == "models") {
        c.models = models(v);
      } else if (key == "parameters") {
        if (!v.IsNull()) c.parameters = parameters(v);
      } else {
        fail("", "unknown key '" + key + "' (expected base_model, models, parameters)");
      }
    });
    if (c.base_model.empty()) fail("base_model", "required: the pretrained checkpoint the fine-tunes start from");
    if (c.models.empty()) fail("models", "required: the fine-tuned models with their heads");
    return c;
  }

 private:
  std::string nonempty_string(const YAML::Node& n, const std::string& path) const {
    if (!n.IsScalar() || n.Scalar().empty()) fail(path, "expected a non-empty string, got " + describe(n));
    return n.Scalar();
  }

  // Plain scalars only: a quoted "0.5" is a string in YAML.
  double number(const YAML::Node& n, const std::string& path) const {
    double d = 0;
    if (!n.IsScalar() || n.Tag() != "?" || !YAML::convert<double>::decode(n, d) || !std::isfinite(d))
      fail(path, "expected a finite number, got " + describe(n));
    return d;
  }

  int64_t integer(const YAML::Node& n, const std::string& path) const {
    const double d = number(n, path);
    if (d != std::floor(d) || std::abs(d) > 1e9) fail(path, "expected an integer, got " + describe(n));
    return static_cast<int64_t>(d);
  }

  std::vector<MassModelEntry> models(const YAML::Node& n) const {
    if (!n.IsSequence() || n.size() == 0) fail("models", "expected a non-empty list, got " + describe(n));
    std::vector<MassModelEntry> out;
    for (size_t i = 0; i < n.size(); ++i) out.push_back(model(n[i], "models[" + std::to_string(i) + "]"));
    return out;
  }

  MassModelEntry model(const YAML::Node& n, const std::string& path) const {
    if (!n.IsMap()) fail(path, "expected a map with model and head, got " + describe(n));
    MassModelEntry m;
    std::string head;
    for_each_entry(n, path, [&](const std::string& key, const YAML::Node& v) {
      if (key == "model")
        m.model = nonempty_string(v, path + ".model");
      else if (key == "head")
        head = nonempty_string(v, path + ".head");
      else if (key == "name")
        m.name = nonempty_string(v, path + ".name");
      else
        fail(path, "unknown key '" + key + "' (expected model, head, name)");
    });
    if (m.model.empty()) fail(path, "missing 'model'");
    if (head.empty()) fail(path, "missing 'head' (the task's classifier head file)");
    m.path = resolve_path(m.model, source_);
    m.head = resolve_path(head, source_);
    return m;
  }

  MassParameters parameters(const YAML::Node& n) const {
    if (!n.IsMap()) fail("parameters", "expected a map, got " + describe(n));
    MassParameters p;
    for_each_entry(n, "parameters", [&](const std::string& key, const YAML::Node& v) {
      const std::string path = "parameters." + key;
      if (key == "rank_fraction") {
        p.rank_fraction = number(v, path);
        if (p.rank_fraction < 0 || p.rank_fraction > 1) fail(path, "must be in [0, 1] (0: 1/T of the rank)");
      } else if (key == "routing_layer") {
        p.routing_layer = integer(v, path);
        if (p.routing_layer < -1) fail(path, "must be a block index, or -1 for the default");
      } else if (key == "token") {
        const std::string t = nonempty_string(v, path);
        if (t != "cls" && t != "mean") fail(path, "expected 'cls' or 'mean', got '" + t + "'");
        p.token = t == "cls" ? RouteToken::Cls : RouteToken::Mean;
      } else if (key == "mode") {
        const std::string m = nonempty_string(v, path);
        if (m != "topk" && m != "top1") fail(path, "expected 'topk' or 'top1', got '" + m + "'");
        p.mode = m == "topk" ? RouteMode::TopK : RouteMode::Top1;
      } else if (key == "threshold") {
        p.threshold = number(v, path);
        if (p.threshold < 0 || p.threshold >= 1) fail(path, "must be in [0, 1)");
      } else if (key == "temperature") {
        p.temperature = number(v, path);
        if (p.temperature <= 0) fail(path, "must be > 0");
      } else if (key == "max_tasks") {
        p.max_tasks = integer(v, path);
        if (p.max_tasks < 1) fail(path, "must be >= 1");
      } else if (key == "routing_rank") {
        p.routing_rank = integer(v, path);
        if (p.routing_rank < 0) fail(path, "must be >= 0 (0: every stored row of each task's subspace)");
      } else if (key == "similarity_threshold") {
        p.similarity_threshold = number(v, path);
        if (*p.similarity_threshold < 0 || *p.similarity_threshold > 1) fail(path, "must be a cosine in [0, 1]");
      } else {
        fail("parameters", "unknown key '" + key +
                               "' (expected rank_fraction, routing_layer, token, mode, threshold, temperature, "
                               "max_tasks, routing_rank, similarity_threshold)");
      }
    });
    return p;
  }
};

}  // namespace

MassConfig parse_mass_config(std::string_view yaml_text, const fs::path& source) {
  return Parser(source).parse(parse_yaml_text(yaml_text, source));
}

MassConfig load_mass_config(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw InputError(path, "MASS config not found");
  return parse_mass_config(read_text_file(path), path);
}

}  // namespace amalgam::mass
