#include "lora/apply.h"

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "linalg/linalg.h"

namespace amalgam {

namespace fs = std::filesystem;

namespace {

const std::string kPrefix = "base_model.model.";

struct LoraConfig {
  fs::path file;
  double r = 8, alpha = 8;
  bool rslora = false, fan_in_fan_out = false;
  std::map<std::string, double> rank_pattern, alpha_pattern;

  // PEFT's pattern keys match a module by its whole name or a dotted suffix of it.
  static std::optional<double> lookup(const std::map<std::string, double>& patterns, const std::string& module) {
    for (const auto& [key, value] : patterns)
      if (module == key ||
          (module.size() > key.size() && module.ends_with(key) && module[module.size() - key.size() - 1] == '.'))
        return value;
    return std::nullopt;
  }
  double rank_of(const std::string& m) const { return lookup(rank_pattern, m).value_or(r); }
  double scale(const std::string& module) const {
    const double rank = rank_of(module), a = lookup(alpha_pattern, module).value_or(alpha);
    return rslora ? a / std::sqrt(rank) : a / rank;
  }
};

LoraConfig read_lora_config(const fs::path& adapter) {
  LoraConfig c;
  c.file = adapter / "adapter_config.json";
  if (!fs::is_regular_file(c.file)) throw InputError(c.file, "missing (a PEFT adapter directory has one)");
  const nlohmann::json j = read_json_file(c.file);
  auto fail = [&](const std::string& key, const std::string& what) { throw InputError(c.file, key + ": " + what); };
  if (!j.is_object()) fail("(file)", "not a JSON object");
  const std::string type = j.value("peft_type", "");
  if (type != "LORA") fail("peft_type", "'" + type + "' is not LORA (the only adapter type amalgam applies)");
  if (j.value("use_dora", false)) fail("use_dora", "DoRA adapters are not supported");
  auto number = [&](const char* key, double fallback) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_number() || !(j[key].get<double>() > 0))
      fail(key, "must be a positive number, got " + j[key].dump());
    return j[key].get<double>();
  };
  c.r = number("r", 8);
  c.alpha = number("lora_alpha", 8);
  c.rslora = j.value("use_rslora", false);
  c.fan_in_fan_out = j.value("fan_in_fan_out", false);
  for (auto [key, into] : {std::pair{"rank_pattern", &c.rank_pattern}, {"alpha_pattern", &c.alpha_pattern}}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    if (!j[key].is_object()) fail(key, "must be an object of module patterns");
    for (const auto& [k, v] : j[key].items()) {
      if (!v.is_number() || !(v.get<double>() > 0)) fail(std::string(key) + "." + k, "must be a positive number");
      (*into)[k] = v.get<double>();
    }
  }
  return c;
}

// What the adapter does to one base tensor.
struct Change {
  std::string a, b;  // lora_A / lora_B tensors (a matrix's low-rank update)
  bool embedding = false;
  std::string bias;   // lora_B.bias, added to this bias
  std::string saved;  // modules_to_save: the replacement
  std::string module;
};

// The low-rank factors PEFT stores per module: (suffix, an embedding's, lora_A rather than B).
struct FactorName {
  const char* suffix;
  bool embedding, is_a;
};
constexpr FactorName kFactorNames[] = {{".lora_A.weight", false, true},
                                       {".lora_B.weight", false, false},
                                       {".lora_embedding_A", true, true},
                                       {".lora_embedding_B", true, false}};

// Files one adapter tensor under the base tensor it changes.
void add_change(std::map<std::string, Change>& changes, const SafetensorsReader& adapter, const std::string& full) {
  if (!full.starts_with(kPrefix))
    throw InputError(adapter.path(), full, "not a PEFT adapter tensor (names start with 'base_model.model.')");
  const std::string name = full.substr(kPrefix.size());
  auto module_of = [&](std::string_view suffix) { return name.substr(0, name.size() - suffix.size()); };
  for (const FactorName& f : kFactorNames)
    if (name.ends_with(f.suffix)) {
      Change& c = changes[module_of(f.suffix) + ".weight"];
      c.module = module_of(f.suffix);
      c.embedding = f.embedding;
      (f.is_a ? c.a : c.b) = full;
      return;
    }
  if (name.ends_with(".lora_B.bias")) {
    Change& c = changes[module_of(".lora_B.bias") + ".bias"];
    c.module = module_of(".lora_B.bias");
    c.bias = full;
    return;
  }
  if (name.find(".lora_") != std::string::npos)
    throw InputError(adapter.path(), full, "a LoRA tensor amalgam does not apply (DoRA's magnitude, ...)");
  changes[name].saved = full;  // modules_to_save
}

std::map<std::string, Change> read_changes(const SafetensorsReader& adapter) {
  std::map<std::string, Change> changes;  // base tensor name -> change
  for (const auto& info : adapter.tensors()) add_change(changes, adapter, info.name);
  return changes;
}

std::vector<float> f32(const SafetensorsReader& r, const std::string& name) {
  const Tensor t = r.tensor(name).to(DType::F32);
  return {t.data<float>().begin(), t.data<float>().end()};
}

// The base tensor `values` [rows, cols] with the change applied.
void apply(const Change& c, const LoraConfig& config, const SafetensorsReader& adapter, const std::string& name,
           const Shape& shape, std::vector<float>& values) {
  auto mismatch = [&](const std::string& tensor, const std::string& what) {
    throw InputError(adapter.path(), tensor, what + " (base tensor '" + name + "' " + shape_to_string(shape) + ")");
  };
  if (!c.saved.empty()) {
    if (adapter.find(c.saved)->shape != shape) mismatch(c.saved, "does not have the base tensor's shape");
    values = f32(adapter, c.saved);
    return;
  }
  const auto s = static_cast<float>(config.scale(c.module));
  if (!c.bias.empty()) {
    if (adapter.find(c.bias)->shape != shape) mismatch(c.bias, "does not have the base bias's shape");
    const auto d = f32(adapter, c.bias);
    for (size_t i = 0; i < values.size(); ++i) values[i] += s * d[i];
    return;
  }
  if (c.a.empty() || c.b.empty()) mismatch(c.a.empty() ? c.b : c.a, "has no lora_A/lora_B partner");
  if (shape.size() != 2) mismatch(c.a, "is a LoRA update of a tensor that is not a matrix");
  const Shape& sa = adapter.find(c.a)->shape;
  const Shape& sb = adapter.find(c.b)->shape;
  const int64_t rank = sa.size() == 2 ? sa[0] : -1;
  if (sb.size() != 2 || rank < 1 || sb[1] != rank)
    mismatch(c.b, "lora_A " + shape_to_string(sa) + " and lora_B " + shape_to_string(sb) + " do not chain");
  // The product B A is [out, in] of a linear layer, [hidden, vocab] of an embedding; the base
  // stores the first as is (or [in, out] with fan_in_fan_out), the second transposed.
  const bool transposed = c.embedding || config.fan_in_fan_out;
  const int64_t rows = transposed ? shape[1] : shape[0], cols = transposed ? shape[0] : shape[1];
  if (sb[0] != rows || sa[1] != cols)
    mismatch(c.a, "lora_B A is [" + std::to_string(sb[0]) + ", " + std::to_string(sa[1]) + "]");
  const auto a = f32(adapter, c.a), b = f32(adapter, c.b);
  std::vector<float> product(static_cast<size_t>(rows * cols));
  sgemm_fixed_blocks(false, false, rows, cols, rank, s, b.data(), rank, a.data(), cols, 0.0f, product.data(), cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k)
      values[static_cast<size_t>(transposed ? k * rows + r : r * cols + k)] +=
          product[static_cast<size_t>(r * cols + k)];
}

}  // namespace

void apply_lora(const fs::path& base_path, const fs::path& adapter_dir, const fs::path& out) {
  const LoraConfig config = read_lora_config(adapter_dir);
  const fs::path weights = adapter_dir / "adapter_model.safetensors";
  if (!fs::is_regular_file(weights))
    throw InputError(weights, "missing (amalgam reads PEFT adapters saved as safetensors)");
  const SafetensorsReader adapter(weights);
  std::map<std::string, Change> changes = read_changes(adapter);
  const CheckpointReader base(base_path);
  for (const auto& [name, change] : changes)
    if (!base.contains(name)) {
      const std::string& tensor = !change.saved.empty() ? change.saved : !change.a.empty() ? change.a : change.bias;
      throw InputError(adapter.path(), tensor,
                       "changes '" + name + "', which the base " + base.path().string() + " does not have");
    }

  std::vector<TensorSpec> plan;
  for (const auto& name : base.names()) plan.push_back({name, base.info(name).dtype, base.info(name).shape});
  CheckpointWriter writer(out, plan, kDefaultMaxShardBytes, {{"format", "pt"}}, WriteOrder::Plan);
  for (const auto& spec : plan) {
    const auto it = changes.find(spec.name);
    if (it == changes.end()) {
      writer.write(spec.name, base.tensor(spec.name));
      continue;
    }
    if (!is_floating(spec.dtype))
      throw InputError(base.path(), spec.name, "an adapter changes a tensor that is not floating point");
    const Tensor t = base.tensor(spec.name).to(DType::F32);
    std::vector<float> values(t.data<float>().begin(), t.data<float>().end());
    apply(it->second, config, adapter, spec.name, spec.shape, values);
    writer.write(spec.name, Tensor::from_f32(spec.shape, values).to(spec.dtype));
    base.release(spec.name);
  }
  writer.finish();
  copy_files_into(base.auxiliary_files(), out);
}

namespace {

// ".OUTPUT.lora-i" beside the output.
fs::path scratch_target(const fs::path& output, const std::string& tag) {
  const fs::path parent = output.has_parent_path() ? output.parent_path() : fs::path(".");
  std::string name(1, '.');  // appended piecewise: GCC 12 warns falsely on "." + string
  name.append(output.filename().string()).append(".lora-").append(tag);
  return parent / name;
}

}  // namespace

AppliedAdapter::AppliedAdapter(const fs::path& base, const fs::path& adapter, const fs::path& output,
                               const std::string& tag)
    : scratch_(scratch_target(output, tag), /*force=*/false) {
  apply_lora(base, adapter, scratch_.staging());
}

}  // namespace amalgam
