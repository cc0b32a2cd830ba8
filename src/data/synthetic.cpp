#include "data/synthetic.h"

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/random.h"
#include "core/tensor.h"
#include "io/atomic_output.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "model/decoder.h"

namespace amalgam {

namespace {

// Uniform in [-1, 1) from a counter: fast, seeded and the same on every thread layout.
float noise(uint64_t key, uint64_t i) {
  return static_cast<float>(static_cast<int64_t>(mix64(key ^ mix64(i))) >> 40) * 0x1p-23f;
}

// The real model's config.json for an architecture, with the options that override it.
nlohmann::json architecture_config(const SyntheticFamily& s) {
  auto config = find_decoder_shape(s.architecture);
  if (!config) {
    std::string known;
    for (const auto& name : decoder_shape_names()) known += (known.empty() ? "" : ", ") + name;
    throw InputError("--architecture: '" + s.architecture + "' is not a shape amalgam knows (" + known + ")");
  }
  if (s.layers > 0) (*config)[config->contains("n_layer") ? "n_layer" : "num_hidden_layers"] = s.layers;
  (*config)["torch_dtype"] = torch_dtype_name(s.dtype);
  return *config;
}

std::vector<TensorSpec> family_layout(const SyntheticFamily& s) {
  const DType d = s.dtype;
  if (!s.architecture.empty()) {
    std::vector<TensorSpec> plan;
    for (const auto& [name, shape] : decoder_parameters(read_decoder_config(architecture_config(s), s.architecture)))
      plan.push_back({name, d, shape});
    return plan;
  }
  const int64_t h = s.hidden, f = s.intermediate;
  std::vector<TensorSpec> plan = {{"model.embed_tokens.weight", d, {s.vocab, h}}};
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"})
      plan.push_back({p + "self_attn." + proj + ".weight", d, {h, h}});
    plan.push_back({p + "mlp.gate_proj.weight", d, {f, h}});
    plan.push_back({p + "mlp.up_proj.weight", d, {f, h}});
    plan.push_back({p + "mlp.down_proj.weight", d, {h, f}});
    plan.push_back({p + "input_layernorm.weight", d, {h}});
    plan.push_back({p + "post_attention_layernorm.weight", d, {h}});
  }
  plan.push_back({"model.norm.weight", d, {h}});
  plan.push_back({"lm_head.weight", d, {s.vocab, h}});
  plan.push_back({"model.rotary_emb.position_ids", DType::I64, {64}});
  return plan;
}

uint64_t name_key(const std::string& name, uint64_t seed) {
  uint64_t k = seed;
  for (unsigned char c : name) k = mix64(k ^ c);
  return k;
}

// Model 0 is the base; model m > 0 adds a task vector: dense noise at 1% of the base's scale
// plus a rank-1 component, so that sparsification and SVD-based methods see structure.
Tensor synthetic_tensor(const TensorSpec& spec, int model, uint64_t seed) {
  if (spec.dtype == DType::I64) {
    Tensor t = Tensor::zeros(DType::I64, spec.shape);
    auto v = t.mutable_data<int64_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int64_t>(i);
    return t;
  }
  const bool norm = spec.shape.size() == 1 && !spec.name.ends_with(".bias");
  const size_t n = static_cast<size_t>(shape_numel(spec.shape));
  const size_t cols = spec.shape.size() == 2 ? static_cast<size_t>(spec.shape[1]) : n;
  const uint64_t base_key = name_key(spec.name, seed);
  const uint64_t task_key = name_key(spec.name, seed + 7919 * static_cast<uint64_t>(model));
  const float scale = norm ? 0.1f : 0.02f;
  std::vector<float> values(n);
  parallel_chunks(n, 1 << 16, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      float v = (norm ? 1.0f : 0.0f) + scale * noise(base_key, i);
      if (model > 0) {
        const size_t r = i / cols, c = i % cols;
        v += 0.01f * scale * noise(task_key, i) + 0.05f * scale * noise(task_key, ~r) * noise(task_key, c << 32);
      }
      values[i] = v;
    }
  });
  return Tensor::from_f32(spec.shape, values).to(spec.dtype);
}

void write_checkpoint(const std::filesystem::path& dir, const SyntheticFamily& s, int model) {
  std::filesystem::create_directories(dir);
  const auto plan = family_layout(s);
  CheckpointWriter writer(dir, plan, s.max_shard_bytes);
  for (const auto& spec : plan) writer.write(spec.name, synthetic_tensor(spec, model, s.seed));
  writer.finish();
  if (!s.architecture.empty()) {
    write_text_file(dir / "config.json", architecture_config(s).dump(2) + "\n");
  } else {
    nlohmann::ordered_json config = {
        {"architectures", {"LlamaForCausalLM"}},   {"model_type", "llama"},         {"hidden_size", s.hidden},
        {"intermediate_size", s.intermediate},     {"num_hidden_layers", s.layers}, {"vocab_size", s.vocab},
        {"torch_dtype", torch_dtype_name(s.dtype)}};
    write_text_file(dir / "config.json", config.dump(2) + "\n");
  }
  if (s.tokenizer.empty()) {
    if (s.architecture.empty())
      write_text_file(dir / "tokenizer.json", "{\"note\": \"synthetic family, no real tokenizer\"}\n");
    return;
  }
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
    if (std::filesystem::exists(s.tokenizer / file))
      std::filesystem::copy_file(s.tokenizer / file, dir / file, std::filesystem::copy_options::overwrite_existing);
}

}  // namespace

uint64_t synthetic_checkpoint_bytes(const SyntheticFamily& s) {
  uint64_t total = 0;
  for (const auto& spec : family_layout(s)) total += spec.nbytes();
  return total;
}

void write_synthetic_family(const std::filesystem::path& dir, const SyntheticFamily& s, bool force) {
  if (!s.tokenizer.empty() && !std::filesystem::is_regular_file(s.tokenizer / "tokenizer.json"))
    throw InputError(s.tokenizer / "tokenizer.json", "not found: --tokenizer takes a directory with tokenizer.json");
  if (!s.architecture.empty()) architecture_config(s);  // an unknown name fails before anything is written
  AtomicOutput out(dir, force);
  write_checkpoint(out.staging() / "base", s, 0);
  for (int m = 1; m <= s.models; ++m) write_checkpoint(out.staging() / ("model_" + std::to_string(m)), s, m);
  out.commit();
}

}  // namespace amalgam
