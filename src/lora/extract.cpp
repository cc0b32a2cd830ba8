#include "lora/extract.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "io/atomic_output.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "linalg/linalg.h"
#include "model/decoder.h"
#include "text/regex.h"

namespace amalgam {

namespace fs = std::filesystem;

namespace {

const std::string kPrefix = "base_model.model.";

enum class Plan { Decompose, DecomposeTransposed, FullRank, Skip };

struct Module {
  std::string name;                  // "model.layers.0.self_attn.q_proj"
  std::vector<std::string> tensors;  // its ".weight" and ".bias", as the fine-tune has them
  Plan plan = Plan::Skip;
};

std::string last_component(const std::string& module) {
  return module.substr(module.rfind('.') + 1);
}

// Input and output embeddings, which mergekit saves at full rank unless asked to decompose.
bool is_embedding(const std::string& module) {
  const std::string last = last_component(module);
  return last.find("embed") != std::string::npos || last == "wte" || last == "wpe" || last == "lm_head";
}

// Python's re.search on a module name, as mergekit matches its -i/-e options: PCRE2 reads
// the same syntax.
std::vector<text::Regex> compile(const std::vector<std::string>& patterns, const char* option) {
  std::vector<text::Regex> out;
  for (const auto& p : patterns) out.emplace_back(p, std::string(option) + " '" + p + "'");
  return out;
}

bool matches_any(const std::string& name, const std::vector<text::Regex>& patterns) {
  return std::any_of(patterns.begin(), patterns.end(), [&](const text::Regex& r) { return !r.find_all(name).empty(); });
}

// The modules of the fine-tune in its tensor order, each with its plan (see extract.h).
std::vector<Module> plan_modules(const CheckpointReader& finetune, const LoraExtractOptions& o) {
  const auto include = compile(o.include_regexes, "--include-regex");
  const auto exclude = compile(o.exclude_regexes, "--exclude-regex");
  // A family that stores its linear layers [in, out] (GPT-2's Conv1D): PEFT's LoRA does not
  // take them, so, as mergekit does, they are saved at full rank.
  bool conv1d = false;
  if (is_decoder_checkpoint(finetune.dir()))
    conv1d = read_decoder_config(*finetune.config(), (finetune.dir() / "config.json").string()).layout.conv1d;
  std::vector<Module> modules;
  std::map<std::string, size_t> index;
  for (const auto& name : finetune.names()) {
    std::string module;
    if (name.ends_with(".weight"))
      module = name.substr(0, name.size() - 7);
    else if (name.ends_with(".bias"))
      module = name.substr(0, name.size() - 5);
    else
      continue;  // a parameter of no module (CLIP's class_embedding, logit_scale): not in an adapter
    if (!is_floating(finetune.info(name).dtype)) continue;
    const auto [it, added] = index.emplace(module, modules.size());
    if (added) modules.push_back({module, {}, Plan::Skip});
    modules[it->second].tensors.push_back(name);
  }
  for (auto& m : modules) {
    const std::string weight = m.name + ".weight";
    const bool has_weight = finetune.contains(weight);
    const bool matrix = has_weight && finetune.info(weight).shape.size() == 2;
    const auto& saves = o.save_modules;
    const bool named = std::find(saves.begin(), saves.end(), m.name) != saves.end() ||
                       std::find(saves.begin(), saves.end(), last_component(m.name)) != saves.end();
    if (named || (is_embedding(m.name) && !o.embed_lora && !matches_any(m.name, exclude)))
      m.plan = Plan::FullRank;
    else if ((!include.empty() && !matches_any(m.name, include)) || matches_any(m.name, exclude))
      m.plan = Plan::Skip;
    else if (matrix && is_embedding(m.name))
      m.plan = Plan::DecomposeTransposed;
    else if (matrix && !(conv1d && !is_embedding(m.name)))
      m.plan = Plan::Decompose;
    else
      m.plan = o.skip_undecomposable ? Plan::Skip : Plan::FullRank;
  }
  return modules;
}

struct Factors {
  Matrix a, b;  // lora_A [r, in], lora_B [out, r] (transposed: [r, vocab], [hidden, r])
  double discarded = 0;
};

// The best rank-r approximation of D = W_ft - W_base as B A (mergekit's
// TaskVectorDecompositionTask), computed in F32.
Factors decompose(const CheckpointReader& finetune, const CheckpointReader& base, const std::string& weight,
                  bool transposed, const LoraExtractOptions& o) {
  const Tensor ft = finetune.tensor(weight).to(DType::F32), b = base.tensor(weight).to(DType::F32);
  const int64_t rows = ft.shape()[0], cols = ft.shape()[1];
  Matrix delta(transposed ? cols : rows, transposed ? rows : cols);
  const auto x = ft.data<float>(), y = b.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float d = x[static_cast<size_t>(r * cols + c)] - y[static_cast<size_t>(r * cols + c)];
      if (transposed)
        delta(c, r) = d;
      else
        delta(r, c) = d;
    }
  const Svd s = svd(delta);
  const auto k = static_cast<int64_t>(s.s.size());
  int64_t rank = std::min(o.max_rank, k);
  if (o.sv_epsilon > 0)
    rank = std::min<int64_t>(rank, std::count_if(s.s.begin(), s.s.end(), [&](float v) { return v > o.sv_epsilon; }));
  rank = std::max<int64_t>(rank, 1);  // PEFT has no rank-0 module
  Factors f{Matrix(rank, delta.cols), Matrix(delta.rows, rank), 0.0};
  for (int64_t i = rank; i < k; ++i)
    f.discarded += static_cast<double>(s.s[static_cast<size_t>(i)]) * s.s[static_cast<size_t>(i)];
  for (int64_t i = 0; i < rank; ++i) {
    const float sv = s.s[static_cast<size_t>(i)];
    const float scale_a = o.distribute_scale ? std::sqrt(sv) : sv, scale_b = o.distribute_scale ? std::sqrt(sv) : 1.0f;
    for (int64_t c = 0; c < delta.cols; ++c) f.a(i, c) = scale_a * s.vt(i, c);
    for (int64_t r = 0; r < delta.rows; ++r) f.b(r, i) = s.u(r, i) * scale_b;
  }
  return f;
}

void check_base_has(const CheckpointReader& base, const CheckpointReader& finetune, const std::string& name) {
  if (!base.contains(name)) throw InputError(base.path(), name, "missing (the fine-tune has it)");
  if (base.info(name).shape != finetune.info(name).shape)
    throw InputError(finetune.path(), name,
                     "has shape " + shape_to_string(finetune.info(name).shape) + ", the base has " +
                         shape_to_string(base.info(name).shape));
}

}  // namespace

LoraExtractSummary extract_lora(const fs::path& finetune_path, const fs::path& base_path, const fs::path& output,
                                const LoraExtractOptions& options) {
  if (options.max_rank < 1) throw InputError("extract-lora: --rank must be at least 1");
  AtomicOutput out(output, options.force);
  const CheckpointReader finetune(finetune_path), base(base_path);
  std::vector<Module> modules = plan_modules(finetune, options);

  std::vector<const Module*> decomposed;
  for (const auto& m : modules)
    if (m.plan == Plan::Decompose || m.plan == Plan::DecomposeTransposed) {
      for (const auto& t : m.tensors) check_base_has(base, finetune, t);
      decomposed.push_back(&m);
    }
  // One SVD per thread (each single-threaded inside): the same bits on any thread count.
  std::vector<Factors> factors(decomposed.size());
  Progress progress("extract-lora", decomposed.size(), 0, options.quiet, "modules");
  parallel_for(decomposed.size(), [&](size_t i) {
    const Module& m = *decomposed[i];
    factors[i] = decompose(finetune, base, m.name + ".weight", m.plan == Plan::DecomposeTransposed, options);
    progress.advance(1, 0);
  });

  // The adapter's tensors, in the fine-tune's order, each in the fine-tune's dtype.
  LoraExtractSummary summary;
  std::vector<TensorSpec> plan;
  std::vector<std::function<Tensor()>> producers;
  std::set<std::string> targets, saved_modules;
  std::map<std::string, int64_t> ranks;
  size_t next = 0;
  for (const auto& m : modules) {
    if (m.plan == Plan::Skip) continue;
    if (m.plan == Plan::FullRank) {
      saved_modules.insert(last_component(m.name));
      for (const auto& t : m.tensors) {
        const TensorInfo& info = finetune.info(t);
        plan.push_back({kPrefix + t, info.dtype, info.shape});
        producers.push_back([&finetune, t] { return finetune.tensor(t); });
        ++summary.saved;
      }
      continue;
    }
    if (next >= decomposed.size() || decomposed[next] != &m) continue;
    const Factors& f = factors[next++];
    const DType dtype = finetune.info(m.name + ".weight").dtype;
    const bool embedding = m.plan == Plan::DecomposeTransposed;
    const std::string kind = embedding ? ".lora_embedding_" : ".lora_", suffix = embedding ? "" : ".weight";
    plan.push_back({kPrefix + m.name + kind + "A" + suffix, dtype, {f.a.rows, f.a.cols}});
    producers.push_back([&f, dtype] { return Tensor::from_f32({f.a.rows, f.a.cols}, f.a.data).to(dtype); });
    plan.push_back({kPrefix + m.name + kind + "B" + suffix, dtype, {f.b.rows, f.b.cols}});
    producers.push_back([&f, dtype] { return Tensor::from_f32({f.b.rows, f.b.cols}, f.b.data).to(dtype); });
    if (const std::string bias = m.name + ".bias"; finetune.contains(bias)) {
      const TensorInfo& info = finetune.info(bias);
      plan.push_back({kPrefix + m.name + ".lora_B.bias", info.dtype, info.shape});
      producers.push_back([&finetune, &base, bias, dtype = info.dtype] {
        const Tensor x = finetune.tensor(bias).to(DType::F32), y = base.tensor(bias).to(DType::F32);
        std::vector<float> d(x.data<float>().begin(), x.data<float>().end());
        for (size_t k = 0; k < d.size(); ++k) d[k] -= y.data<float>()[k];
        return Tensor::from_f32(x.shape(), d).to(dtype);
      });
    }
    targets.insert(last_component(m.name));
    ranks[m.name] = f.a.rows;
    summary.rank = std::max(summary.rank, f.a.rows);
    summary.discarded_norm += f.discarded;
    ++summary.decomposed;
  }
  summary.discarded_norm = std::sqrt(summary.discarded_norm);

  SafetensorsWriter writer(out.staging() / "adapter_model.safetensors", plan, {{"format", "pt"}}, WriteOrder::Plan);
  for (size_t i = 0; i < plan.size(); ++i) writer.write(plan[i].name, producers[i]());
  writer.finish();

  nlohmann::json rank_pattern = nlohmann::json::object();
  for (const auto& [module, r] : ranks)
    if (r != summary.rank) rank_pattern[module] = r;
  const nlohmann::json config = {
      {"base_model_name_or_path", base_path.string()},
      {"peft_type", "LORA"},
      {"use_rslora", false},
      {"target_modules", std::vector<std::string>(targets.begin(), targets.end())},
      {"modules_to_save", std::vector<std::string>(saved_modules.begin(), saved_modules.end())},
      {"task_type", is_decoder_checkpoint(finetune.dir()) ? nlohmann::json("CAUSAL_LM") : nlohmann::json()},
      {"r", summary.rank},
      {"lora_alpha", summary.rank},
      {"rank_pattern", rank_pattern},
      {"alpha_pattern", rank_pattern},
      {"lora_dropout", 0.0},
      {"fan_in_fan_out", false},
      {"inference_mode", true}};
  write_text_file(out.staging() / "adapter_config.json", config.dump(4) + "\n");
  write_text_file(out.staging() / "README.md",
                  "# LoRA adapter extracted by amalgam\n\nThe rank-" + std::to_string(summary.rank) +
                      " approximation of `" + finetune_path.string() + "` minus `" + base_path.string() +
                      "` (`amalgam extract-lora`): " + std::to_string(summary.decomposed) + " modules decomposed, " +
                      std::to_string(summary.saved) +
                      " tensors saved at full rank. Load it with PEFT onto the base model.\n");
  out.commit();
  return summary;
}

}  // namespace amalgam
