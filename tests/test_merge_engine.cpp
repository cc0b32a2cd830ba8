// End-to-end tests of the merge engine: small transformer-shaped checkpoints written to a
// temporary directory, a YAML config on disk, run_merge (or the amalgam executable), and the
// output checked against references computed here, in double, from the input values.
//
// Input values are chosen exactly representable (multiples of small powers of two), so the
// reference sees the same numbers the engine reads, and sums of weighted task vectors are
// exact in float: sign elections and magnitude rankings cannot differ by rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "merge/config.h"
#include "merge/engine.h"
#include "model/model.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::read_bytes;
using testing::run_amalgam;
using testing::TempDir;
using testing::write_bytes;

using Values = std::vector<double>;
using ModelValues = std::map<std::string, Values>;

// ---- Test data --------------------------------------------------------------------------

// Splitmix64: a tiny generator whose sequence does not depend on the standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = state_ += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  int64_t range(int64_t lo, int64_t hi) {  // inclusive
    return lo + static_cast<int64_t>(next() % static_cast<uint64_t>(hi - lo + 1));
  }

 private:
  uint64_t state_;
};

struct TensorDef {
  std::string name;
  Shape shape;
};

constexpr const char* kPositionIds = "model.position_ids";
constexpr int64_t kPositions = 32;

size_t numel(const Shape& s) {
  size_t n = 1;
  for (int64_t d : s) n *= static_cast<size_t>(d);
  return n;
}

// The floating-point tensors of a small decoder, in file order; the I64 buffer
// model.position_ids is written right after the embedding.
std::vector<TensorDef> transformer_layout(int layers) {
  std::vector<TensorDef> defs = {{"model.embed.weight", {32, 16}}};
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    defs.push_back({p + "self_attn.q_proj.weight", {16, 16}});
    defs.push_back({p + "mlp.fc1.weight", {32, 16}});
  }
  defs.push_back({"model.norm.weight", {16}});
  return defs;
}

// The value as the file will hold it: BF16 keeps the top 16 bits of the float.
double representable(DType dtype, double v) {
  float f = static_cast<float>(v);
  if (dtype == DType::BF16) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits &= 0xffff0000u;
    std::memcpy(&f, &bits, 4);
  }
  return f;
}

// Base values: +-(1 + m/128) * 2^e with e in {-2, -1}: magnitudes in [0.25, 1), exact in BF16,
// and far enough from zero that a merged value never loses its relative precision.
ModelValues random_base(const std::vector<TensorDef>& layout, Rng& rng) {
  ModelValues v;
  for (const auto& d : layout) {
    Values& x = v[d.name];
    for (size_t i = 0; i < numel(d.shape); ++i) {
      const double mag =
          std::ldexp(1.0 + static_cast<double>(rng.range(0, 127)) / 128, static_cast<int>(rng.range(-2, -1)));
      x.push_back(rng.range(0, 1) ? mag : -mag);
    }
  }
  return v;
}

// A fine-tuned candidate: the base plus a small delta (multiples of 1/512, some zero).
ModelValues perturbed(const ModelValues& base, DType dtype, Rng& rng) {
  ModelValues v;
  for (const auto& [name, b] : base) {
    Values& x = v[name];
    for (double bi : b) x.push_back(representable(dtype, bi + static_cast<double>(rng.range(-24, 24)) / 512));
  }
  return v;
}

Tensor make_tensor(DType dtype, const Shape& shape, const Values& v) {
  Tensor t = Tensor::zeros(dtype, shape);
  std::byte* out = t.mutable_bytes().data();
  for (size_t i = 0; i < v.size(); ++i) {
    const float f = static_cast<float>(v[i]);
    if (dtype == DType::F32) {
      std::memcpy(out + 4 * i, &f, 4);
    } else if (dtype == DType::BF16) {
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      const uint16_t h = static_cast<uint16_t>(bits >> 16);
      std::memcpy(out + 2 * i, &h, 2);
    } else {
      throw std::logic_error("make_tensor: F32 or BF16 only");
    }
  }
  return t;
}

std::string i64_bytes(const std::vector<int64_t>& v) {
  std::string s(v.size() * 8, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

std::vector<int64_t> position_ids(int64_t offset) {
  std::vector<int64_t> p(kPositions);
  std::iota(p.begin(), p.end(), offset);
  return p;
}

// Decodes F32 and BF16 by hand, independently of the dtype conversions under test.
Values decode(const Tensor& t) {
  Values out(static_cast<size_t>(t.numel()));
  const std::byte* in = t.bytes().data();
  for (size_t i = 0; i < out.size(); ++i) {
    float f = 0;
    if (t.dtype() == DType::F32) {
      std::memcpy(&f, in + 4 * i, 4);
    } else if (t.dtype() == DType::BF16) {
      uint16_t h;
      std::memcpy(&h, in + 2 * i, 2);
      const uint32_t bits = static_cast<uint32_t>(h) << 16;
      std::memcpy(&f, &bits, 4);
    } else {
      ADD_FAILURE() << "unexpected dtype " << dtype_name(t.dtype());
    }
    out[i] = f;
  }
  return out;
}

struct ModelFiles {
  std::vector<TensorDef> layout;
  DType dtype = DType::F32;
  ModelValues values;
  int64_t position_offset = 0;
  uint64_t max_shard = kDefaultMaxShardBytes;
  std::string tag;  // goes into config.json and tokenizer.json, to tell whose files an output carries
};

void write_model(const fs::path& dir, const ModelFiles& m) {
  fs::create_directories(dir);
  std::vector<TensorSpec> plan;
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (size_t i = 0; i < m.layout.size(); ++i) {
    const TensorDef& d = m.layout[i];
    tensors.emplace_back(d.name, make_tensor(m.dtype, d.shape, m.values.at(d.name)));
    if (i == 0) {
      Tensor p = Tensor::zeros(DType::I64, {1, kPositions});
      const std::string bytes = i64_bytes(position_ids(m.position_offset));
      std::memcpy(p.mutable_bytes().data(), bytes.data(), bytes.size());
      tensors.emplace_back(kPositionIds, p);
    }
  }
  for (const auto& [name, t] : tensors) plan.push_back({name, t.dtype(), t.shape()});
  CheckpointWriter w(dir, plan, m.max_shard);
  for (const auto& [name, t] : tensors) w.write(name, t);
  w.finish();
  write_bytes(dir / "config.json", R"({"model_type": "llama", "tag": ")" + m.tag + "\"}\n");
  write_bytes(dir / "tokenizer.json", R"({"tokenizer_of": ")" + m.tag + "\"}\n");
}

// A base and `n` candidates fine-tuned from it.
struct Family {
  DType dtype = DType::F32;
  std::vector<TensorDef> layout;
  fs::path base;
  std::vector<fs::path> models;
  ModelValues base_values;
  std::vector<ModelValues> model_values;
  // Tensor names in file order, the I64 buffer included: the order the output is planned in.
  std::vector<std::string> order() const {
    std::vector<std::string> names;
    for (size_t i = 0; i < layout.size(); ++i) {
      names.push_back(layout[i].name);
      if (i == 0) names.push_back(kPositionIds);
    }
    return names;
  }
};

Family make_family(const fs::path& root, DType dtype, size_t n, uint64_t max_shard, uint64_t seed, int layers = 2) {
  Family f;
  f.dtype = dtype;
  f.layout = transformer_layout(layers);
  Rng rng(seed);
  f.base_values = random_base(f.layout, rng);
  f.base = root / "base";
  write_model(f.base, {f.layout, dtype, f.base_values, 0, max_shard, "base"});
  for (size_t t = 0; t < n; ++t) {
    f.model_values.push_back(perturbed(f.base_values, dtype, rng));
    f.models.push_back(root / std::string(1, static_cast<char>('a' + t)));
    // Candidates' position ids differ from the base's, so a copied buffer shows where it came from.
    write_model(f.models.back(),
                {f.layout, dtype, f.model_values.back(), 100 * static_cast<int64_t>(t + 1), max_shard, "candidate"});
  }
  return f;
}

ModelValues read_float_tensors(const fs::path& dir) {
  CheckpointReader r(dir);
  ModelValues out;
  for (const auto& name : r.names())
    if (is_floating(r.info(name).dtype)) out[name] = decode(r.tensor(name));
  return out;
}

fs::path write_config(const TempDir& tmp, const std::string& yaml, const std::string& file = "merge.yaml") {
  const fs::path p = tmp / file;
  write_bytes(p, yaml);
  return p;
}

MergeOptions quiet_options(const fs::path& out) {
  MergeOptions o;
  o.output = out;
  o.quiet = true;
  return o;
}

using testing::input_error_of;

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The .safetensors files of a directory, by name.
std::map<std::string, std::string> safetensors_bytes(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") files[e.path().filename().string()] = read_bytes(e.path());
  return files;
}

// ---- References, in double ----------------------------------------------------------------

using Inputs = std::vector<const Values*>;

Values ref_linear(const Inputs& xs, const std::vector<double>& w) {
  Values out(xs[0]->size());
  const double sum = std::accumulate(w.begin(), w.end(), 0.0);
  for (size_t i = 0; i < out.size(); ++i) {
    double acc = 0;
    for (size_t t = 0; t < xs.size(); ++t) acc += w[t] * (*xs[t])[i];
    out[i] = acc / sum;
  }
  return out;
}

Values ref_task_arithmetic(const Values& base, const Inputs& xs, const std::vector<double>& w, double lambda) {
  Values out(base.size());
  for (size_t i = 0; i < base.size(); ++i) {
    double acc = 0;
    for (size_t t = 0; t < xs.size(); ++t) acc += w[t] * ((*xs[t])[i] - base[i]);
    out[i] = base[i] + lambda * acc;
  }
  return out;
}

// TIES as methods.md states it: per task keep the floor(density * n) largest |D_t| (ties to the
// lower index), weight them, elect the sign of the weighted sum (>= 0 is positive), average the
// agreeing entries by their summed weights.
Values ref_ties(const Values& base, const Inputs& xs, const std::vector<double>& w, const std::vector<double>& density,
                double lambda) {
  const size_t n = base.size(), models = xs.size();
  std::vector<Values> trimmed(models, Values(n, 0.0));
  for (size_t t = 0; t < models; ++t) {
    Values d(n);
    for (size_t i = 0; i < n; ++i) d[i] = (*xs[t])[i] - base[i];
    std::vector<size_t> idx(n);
    std::iota(idx.begin(), idx.end(), size_t{0});
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return std::fabs(d[a]) > std::fabs(d[b]); });
    const size_t keep = static_cast<size_t>(std::floor(density[t] * static_cast<double>(n)));
    for (size_t j = 0; j < keep; ++j) trimmed[t][idx[j]] = w[t] * d[idx[j]];
  }
  Values out(n);
  for (size_t i = 0; i < n; ++i) {
    double sum = 0;
    for (size_t t = 0; t < models; ++t) sum += trimmed[t][i];
    const double sign = sum >= 0 ? 1.0 : -1.0;
    double mixed = 0, divisor = 0;
    for (size_t t = 0; t < models; ++t)
      if (trimmed[t][i] * sign > 0) {
        mixed += trimmed[t][i];
        divisor += w[t];
      }
    if (divisor == 0) divisor = 1;
    out[i] = base[i] + lambda * mixed / divisor;
  }
  return out;
}

// One BF16 ulp at the magnitude of v: BF16 has 8 significant bits.
double bf16_ulp(double v) {
  return std::ldexp(1.0, std::ilogb(v) - 7);
}

void expect_near_all(const ModelValues& got, const ModelValues& want, double rel_tol) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    ASSERT_TRUE(got.contains(name)) << name;
    const Values& g = got.at(name);
    ASSERT_EQ(g.size(), w.size()) << name;
    size_t bad = 0;
    for (size_t i = 0; i < w.size(); ++i)
      if (!(std::fabs(g[i] - w[i]) <= rel_tol * std::max(1.0, std::fabs(w[i]))) && bad++ < 3)
        ADD_FAILURE() << name << "[" << i << "]: got " << g[i] << ", want " << w[i];
    EXPECT_EQ(bad, 0u) << name;
  }
}

// ---- 1. BF16, sharded, against a double reference -----------------------------------------

std::string models_yaml(const std::vector<fs::path>& paths, const std::vector<std::string>& params) {
  std::string s = "models:\n";
  for (size_t i = 0; i < paths.size(); ++i) {
    s += "  - model: " + paths[i].string() + "\n";
    if (!params[i].empty()) s += "    parameters: " + params[i] + "\n";
  }
  return s;
}

// The output directory as CheckpointWriter's greedy rule lays out `order` in shards of at
// most `max_shard` bytes, with what a merge carries from the base.
void expect_output_layout(const fs::path& out, const Family& f, uint64_t max_shard, DType out_dtype) {
  std::vector<std::vector<std::string>> groups;
  std::map<std::string, uint64_t> bytes;
  uint64_t current = 0, total = 0;
  for (const auto& name : f.order()) {
    uint64_t n = static_cast<uint64_t>(kPositions) * 8;
    for (const auto& d : f.layout)
      if (d.name == name) n = numel(d.shape) * (out_dtype == DType::BF16 ? 2 : 4);
    if (groups.empty() || (current > 0 && current + n > max_shard)) {
      groups.emplace_back();
      current = 0;
    }
    groups.back().push_back(name);
    current += n;
    total += n;
  }
  ASSERT_GE(groups.size(), 3u) << "the test wants several output shards";
  const auto index = nlohmann::json::parse(read_bytes(out / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), f.order().size());
  for (size_t g = 0; g < groups.size(); ++g) {
    char file[64];
    std::snprintf(file, sizeof file, "model-%05zu-of-%05zu.safetensors", g + 1, groups.size());
    EXPECT_TRUE(fs::is_regular_file(out / file)) << file;
    for (const auto& name : groups[g]) EXPECT_EQ(index["weight_map"][name], file) << name;
  }
  size_t safetensors_files = 0;
  for (const auto& e : fs::directory_iterator(out)) safetensors_files += e.path().extension() == ".safetensors";
  EXPECT_EQ(safetensors_files, groups.size());
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));

  // Carried from the base, not from a candidate; config.json says what was written.
  nlohmann::json base_config = nlohmann::json::parse(read_bytes(f.base / "config.json"));
  base_config["torch_dtype"] = "bfloat16";
  EXPECT_EQ(nlohmann::json::parse(read_bytes(out / "config.json")), base_config);
  EXPECT_EQ(read_bytes(out / "tokenizer.json"), read_bytes(f.base / "tokenizer.json"));

  CheckpointReader r(out);
  for (const auto& name : f.order()) {
    ASSERT_TRUE(r.contains(name)) << name;
    EXPECT_EQ(r.info(name).dtype, name == kPositionIds ? DType::I64 : out_dtype) << name;
  }
  const Tensor pos = r.tensor(kPositionIds);
  EXPECT_EQ(pos.shape(), (Shape{1, kPositions}));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(pos.bytes().data()), pos.nbytes()), i64_bytes(position_ids(0)));
}

void expect_config_round_trips(const fs::path& out, const MergeConfig& config) {
  ASSERT_TRUE(fs::is_regular_file(out / "amalgam_config.yaml"));
  const MergeConfig back = parse_merge_config(read_bytes(out / "amalgam_config.yaml"), out / "amalgam_config.yaml");
  EXPECT_EQ(back.merge_method, config.merge_method);
  ASSERT_TRUE(back.base_model && config.base_path);
  EXPECT_EQ(fs::path(*back.base_model), fs::absolute(*config.base_path).lexically_normal());
  ASSERT_EQ(back.models.size(), config.models.size());
  // Models are recorded by absolute path, so the recorded config reruns from anywhere.
  for (size_t i = 0; i < config.models.size(); ++i) {
    EXPECT_EQ(fs::path(back.models[i].model), fs::absolute(config.models[i].path).lexically_normal());
    EXPECT_TRUE(back.models[i].parameters == config.models[i].parameters) << "models[" << i << "]";
  }
  EXPECT_TRUE(back.parameters == config.parameters);
  EXPECT_EQ(back.out_dtype, config.out_dtype);
  EXPECT_EQ(back.seed, std::optional<uint64_t>(config.seed.value_or(0)));  // the seed used is recorded
}

void run_bf16_case(const std::string& method, const std::vector<std::string>& model_params, const std::string& globals,
                   const std::function<Values(const Values& base, const Inputs& xs)>& reference) {
  TempDir tmp;
  // 1200-byte input shards: every input is an index and several shards, not one file.
  const Family f = make_family(tmp.path(), DType::BF16, 3, 1200, 11);
  for (const fs::path& dir : {f.base, f.models[0], f.models[1], f.models[2]}) {
    ASSERT_TRUE(fs::exists(dir / "model.safetensors.index.json")) << dir;
    ASSERT_GE(safetensors_bytes(dir).size(), 3u) << dir;
  }
  const std::string yaml = "merge_method: " + method + "\nbase_model: " + f.base.string() + "\n" +
                           models_yaml(f.models, model_params) + globals + "out_dtype: bfloat16\n";
  const MergeConfig config = load_merge_config(write_config(tmp, yaml));
  MergeOptions opt = quiet_options(tmp / "out");
  opt.max_shard_bytes = 1600;
  const MergeSummary s = run_merge(config, opt);
  EXPECT_EQ(s.tensors_merged, f.layout.size());
  EXPECT_EQ(s.tensors_copied, 1u);
  EXPECT_EQ(s.shards, 3u);

  expect_output_layout(tmp / "out", f, opt.max_shard_bytes, DType::BF16);
  expect_config_round_trips(tmp / "out", config);

  const ModelValues got = read_float_tensors(tmp / "out");
  ASSERT_EQ(got.size(), f.layout.size());
  for (const auto& d : f.layout) {
    Inputs xs;
    for (const auto& m : f.model_values) xs.push_back(&m.at(d.name));
    const Values want = reference(f.base_values.at(d.name), xs);
    const Values& g = got.at(d.name);
    size_t bad = 0;
    // Within one BF16 ulp, as promised; in fact the F32 result rounded to nearest is within half an
    // ulp plus float's own (far smaller) error, so truncating instead of rounding also fails here.
    size_t beyond_half = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const double err = std::fabs(g[i] - want[i]);
      if (!(err <= bf16_ulp(want[i])) && bad++ < 3)
        ADD_FAILURE() << d.name << "[" << i << "]: got " << g[i] << ", want " << want[i] << " (more than one BF16 ulp)";
      beyond_half += !(err <= 0.501 * bf16_ulp(want[i]));
    }
    EXPECT_EQ(bad, 0u) << d.name;
    EXPECT_EQ(beyond_half, 0u) << d.name << ": not rounded to nearest";
  }
}

TEST(MergeEngineBf16, TaskArithmeticShardedMatchesDoubleReference) {
  run_bf16_case("task_arithmetic", {"{weight: 1.0}", "{weight: 0.5}", "{weight: 0.25}"}, "parameters: {lambda: 0.7}\n",
                [](const Values& base, const Inputs& xs) {
                  return ref_task_arithmetic(base, xs, {1.0, 0.5, 0.25}, 0.7);
                });
}

TEST(MergeEngineBf16, TiesShardedMatchesDoubleReference) {
  // The third model leaves density at its default (1: keep everything).
  run_bf16_case("ties", {"{weight: 1.0, density: 0.5}", "{weight: 0.5, density: 0.25}", "{weight: 0.75}"},
                "parameters: {lambda: 1.0}\n", [](const Values& base, const Inputs& xs) {
                  return ref_ties(base, xs, {1.0, 0.5, 0.75}, {0.5, 0.25, 1.0}, 1.0);
                });
}

// out_dtype wins over dtype; dtype alone is the output dtype too (mergekit's reading); integer
// buffers keep theirs.
// Linear and the task-vector family stream: each tensor is merged in ranges straight into
// the output file's 8 MB buffer blocks, and where a block ends inside a chunk, through a
// bounce buffer. Tensors of several blocks, at offsets that put block ends mid-chunk, must
// come out as the reference says, with and without the audit (whose rows are recorded as
// the ranges pass), and with the same bytes either way.
TEST(MergeEngineBf16, TensorsLargerThanTheOutputBufferMatchTheReference) {
  TempDir tmp;
  const std::vector<TensorDef> layout = {{"model.embed.weight", {2048, 1500}},             // 6.1 MB of BF16
                                         {"model.layers.0.mlp.fc1.weight", {2101, 2000}},  // 8.4 MB
                                         {"model.norm.weight", {1000}},
                                         {"model.layers.0.mlp.fc2.weight", {1999, 1001}}};
  Rng rng(5);
  const ModelValues base = random_base(layout, rng);
  write_model(tmp / "base", {layout, DType::BF16, base, 0, kDefaultMaxShardBytes, "base"});
  std::vector<ModelValues> values;
  std::vector<fs::path> models;
  for (int t = 0; t < 3; ++t) {
    values.push_back(perturbed(base, DType::BF16, rng));
    models.push_back(tmp / ("m" + std::to_string(t)));
    write_model(models.back(), {layout, DType::BF16, values.back(), 0, kDefaultMaxShardBytes, "candidate"});
  }
  const std::vector<double> w = {1.0, 0.5, 0.25};
  const struct {
    std::string method;
    std::function<Values(const Values&, const Inputs&)> reference;
  } cases[] = {
      {"linear", [&](const Values&, const Inputs& xs) { return ref_linear(xs, w); }},
      {"task_arithmetic", [&](const Values& b, const Inputs& xs) { return ref_task_arithmetic(b, xs, w, 0.7); }},
  };
  for (const auto& k : cases) {
    SCOPED_TRACE(k.method);
    const std::string yaml = "merge_method: " + k.method + "\nbase_model: " + (tmp / "base").string() + "\n" +
                             models_yaml(models, {"{weight: 1.0}", "{weight: 0.5}", "{weight: 0.25}"}) +
                             (k.method == "linear" ? "" : "parameters: {lambda: 0.7}\n") + "out_dtype: bfloat16\n";
    const MergeConfig config = load_merge_config(write_config(tmp, yaml));
    std::string bytes[2];
    for (const bool audit : {true, false}) {
      MergeOptions opt = quiet_options(tmp / (k.method + (audit ? "-audit" : "-plain")));
      opt.audit = audit;
      run_merge(config, opt);
      bytes[audit] = read_bytes(opt.output / "model.safetensors");
      ASSERT_GT(bytes[audit].size(), size_t{16} << 20) << "the output must span several buffer blocks";
      const ModelValues got = read_float_tensors(opt.output);
      for (const auto& d : layout) {
        Inputs xs;
        for (const auto& m : values) xs.push_back(&m.at(d.name));
        const Values want = k.reference(base.at(d.name), xs);
        const Values& g = got.at(d.name);
        size_t bad = 0;
        for (size_t i = 0; i < want.size(); ++i)
          if (!(std::fabs(g[i] - want[i]) <= 0.501 * bf16_ulp(want[i])) && bad++ < 3)
            ADD_FAILURE() << d.name << "[" << i << "]: got " << g[i] << ", want " << want[i];
        EXPECT_EQ(bad, 0u) << d.name;
      }
    }
    EXPECT_TRUE(bytes[0] == bytes[1]) << "the audit changed the merged model";
  }
}

TEST(MergeEngineBf16, OutputDtypeFollowsTheConfig) {
  TempDir tmp;
  const Family f32 = make_family(tmp / "f32", DType::F32, 2, kDefaultMaxShardBytes, 12);
  const Family bf16 = make_family(tmp / "bf16", DType::BF16, 2, kDefaultMaxShardBytes, 13);
  const struct {
    const Family* f;
    std::string dtypes;
    DType want;
  } cases[] = {{&f32, "out_dtype: bfloat16\n", DType::BF16},
               {&f32, "dtype: float32\nout_dtype: bf16\n", DType::BF16},
               {&bf16, "dtype: float32\n", DType::F32},
               {&bf16, "", DType::BF16}};
  int run = 0;
  for (const auto& k : cases) {
    SCOPED_TRACE(k.dtypes);
    const std::string yaml = "merge_method: task_arithmetic\nbase_model: " + k.f->base.string() + "\n" +
                             models_yaml(k.f->models, {"{weight: 0.5}", "{weight: 0.75}"}) + k.dtypes;
    const fs::path out = tmp / ("out" + std::to_string(run++));
    run_merge(load_merge_config(write_config(tmp, yaml)), quiet_options(out));
    CheckpointReader r(out);
    EXPECT_EQ(r.info(kPositionIds).dtype, DType::I64);
    for (const auto& d : k.f->layout) {
      EXPECT_EQ(r.info(d.name).dtype, k.want) << d.name;
      const Values want =
          ref_task_arithmetic(k.f->base_values.at(d.name),
                              {&k.f->model_values[0].at(d.name), &k.f->model_values[1].at(d.name)}, {0.5, 0.75}, 1.0);
      const Values got = decode(r.tensor(d.name));
      for (size_t i = 0; i < want.size(); ++i) {
        const double tol = k.want == DType::BF16 ? 0.501 * bf16_ulp(want[i]) : 1e-6;
        ASSERT_LE(std::fabs(got[i] - want[i]), tol) << d.name << "[" << i << "]";
      }
    }
  }
}

// ---- 2. Gradients and filters ----------------------------------------------------------------

TEST(MergeEngineGradient, FilteredGradientAndFallback) {
  TempDir tmp;
  const Family f = make_family(tmp.path(), DType::F32, 2, kDefaultMaxShardBytes, 21);
  // Two layers: layer 0 sits at t = 0, layer 1 (the last) at t = 1.
  const std::string a = f.models[0].string(), c = f.models[1].string();
  // clang-format off
  const std::string yaml =
      "merge_method: task_arithmetic\n"
      "base_model: " + f.base.string() + "\n"
      "models:\n"
      "  - model: " + a + "\n"
      "    parameters:\n"
      "      weight: [{filter: mlp, value: [0.0, 1.0]}, {value: 0.5}]\n"
      "  - model: " + c + "\n"
      "    parameters: {weight: [1.0, 0.0]}\n";
  // clang-format on
  run_merge(load_merge_config(write_config(tmp, yaml)), quiet_options(tmp / "out"));
  // Hand-worked: models[0] is 0 / 1 on the mlp of layer 0 / 1 and 0.5 elsewhere; models[1]'s
  // gradient is 1 at t = 0 (layer 0, and the embedding and the final norm outside the layers:
  // current mergekit plans both at t = 0) and 0 at t = 1 (layer 1).
  const std::map<std::string, std::pair<double, double>> weights = {
      {"model.embed.weight", {0.5, 1.0}},
      {"model.layers.0.self_attn.q_proj.weight", {0.5, 1.0}},
      {"model.layers.0.mlp.fc1.weight", {0.0, 1.0}},
      {"model.layers.1.self_attn.q_proj.weight", {0.5, 0.0}},
      {"model.layers.1.mlp.fc1.weight", {1.0, 0.0}},
      {"model.norm.weight", {0.5, 1.0}},
  };
  ModelValues want;
  for (const auto& [name, w] : weights)
    want[name] = ref_task_arithmetic(f.base_values.at(name), {&f.model_values[0].at(name), &f.model_values[1].at(name)},
                                     {w.first, w.second}, 1.0);
  expect_near_all(read_float_tensors(tmp / "out"), want, 1e-6);
}

TEST(MergeEngineGradient, GlobalGradientInterpolatesAcrossFiveLayers) {
  TempDir tmp;
  const Family f = make_family(tmp.path(), DType::F32, 1, kDefaultMaxShardBytes, 22, /*layers=*/5);
  // A model without its own weight falls back to the global gradient [0, 1, 0.5]; layer i of 5
  // sits at t = i / 4: weights 0, 0.5, 1, 0.75, 0.5; the embedding and the final norm (both at
  // t = 0, as current mergekit plans the weights outside the layers) 0.
  const std::string yaml = "merge_method: task_arithmetic\nbase_model: " + f.base.string() +
                           "\nmodels:\n  - model: " + f.models[0].string() +
                           "\nparameters:\n  weight: [0.0, 1.0, 0.5]\n";
  run_merge(load_merge_config(write_config(tmp, yaml)), quiet_options(tmp / "out"));
  const double layer_weight[] = {0.0, 0.5, 1.0, 0.75, 0.5};
  ModelValues want;
  for (const auto& d : f.layout) {
    double w = 0.0;
    for (int l = 0; l < 5; ++l)
      if (d.name.starts_with("model.layers." + std::to_string(l) + ".")) w = layer_weight[l];
    want[d.name] = ref_task_arithmetic(f.base_values.at(d.name), {&f.model_values[0].at(d.name)}, {w}, 1.0);
  }
  expect_near_all(read_float_tensors(tmp / "out"), want, 1e-6);
}

// ---- mergekit's chat_template -------------------------------------------------------------------

std::string written_template(const fs::path& out) {
  return read_json_file(out / "tokenizer_config.json").value("chat_template", "(none)");
}

TEST(MergeEngineChatTemplate, NamedAutoAndLiteralTemplatesGoIntoTokenizerConfig) {
  TempDir tmp;
  const Family f = make_family(tmp.path(), DType::F32, 3, kDefaultMaxShardBytes, 41);
  // The base's tokenizer config (which the output carries) has its own template and a field
  // that must survive; two of the three models share a template, the third has another.
  write_bytes(f.base / "tokenizer_config.json", R"({"model_max_length": 77, "chat_template": "base {{ x }}"})");
  write_bytes(f.models[0] / "tokenizer_config.json", R"({"chat_template": "  shared {{ messages }}\n"})");
  write_bytes(f.models[1] / "tokenizer_config.json", R"({"chat_template": "other {{ messages }}"})");
  write_bytes(f.models[2] / "tokenizer_config.json", R"({"chat_template": "shared {{ messages }}"})");
  auto merge = [&](const std::string& chat_template, const std::string& out) {
    const std::string yaml = "merge_method: task_arithmetic\nbase_model: " + f.base.string() +
                             "\nmodels:\n  - model: " + f.models[0].string() + "\n  - model: " + f.models[1].string() +
                             "\n  - model: " + f.models[2].string() +
                             "\nparameters: {weight: 0.3}\nchat_template: " + chat_template + "\n";
    run_merge(load_merge_config(write_config(tmp, yaml)), quiet_options(tmp / out));
    return written_template(tmp / out);
  };
  EXPECT_NE(merge("chatml", "named").find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(read_json_file(tmp / "named" / "tokenizer_config.json")["model_max_length"], 77);
  // auto: the plurality, trimmed; the base's counts as one vote.
  EXPECT_EQ(merge("auto", "auto"), "shared {{ messages }}");
  EXPECT_EQ(merge("\"{% for m in messages %}{{ m.content }}{% endfor %}\"", "literal"),
            "{% for m in messages %}{{ m.content }}{% endfor %}");
  // The recorded config keeps the choice.
  EXPECT_NE(read_bytes(tmp / "auto" / "amalgam_config.yaml").find("chat_template: auto"), std::string::npos);
}

// ---- 3. Layer positions ------------------------------------------------------------------------

TEST(MergeEngineLayers, TwoStacksOfDifferentDepth) {
  std::vector<std::string> names = {
      "text_model.embeddings.token_embedding.weight",
      "text_model.embeddings.position_embedding.weight",
      "text_model.final_layer_norm.weight",
      "vision_model.embeddings.class_embedding",
      "vision_model.embeddings.patch_embedding.weight",
      "vision_model.pre_layrnorm.weight",
      "vision_model.post_layernorm.weight",
      "visual_projection.weight",
      "text_projection.weight",
      "logit_scale",
  };
  for (int l = 0; l < 4; ++l) names.push_back("text_model.encoder.layers." + std::to_string(l) + ".mlp.fc1.weight");
  for (int l = 0; l < 12; ++l)
    names.push_back("vision_model.encoder.layers." + std::to_string(l) + ".self_attn.q_proj.weight");
  const auto stacks = find_layer_stacks(names);
  EXPECT_EQ(stacks,
            (std::map<std::string, int>{{"text_model.encoder.layers.", 4}, {"vision_model.encoder.layers.", 12}}));

  EXPECT_DOUBLE_EQ(layer_position("text_model.encoder.layers.0.mlp.fc1.weight", stacks), 0.0);
  EXPECT_DOUBLE_EQ(layer_position("text_model.encoder.layers.1.mlp.fc1.weight", stacks), 1.0 / 3);
  EXPECT_DOUBLE_EQ(layer_position("text_model.encoder.layers.2.mlp.fc1.weight", stacks), 2.0 / 3);
  EXPECT_DOUBLE_EQ(layer_position("text_model.encoder.layers.3.mlp.fc1.weight", stacks), 1.0);
  EXPECT_DOUBLE_EQ(layer_position("vision_model.encoder.layers.0.self_attn.q_proj.weight", stacks), 0.0);
  EXPECT_DOUBLE_EQ(layer_position("vision_model.encoder.layers.5.self_attn.q_proj.weight", stacks), 5.0 / 11);
  EXPECT_DOUBLE_EQ(layer_position("vision_model.encoder.layers.10.self_attn.q_proj.weight", stacks), 10.0 / 11);
  EXPECT_DOUBLE_EQ(layer_position("vision_model.encoder.layers.11.self_attn.q_proj.weight", stacks), 1.0);
  // Before the layers: embeddings and pre-norms.
  for (const char* n : {"text_model.embeddings.token_embedding.weight",
                        "text_model.embeddings.position_embedding.weight", "vision_model.embeddings.class_embedding",
                        "vision_model.embeddings.patch_embedding.weight", "vision_model.pre_layrnorm.weight"})
    EXPECT_EQ(layer_position(n, stacks), 0.0) << n;
  // After them: final norms, projections, everything else: also the gradient's first value,
  // as current mergekit plans them (post_weights at t = 0).
  for (const char* n : {"text_model.final_layer_norm.weight", "vision_model.post_layernorm.weight",
                        "visual_projection.weight", "text_projection.weight", "logit_scale"})
    EXPECT_EQ(layer_position(n, stacks), 0.0) << n;
}

TEST(MergeEngineLayers, DecoderNames) {
  const std::vector<std::string> llama = {"model.embed_tokens.weight",
                                          "model.layers.0.input_layernorm.weight",
                                          "model.layers.7.mlp.down_proj.weight",
                                          "model.layers.3.self_attn.o_proj.weight",
                                          "model.norm.weight",
                                          "lm_head.weight"};
  const auto stacks = find_layer_stacks(llama);
  EXPECT_EQ(stacks, (std::map<std::string, int>{{"model.layers.", 8}}));
  EXPECT_EQ(layer_position("model.embed_tokens.weight", stacks), 0.0);
  EXPECT_DOUBLE_EQ(layer_position("model.layers.3.self_attn.o_proj.weight", stacks), 3.0 / 7);
  EXPECT_EQ(layer_position("model.layers.7.mlp.down_proj.weight", stacks), 1.0);
  EXPECT_EQ(layer_position("model.norm.weight", stacks), 0.0);
  EXPECT_EQ(layer_position("lm_head.weight", stacks), 0.0);

  const std::vector<std::string> gpt2 = {"transformer.wte.weight", "transformer.wpe.weight",
                                         "transformer.h.0.attn.c_attn.weight", "transformer.h.11.mlp.c_fc.weight",
                                         "transformer.ln_f.weight"};
  const auto gpt2_stacks = find_layer_stacks(gpt2);
  EXPECT_EQ(gpt2_stacks, (std::map<std::string, int>{{"transformer.h.", 12}}));
  EXPECT_EQ(layer_position("transformer.wte.weight", gpt2_stacks), 0.0);
  EXPECT_EQ(layer_position("transformer.wpe.weight", gpt2_stacks), 0.0);
  EXPECT_DOUBLE_EQ(layer_position("transformer.h.5.attn.c_attn.weight", gpt2_stacks), 5.0 / 11);
  EXPECT_EQ(layer_position("transformer.ln_f.weight", gpt2_stacks), 0.0);

  // One layer: mergekit puts a lone layer at t = 1.
  EXPECT_EQ(layer_position("model.layers.0.mlp.fc1.weight", {{"model.layers.", 1}}), 1.0);
}

// A family registered here, whose block tensors carry no layer number, and whose LM head
// carries one that is not a layer: only its table can place them.
const bool test_family_registered = register_model_family(
    {"table test", [](const std::string& type) { return type == "amalgam_table_test"; },
     [](const fs::path&) -> std::unique_ptr<Model> { throw std::logic_error("not opened in this test"); },
     [](const CheckpointReader&) {
       return ArchitectureTable{{"tok.embed"}, {{"first.w"}, {"second.w"}, {"third.w"}}, {"head.3.w"}};
     },
     nullptr});

void write_table_test_model(const fs::path& dir, const std::string& model_type, float value) {
  const std::vector<std::string> names = {"tok.embed", "first.w", "second.w", "third.w", "head.3.w", "extra.1.w"};
  std::vector<TensorSpec> plan;
  for (const auto& n : names) plan.push_back({n, DType::F32, {2}});
  fs::create_directories(dir);
  CheckpointWriter w(dir, plan, kDefaultMaxShardBytes);
  for (const auto& n : names) w.write(n, Tensor::from_f32({2}, std::vector<float>{value, value}));
  w.finish();
  write_bytes(dir / "config.json", R"({"model_type": ")" + model_type + "\"}\n");
}

TEST(MergeEngineLayers, PositionsComeFromTheFamilysTableThenFromNames) {
  ASSERT_TRUE(test_family_registered);
  TempDir tmp;
  write_table_test_model(tmp / "a", "amalgam_table_test", 0);
  write_table_test_model(tmp / "b", "amalgam_table_test", 1);
  const LayerPositions known(CheckpointReader(tmp / "a"));
  EXPECT_EQ(known("tok.embed"), 0.0);
  EXPECT_EQ(known("first.w"), 0.0);
  EXPECT_EQ(known("second.w"), 0.5);
  EXPECT_EQ(known("third.w"), 1.0);
  EXPECT_EQ(known("head.3.w"), 0.0);   // the names alone would put it last in a stack "head."
  EXPECT_EQ(known("extra.1.w"), 1.0);  // not in the table: by its name, layer 1 of 2

  // Through a merge: a gradient from model a's values (0) to model b's (1) across the blocks.
  const std::string yaml = "merge_method: linear\nmodels:\n  - model: " + (tmp / "a").string() +
                           "\n    parameters: {weight: [1.0, 0.0]}\n  - model: " + (tmp / "b").string() +
                           "\n    parameters: {weight: [0.0, 1.0]}\n";
  run_merge(load_merge_config(write_config(tmp, yaml)), quiet_options(tmp / "out"));
  const ModelValues out = read_float_tensors(tmp / "out");
  const std::map<std::string, double> want = {{"tok.embed", 0.0}, {"first.w", 0.0},  {"second.w", 0.5},
                                              {"third.w", 1.0},   {"head.3.w", 0.0}, {"extra.1.w", 1.0}};
  for (const auto& [name, v] : want) EXPECT_EQ(out.at(name), (Values{v, v})) << name;

  // A model_type no family runs: every position from the names.
  write_table_test_model(tmp / "unknown", "not_a_family", 0);
  const LayerPositions by_names(CheckpointReader(tmp / "unknown"));
  EXPECT_EQ(by_names("second.w"), 0.0);
  EXPECT_EQ(by_names("head.3.w"), 1.0);
}

TEST(MergeEngineLayers, GptNeoXTensorsOutsideTheLayersTakeTheFirstValue) {
  // GPT-NeoX (Pythia): embed_in before the layers, the final norm and embed_out (its LM head)
  // after them; mergekit plans all three at t = 0.
  const std::vector<std::string> neox = {"gpt_neox.embed_in.weight", "gpt_neox.layers.0.mlp.dense_h_to_4h.weight",
                                         "gpt_neox.layers.5.mlp.dense_h_to_4h.weight",
                                         "gpt_neox.final_layer_norm.weight", "embed_out.weight"};
  const auto stacks = find_layer_stacks(neox);
  EXPECT_EQ(layer_position("gpt_neox.embed_in.weight", stacks), 0.0);
  EXPECT_EQ(layer_position("gpt_neox.final_layer_norm.weight", stacks), 0.0);
  EXPECT_EQ(layer_position("embed_out.weight", stacks), 0.0);
  EXPECT_DOUBLE_EQ(layer_position("gpt_neox.layers.5.mlp.dense_h_to_4h.weight", stacks), 1.0);
}

// ---- 4. Properties -------------------------------------------------------------------------------

// A base and three identical copies of one fine-tuned model.
struct Copies {
  Family f;
  std::vector<fs::path> copies;
};

Copies make_copies(const fs::path& root) {
  Copies c;
  c.f = make_family(root, DType::F32, 1, kDefaultMaxShardBytes, 31);
  for (const char* name : {"copy1", "copy2", "copy3"}) {
    c.copies.push_back(root / name);
    write_model(c.copies.back(), {c.f.layout, DType::F32, c.f.model_values[0], 0, kDefaultMaxShardBytes, "copy"});
  }
  return c;
}

TEST(MergeEngineProperties, ThreeCopiesGiveTheModelBack) {
  TempDir tmp;
  const Copies c = make_copies(tmp.path());
  const std::string base = "base_model: " + c.f.base.string() + "\n";
  const struct {
    std::string name, yaml;
  } cases[] = {
      {"linear 0.2/0.3/0.5",
       "merge_method: linear\n" + models_yaml(c.copies, {"{weight: 0.2}", "{weight: 0.3}", "{weight: 0.5}"})},
      {"linear 2/-1/3",
       "merge_method: linear\n" + models_yaml(c.copies, {"{weight: 2}", "{weight: -1}", "{weight: 3}"})},
      {"ties density 1", "merge_method: ties\n" + base +
                             models_yaml(c.copies, {"{weight: 1.0, density: 1}", "{weight: 0.5, density: 1}",
                                                    "{weight: 2.0, density: 1}"})},
      {"task_arithmetic lambda 1/3", "merge_method: task_arithmetic\n" + base +
                                         models_yaml(c.copies, {"{weight: 1}", "{weight: 1}", "{weight: 1}"}) +
                                         "parameters: {lambda: 0.3333333333333333}\n"},
  };
  int i = 0;
  for (const auto& k : cases) {
    SCOPED_TRACE(k.name);
    const fs::path out = tmp / ("out" + std::to_string(i++));
    run_merge(load_merge_config(write_config(tmp, k.yaml)), quiet_options(out));
    expect_near_all(read_float_tensors(out), c.f.model_values[0], 1e-6);
  }
}

TEST(MergeEngineProperties, PermutingTheModelsChangesNothing) {
  TempDir tmp;
  const Family f = make_family(tmp.path(), DType::F32, 3, kDefaultMaxShardBytes, 41);
  const std::string base = "base_model: " + f.base.string() + "\n";
  const struct {
    std::string method, globals;
    std::vector<std::string> params;
  } cases[] = {
      {"linear", "", {"{weight: 0.2}", "{weight: 0.5}", "{weight: 0.3}"}},
      {"task_arithmetic", "parameters: {lambda: 0.8}\n", {"{weight: 1.0}", "{weight: 0.5}", "{weight: 0.25}"}},
      {"ties", "", {"{weight: 1.0, density: 0.5}", "{weight: 0.5, density: 0.25}", "{weight: 0.75, density: 0.75}"}},
  };
  const size_t perms[][3] = {{0, 1, 2}, {2, 0, 1}, {1, 2, 0}, {2, 1, 0}};
  int run = 0;
  for (const auto& k : cases) {
    SCOPED_TRACE(k.method);
    std::optional<ModelValues> first;
    for (const auto& p : perms) {
      std::vector<fs::path> paths;
      std::vector<std::string> params;
      for (size_t j : p) {
        paths.push_back(f.models[j]);
        params.push_back(k.params[j]);
      }
      const std::string yaml = "merge_method: " + k.method + "\n" + base + models_yaml(paths, params) + k.globals;
      const fs::path out = tmp / ("out" + std::to_string(run++));
      run_merge(load_merge_config(write_config(tmp, yaml)), quiet_options(out));
      const ModelValues got = read_float_tensors(out);
      if (!first) {
        first = got;
        // Anchor the first order to the reference, so "all equal" cannot mean "all wrong".
        ModelValues want;
        for (const auto& d : f.layout) {
          const Inputs xs = {&f.model_values[0].at(d.name), &f.model_values[1].at(d.name),
                             &f.model_values[2].at(d.name)};
          const Values& b = f.base_values.at(d.name);
          if (k.method == "linear") want[d.name] = ref_linear(xs, {0.2, 0.5, 0.3});
          if (k.method == "task_arithmetic") want[d.name] = ref_task_arithmetic(b, xs, {1.0, 0.5, 0.25}, 0.8);
          if (k.method == "ties") want[d.name] = ref_ties(b, xs, {1.0, 0.5, 0.75}, {0.5, 0.25, 0.75}, 1.0);
        }
        expect_near_all(got, want, 1e-6);
      } else {
        expect_near_all(got, *first, 1e-6);
      }
    }
  }
}

// ---- 5. Determinism ------------------------------------------------------------------------------

std::string dare_ties_yaml(const Family& f, uint64_t seed) {
  return "merge_method: dare_ties\nbase_model: " + f.base.string() + "\n" +
         models_yaml(f.models, {"{weight: 1.0, density: 0.5}", "{weight: 0.5, density: 0.7}"}) +
         "seed: " + std::to_string(seed) + "\n";
}

TEST(MergeEngineDeterminism, DareTiesSameSeedSameBytes) {
  TempDir tmp;
  const Family f = make_family(tmp.path(), DType::F32, 2, 3000, 51);
  const MergeConfig config = load_merge_config(write_config(tmp, dare_ties_yaml(f, 7)));
  MergeOptions opt = quiet_options(tmp / "out1");
  opt.max_shard_bytes = 3000;
  run_merge(config, opt);
  opt.output = tmp / "out2";
  run_merge(config, opt);
  const auto first = safetensors_bytes(tmp / "out1");
  ASSERT_GE(first.size(), 2u);
  EXPECT_TRUE(first == safetensors_bytes(tmp / "out2"));
  EXPECT_EQ(read_bytes(tmp / "out1/amalgam_config.yaml"), read_bytes(tmp / "out2/amalgam_config.yaml"));

  opt.output = tmp / "out3";
  opt.seed = 8;  // --seed overrides the config's seed
  run_merge(config, opt);
  const auto other = safetensors_bytes(tmp / "out3");
  ASSERT_EQ(other.size(), first.size());
  for (const auto& [file, bytes] : first) EXPECT_NE(other.at(file), bytes) << file;
  EXPECT_EQ(load_merge_config(tmp / "out3/amalgam_config.yaml").seed, std::optional<uint64_t>(8));
}

TEST(MergeEngineDeterminism, DareKeepsOrDropsEachEntryAndRescales) {
  // One candidate: every entry is either the base (dropped) or base + w * D * s (kept), s the
  // tensor's |D|_1 / |kept D|_1 (mergekit's L1 rescale), and about `density` of them are kept.
  TempDir tmp;
  const Family f = make_family(tmp.path(), DType::F32, 1, kDefaultMaxShardBytes, 52);
  const std::string yaml = "merge_method: dare_ties\nbase_model: " + f.base.string() + "\n" +
                           models_yaml(f.models, {"{weight: 0.5, density: 0.25}"}) + "seed: 3\n";
  run_merge(load_merge_config(write_config(tmp, yaml)), quiet_options(tmp / "out"));
  const ModelValues got = read_float_tensors(tmp / "out");
  size_t kept = 0, changed = 0, total = 0;
  for (const auto& d : f.layout) {
    const Values &b = f.base_values.at(d.name), &x = f.model_values[0].at(d.name), &g = got.at(d.name);
    double l1 = 0, kept_l1 = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      l1 += std::fabs(x[i] - b[i]);
      if (g[i] != b[i]) kept_l1 += std::fabs(x[i] - b[i]);
    }
    const double scale = kept_l1 > 0 ? l1 / kept_l1 : 1.0;
    for (size_t i = 0; i < b.size(); ++i) {
      const double kept_value = b[i] + 0.5 * (x[i] - b[i]) * scale;
      const bool is_base = g[i] == b[i],
                 is_kept = std::fabs(g[i] - kept_value) <= 1e-5 * std::max(1.0, std::fabs(kept_value));
      EXPECT_TRUE(is_base || is_kept) << d.name << "[" << i << "] = " << g[i];
      if (x[i] != b[i]) {
        ++changed;
        kept += is_kept;
      }
      ++total;
    }
  }
  ASSERT_GT(changed, 1000u);
  const double fraction = static_cast<double>(kept) / static_cast<double>(changed);
  EXPECT_GT(fraction, 0.20);
  EXPECT_LT(fraction, 0.30);
}

// ---- 6. Errors -----------------------------------------------------------------------------------

class MergeEngineErrors : public ::testing::Test {
 protected:
  void SetUp() override { f_ = make_family(tmp_.path(), DType::F32, 2, kDefaultMaxShardBytes, 61); }

  std::string base_line() const { return "base_model: " + f_.base.string() + "\n"; }
  std::string two_models(const std::string& p0 = "{weight: 1.0}", const std::string& p1 = "{weight: 1.0}") const {
    return models_yaml(f_.models, {p0, p1});
  }
  // The message of the InputError loading and merging `yaml` throws; checks no output appeared.
  std::string error_of(const std::string& yaml, MergeOptions opt = {}) {
    opt.output = tmp_ / "out";
    opt.quiet = true;
    const fs::path cfg = write_config(tmp_, yaml);
    const std::string message = input_error_of([&] { run_merge(load_merge_config(cfg), opt); });
    EXPECT_FALSE(fs::exists(tmp_ / "out")) << "a failed merge left an output";
    return message;
  }
  // A candidate written from the family's first model, changed by `edit`.
  fs::path variant(const std::string& name, const std::function<void(ModelFiles&)>& edit) {
    ModelFiles m{f_.layout, DType::F32, f_.model_values[0], 0, kDefaultMaxShardBytes, name};
    edit(m);
    write_model(tmp_ / name, m);
    return tmp_ / name;
  }

  TempDir tmp_;
  Family f_;
};

TEST_F(MergeEngineErrors, UnknownMethod) {
  const std::string m = error_of("merge_method: frankenmerge\n" + base_line() + two_models());
  EXPECT_TRUE(contains(m, "merge_method")) << m;
  EXPECT_TRUE(contains(m, "'frankenmerge'")) << m;
  EXPECT_TRUE(contains(m, "task_arithmetic")) << m;  // lists the known ones
}

TEST_F(MergeEngineErrors, UnknownParameterNamesTheKeyPath) {
  const std::string m = error_of("merge_method: ties\n" + base_line() + two_models("{weight: 1.0, densty: 0.5}"));
  EXPECT_TRUE(contains(m, "models[0].parameters.densty")) << m;
  EXPECT_TRUE(contains(m, "merge.yaml")) << m;
  const std::string g = error_of("merge_method: ties\n" + base_line() + two_models() + "parameters: {lamda: 0.5}\n");
  EXPECT_TRUE(contains(g, "parameters.lamda")) << g;
}

TEST_F(MergeEngineErrors, GlobalParameterSetPerModel) {
  const std::string m =
      error_of("merge_method: ties\n" + base_line() + two_models("{weight: 1.0}", "{weight: 1, lambda: 2}"));
  EXPECT_TRUE(contains(m, "models[1].parameters.lambda")) << m;
  EXPECT_TRUE(contains(m, "top-level parameters")) << m;
}

TEST_F(MergeEngineErrors, MissingRequiredWeight) {
  const std::string m = error_of("merge_method: task_arithmetic\n" + base_line() + two_models("{weight: 1.0}", ""));
  EXPECT_TRUE(contains(m, "missing required parameter")) << m;
  EXPECT_TRUE(contains(m, "models[1].parameters.weight")) << m;
}

TEST_F(MergeEngineErrors, DensityOutOfRange) {
  const std::string m = error_of("merge_method: ties\n" + base_line() + two_models("{weight: 1.0, density: 1.5}"));
  EXPECT_TRUE(contains(m, "models[0].parameters.density")) << m;
  EXPECT_TRUE(contains(m, "1.5")) << m;
  EXPECT_TRUE(contains(m, "outside")) << m;
}

TEST_F(MergeEngineErrors, CandidateMissingATensor) {
  const fs::path lacking = variant("lacking", [](ModelFiles& m) { m.layout.pop_back(); });  // no model.norm.weight
  const std::string yaml = "merge_method: task_arithmetic\n" + base_line() +
                           models_yaml({f_.models[1], lacking}, {"{weight: 1.0}", "{weight: 0.5}"});
  const std::string m = error_of(yaml);
  EXPECT_TRUE(contains(m, lacking.string())) << m;
  EXPECT_TRUE(contains(m, "'model.norm.weight'")) << m;
  EXPECT_TRUE(contains(m, "missing")) << m;

  // With allow_missing the base stands in for the lacking model: a zero task vector there.
  MergeOptions opt = quiet_options(tmp_ / "out");
  opt.allow_missing = true;
  run_merge(load_merge_config(tmp_ / "merge.yaml"), opt);
  ModelValues want;
  for (const auto& d : f_.layout) {
    const Values& b = f_.base_values.at(d.name);
    const Values& second = d.name == "model.norm.weight" ? b : f_.model_values[0].at(d.name);
    want[d.name] = ref_task_arithmetic(b, {&f_.model_values[1].at(d.name), &second}, {1.0, 0.5}, 1.0);
  }
  expect_near_all(read_float_tensors(tmp_ / "out"), want, 1e-6);
}

TEST_F(MergeEngineErrors, ShapeMismatch) {
  const fs::path transposed = variant("transposed", [](ModelFiles& m) { m.layout[4].shape = {16, 32}; });
  ASSERT_EQ(f_.layout[4].name, "model.layers.1.mlp.fc1.weight");
  const std::string m = error_of("merge_method: ties\n" + base_line() +
                                 models_yaml({f_.models[0], transposed}, {"{weight: 1}", "{weight: 1}"}));
  EXPECT_TRUE(contains(m, "'model.layers.1.mlp.fc1.weight'")) << m;
  EXPECT_TRUE(contains(m, transposed.string())) << m;
  EXPECT_TRUE(contains(m, "[16, 32]")) << m;
  EXPECT_TRUE(contains(m, "[32, 16]")) << m;
}

TEST_F(MergeEngineErrors, NaNInACandidate) {
  const fs::path with_nan = variant("with_nan", [](ModelFiles& m) {
    m.values.at("model.layers.1.mlp.fc1.weight")[5] = std::numeric_limits<double>::quiet_NaN();
  });
  const std::string yaml = "merge_method: task_arithmetic\n" + base_line() +
                           models_yaml({f_.models[1], with_nan}, {"{weight: 1.0}", "{weight: 1.0}"});
  // A previous output is left as it was when the merge fails, even with force.
  testing::make_amalgam_output(tmp_ / "old", {{"keep.txt", "previous"}});
  MergeOptions opt = quiet_options(tmp_ / "old");
  opt.force = true;
  const std::string m = input_error_of([&] { run_merge(load_merge_config(write_config(tmp_, yaml)), opt); });
  EXPECT_TRUE(contains(m, "'model.layers.1.mlp.fc1.weight'")) << m;
  EXPECT_TRUE(contains(m, "NaN")) << m;
  EXPECT_TRUE(contains(m, with_nan.string())) << m;
  EXPECT_EQ(read_bytes(tmp_ / "old/keep.txt"), "previous");

  // check_finite = false merges it: the NaN entry stays NaN, every other one is right.
  opt.check_finite = false;
  run_merge(load_merge_config(tmp_ / "merge.yaml"), opt);
  EXPECT_FALSE(fs::exists(tmp_ / "old/keep.txt"));
  ModelValues got = read_float_tensors(tmp_ / "old");
  ASSERT_TRUE(got.contains("model.layers.1.mlp.fc1.weight"));
  EXPECT_TRUE(std::isnan(got["model.layers.1.mlp.fc1.weight"][5]));
  got["model.layers.1.mlp.fc1.weight"][5] = 0;
  ModelValues want;
  for (const auto& d : f_.layout)
    want[d.name] = ref_task_arithmetic(
        f_.base_values.at(d.name), {&f_.model_values[1].at(d.name), &f_.model_values[0].at(d.name)}, {1.0, 1.0}, 1.0);
  want["model.layers.1.mlp.fc1.weight"][5] = 0;
  expect_near_all(got, want, 1e-6);
}

TEST_F(MergeEngineErrors, NaNInTheBaseWhereItStandsInForAMissingTensor) {
  // The base, with a NaN in the tensor the candidate lacks; allow_missing puts the base in its place.
  ModelFiles nan_base{f_.layout, DType::F32, f_.base_values, 0, kDefaultMaxShardBytes, "nan_base"};
  nan_base.values.at("model.norm.weight")[3] = std::numeric_limits<double>::quiet_NaN();
  write_model(tmp_ / "nan_base", nan_base);
  const fs::path lacking = variant("lacking", [](ModelFiles& m) { m.layout.pop_back(); });
  const std::string yaml = "merge_method: task_arithmetic\nbase_model: " + (tmp_ / "nan_base").string() + "\n" +
                           models_yaml({f_.models[1], lacking}, {"{weight: 1.0}", "{weight: 1.0}"});
  MergeOptions opt;
  opt.allow_missing = true;
  const std::string m = error_of(yaml, opt);
  EXPECT_TRUE(contains(m, "'model.norm.weight'")) << m;
  // The NaN is the base's (standing in for the candidate), so the base's shard is named, not the
  // candidate that lacks the tensor.
  EXPECT_TRUE(contains(m, "NaN")) << m;
  EXPECT_TRUE(contains(m, (tmp_ / "nan_base").string())) << m;
}

TEST_F(MergeEngineErrors, ResultOutsideTheOutputDtypeRange) {
  // 60000 + 1 * (70000 - 60000) = 70000, past float16's largest finite value 65504: the file
  // would hold Inf from finite inputs, which check_finite exists to refuse. Linear and the
  // task-vector family store their output dtype as they go; TSV-M returns F32 to the engine.
  const std::vector<TensorDef> layout = {{"model.norm.weight", {2}}};
  write_model(tmp_ / "big_base",
              {layout, DType::F32, {{"model.norm.weight", {60000, 1}}}, 0, kDefaultMaxShardBytes, ""});
  write_model(tmp_ / "big_a", {layout, DType::F32, {{"model.norm.weight", {70000, 1}}}, 0, kDefaultMaxShardBytes, ""});
  for (const std::string method : {"task_arithmetic", "ties", "linear", "tsv"}) {
    const std::string yaml = "merge_method: " + method + "\nbase_model: " + (tmp_ / "big_base").string() + "\n" +
                             models_yaml({tmp_ / "big_a"}, {method == "tsv" ? "{}" : "{weight: 1}"}) +
                             "out_dtype: float16\n";
    const fs::path cfg = write_config(tmp_, yaml);
    std::string message;
    try {
      run_merge(load_merge_config(cfg), quiet_options(tmp_ / "out"));
    } catch (const std::exception& e) {
      message = e.what();
    }
    // Regression: the check must look at the values after conversion to the output dtype.
    EXPECT_TRUE(contains(message, "model.norm.weight")) << method << ": " << message;
    EXPECT_TRUE(contains(message, "F16's range")) << method << ": " << message;
    EXPECT_FALSE(fs::exists(tmp_ / "out")) << method;
  }
}

TEST_F(MergeEngineErrors, TiesWithoutBase) {
  const std::string m = error_of("merge_method: ties\n" + two_models());
  EXPECT_TRUE(contains(m, "base_model")) << m;
  EXPECT_TRUE(contains(m, "ties")) << m;
}

TEST_F(MergeEngineErrors, SlerpTakesExactlyOneModelBesidesTheBase) {
  const std::string m = error_of("merge_method: slerp\n" + base_line() + two_models("", "") + "parameters: {t: 0.5}\n");
  EXPECT_TRUE(contains(m, "slerp")) << m;
  EXPECT_TRUE(contains(m, "got 2")) << m;
  EXPECT_TRUE(contains(m, "models")) << m;
}

TEST_F(MergeEngineErrors, ExistingOutputNeedsForce) {
  testing::make_amalgam_output(tmp_ / "out", {{"keep.txt", "previous"}});
  const std::string yaml = "merge_method: task_arithmetic\n" + base_line() + two_models();
  const MergeConfig config = load_merge_config(write_config(tmp_, yaml));
  const std::string m = input_error_of([&] { run_merge(config, quiet_options(tmp_ / "out")); });
  EXPECT_TRUE(contains(m, (tmp_ / "out").string())) << m;
  EXPECT_TRUE(contains(m, "exists")) << m;
  EXPECT_EQ(read_bytes(tmp_ / "out/keep.txt"), "previous");
  EXPECT_FALSE(fs::exists(tmp_ / "out/model.safetensors"));

  MergeOptions opt = quiet_options(tmp_ / "out");
  opt.force = true;
  run_merge(config, opt);
  EXPECT_FALSE(fs::exists(tmp_ / "out/keep.txt"));
  EXPECT_TRUE(fs::is_regular_file(tmp_ / "out/model.safetensors"));
  // Nothing of the staging or the moved-aside old output is left beside it.
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(tmp_.path())) entries += e.path().filename().string().starts_with(".");
  EXPECT_EQ(entries, 0u);
}

// ---- Slerp, hand-worked --------------------------------------------------------------------------

TEST(MergeEngineSlerp, HandWorkedValuesWithTheBaseListedAmongTheModels) {
  TempDir tmp;
  // Orthogonal unit vectors at t = 0.5 give (cos 45, sin 45); colinear vectors fall back to lerp.
  const std::vector<TensorDef> layout = {{"model.layers.0.w", {2}}, {"model.layers.0.v", {2}}};
  const ModelValues base = {{"model.layers.0.w", {1, 0}}, {"model.layers.0.v", {1, 2}}};
  const ModelValues a = {{"model.layers.0.w", {0, 1}}, {"model.layers.0.v", {2, 4}}};
  write_model(tmp / "base", {layout, DType::F32, base, 0, kDefaultMaxShardBytes, "base"});
  write_model(tmp / "a", {layout, DType::F32, a, 0, kDefaultMaxShardBytes, "a"});
  // mergekit style: the base is among the models and is not counted as the second one.
  const std::string yaml = "merge_method: slerp\nbase_model: " + (tmp / "base").string() +
                           "\nmodels:\n  - model: " + (tmp / "base").string() + "\n  - model: " + (tmp / "a").string() +
                           "\nparameters: {t: 0.5}\n";
  run_merge(load_merge_config(write_config(tmp, yaml)), quiet_options(tmp / "out"));
  const double h = std::sqrt(0.5);
  expect_near_all(read_float_tensors(tmp / "out"), {{"model.layers.0.w", {h, h}}, {"model.layers.0.v", {1.5, 3.0}}},
                  1e-6);
}

// ---- 7. The CLI ----------------------------------------------------------------------------------

TEST(MergeEngineCli, MergeWritesTheOutput) {
  TempDir tmp;
  // Paths relative to the config file's directory; the working directory is elsewhere and is
  // searched first, so the names are ones it will not have.
  const std::string dir = "amalgam-merge-engine-cli-models";
  const Family f = make_family(tmp / dir, DType::F32, 2, kDefaultMaxShardBytes, 71);
  const fs::path cfg = write_config(tmp, "merge_method: task_arithmetic\nbase_model: " + dir + "/base\n" +
                                             models_yaml({dir + "/a", dir + "/b"}, {"{weight: 0.5}", "{weight: 0.5}"}));
  const auto r = run_amalgam("merge " + cfg.string() + " -o " + (tmp / "out").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_regular_file(tmp / "out/model.safetensors"));
  const MergeConfig recorded = load_merge_config(tmp / "out/amalgam_config.yaml");
  ASSERT_EQ(recorded.models.size(), 2u);
  EXPECT_EQ(fs::path(recorded.models[1].model), fs::absolute(f.models[1]).lexically_normal());
  ModelValues want;
  for (const auto& d : f.layout)
    want[d.name] = ref_task_arithmetic(f.base_values.at(d.name),
                                       {&f.model_values[0].at(d.name), &f.model_values[1].at(d.name)}, {0.5, 0.5}, 1.0);
  expect_near_all(read_float_tensors(tmp / "out"), want, 1e-6);
}

TEST(MergeEngineCli, SeedOptionOverridesTheConfig) {
  TempDir tmp;
  const Family f = make_family(tmp.path(), DType::F32, 2, kDefaultMaxShardBytes, 72);
  const fs::path cfg = write_config(tmp, dare_ties_yaml(f, 7));
  const auto a = run_amalgam("merge -q " + cfg.string() + " -o " + (tmp / "a_out").string());
  const auto b = run_amalgam("merge -q " + cfg.string() + " -o " + (tmp / "b_out").string() + " --seed 7");
  const auto c = run_amalgam("merge -q " + cfg.string() + " -o " + (tmp / "c_out").string() + " --seed 8");
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_EQ(read_bytes(tmp / "a_out/model.safetensors"), read_bytes(tmp / "b_out/model.safetensors"));
  EXPECT_NE(read_bytes(tmp / "a_out/model.safetensors"), read_bytes(tmp / "c_out/model.safetensors"));
}

TEST(MergeEngineCli, UnknownConfigKeyIsOneLineExitTwo) {
  TempDir tmp;
  const Family f = make_family(tmp.path(), DType::F32, 1, kDefaultMaxShardBytes, 73);
  const fs::path cfg = write_config(tmp, "merge_method: task_arithmetic\nbase_model: " + f.base.string() + "\n" +
                                             models_yaml(f.models, {"{weight: 1}"}) + "frobnicate: true\n");
  const auto r = run_amalgam("merge " + cfg.string() + " -o " + (tmp / "out").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(r.err.starts_with("amalgam: error: ")) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(r.err.ends_with("\n")) << r.err;
  EXPECT_TRUE(contains(r.err, "frobnicate")) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(MergeEngineCli, MethodsListsAllNine) {
  const auto r = run_amalgam("methods");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* name : {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                           "breadcrumbs_ties", "slerp", "tsv"})
    EXPECT_TRUE(r.out.starts_with(std::string(name) + ": ") || contains(r.out, "\n" + std::string(name) + ": "))
        << name << " missing from:\n"
        << r.out;
}

}  // namespace
}  // namespace amalgam
