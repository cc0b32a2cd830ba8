// Tiny decoder checkpoints for tests: a family's config, seeded random weights of every
// tensor it has (returned as stored, for tests/decoder_reference.h), and a character-level
// tokenizer over their 61-token vocabulary.
#pragma once

#include <functional>
#include <random>
#include <string>

#include "core/tensor.h"
#include "decoder_reference.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace amalgam::testing {

using Json = nlohmann::json;

inline Json tiny_config(const std::string& model_type) {
  return {{"model_type", model_type},    {"vocab_size", 61},       {"hidden_size", 32},
          {"intermediate_size", 40},     {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 4},    {"rms_norm_eps", 1e-5},   {"rope_theta", 10000.0},
          {"tie_word_embeddings", false}};
}

// Writes config.json and model.safetensors: each tensor of `shapes` seeded normal values,
// mean + scale N(0, 1) with (mean, scale) = init(name), stored in `dtype` under
// written_prefix + name; returns the stored values (after rounding) under stored_prefix + name.
inline Weights write_random_checkpoint(const fs::path& dir, const Json& c,
                                       const std::vector<std::pair<std::string, Shape>>& shapes, DType dtype,
                                       uint64_t seed,
                                       const std::function<std::pair<float, float>(const std::string&)>& init,
                                       const std::string& written_prefix = "", const std::string& stored_prefix = "") {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::pair<std::string, Tensor>> tensors;
  Weights stored;
  for (const auto& [name, shape] : shapes) {
    std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
    const auto [mean, scale] = init(name);
    for (auto& x : v) x = mean + scale * normal(rng);
    const Tensor t = Tensor::from_f32(shape, v).to(dtype);
    const Tensor back = t.to(DType::F32);
    stored[stored_prefix + name].assign(back.data<float>().begin(), back.data<float>().end());
    tensors.emplace_back(written_prefix + name, t);
  }
  fs::create_directories(dir);
  write_bytes(dir / "config.json", c.dump());
  save_safetensors(dir / "model.safetensors", tensors);
  return stored;
}

// Writes config.json and model.safetensors with seeded random weights of every tensor the
// family has, stored in `dtype`; returns the stored values (after rounding) for the reference.
inline Weights write_random_decoder(const fs::path& dir, const Json& c, DType dtype, uint64_t seed) {
  const std::string type = c["model_type"];
  const int64_t d = c["hidden_size"], heads = c["num_attention_heads"];
  const int64_t kv = c.value("num_key_value_heads", heads), hd = c.value("head_dim", d / heads);
  const int64_t inter = c["intermediate_size"], vocab = c["vocab_size"], layers = c["num_hidden_layers"];
  const bool qkv_bias = type == "qwen2" || c.value("attention_bias", false);
  std::vector<std::pair<std::string, Shape>> shapes = {{"model.embed_tokens.weight", {vocab, d}}};
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    shapes.push_back({p + "input_layernorm.weight", {d}});
    shapes.push_back({p + "self_attn.q_proj.weight", {heads * hd, d}});
    shapes.push_back({p + "self_attn.k_proj.weight", {kv * hd, d}});
    shapes.push_back({p + "self_attn.v_proj.weight", {kv * hd, d}});
    if (qkv_bias)
      for (auto [name, n] : {std::pair{"q", heads}, {"k", kv}, {"v", kv}})
        shapes.push_back({p + "self_attn." + name + "_proj.bias", {n * hd}});
    if (type == "qwen3") {
      shapes.push_back({p + "self_attn.q_norm.weight", {hd}});
      shapes.push_back({p + "self_attn.k_norm.weight", {hd}});
    }
    shapes.push_back({p + "self_attn.o_proj.weight", {d, heads * hd}});
    if (type != "qwen2" && c.value("attention_bias", false)) shapes.push_back({p + "self_attn.o_proj.bias", {d}});
    shapes.push_back({p + "post_attention_layernorm.weight", {d}});
    shapes.push_back({p + "mlp.gate_proj.weight", {inter, d}});
    shapes.push_back({p + "mlp.up_proj.weight", {inter, d}});
    shapes.push_back({p + "mlp.down_proj.weight", {d, inter}});
  }
  shapes.push_back({"model.norm.weight", {d}});
  if (!c.value("tie_word_embeddings", false)) shapes.push_back({"lm_head.weight", {vocab, d}});

  return write_random_checkpoint(dir, c, shapes, dtype, seed, [](const std::string& name) {
    const bool norm = name.find("norm") != std::string::npos;
    return std::pair{norm ? 1.0f : 0.0f, norm ? 0.2f : name.find("embed") != std::string::npos ? 1.0f : 0.3f};
  });
}

// A random GPT-2 checkpoint (GPT2LMHeadModel's names, optionally without "transformer.").
inline Weights write_random_gpt2(const fs::path& dir, const Json& c, DType dtype, uint64_t seed, bool prefixed) {
  const int64_t d = c["n_embd"], layers = c["n_layer"], vocab = c["vocab_size"], positions = c["n_positions"];
  const int64_t inter = 4 * d;
  std::vector<std::pair<std::string, Shape>> shapes = {{"wte.weight", {vocab, d}}, {"wpe.weight", {positions, d}}};
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    for (const auto& [name, shape] : std::vector<std::pair<std::string, Shape>>{{"ln_1.weight", {d}},
                                                                                {"ln_1.bias", {d}},
                                                                                {"attn.c_attn.weight", {d, 3 * d}},
                                                                                {"attn.c_attn.bias", {3 * d}},
                                                                                {"attn.c_proj.weight", {d, d}},
                                                                                {"attn.c_proj.bias", {d}},
                                                                                {"ln_2.weight", {d}},
                                                                                {"ln_2.bias", {d}},
                                                                                {"mlp.c_fc.weight", {d, inter}},
                                                                                {"mlp.c_fc.bias", {inter}},
                                                                                {"mlp.c_proj.weight", {inter, d}},
                                                                                {"mlp.c_proj.bias", {d}}})
      shapes.push_back({p + name, shape});
  }
  shapes.push_back({"ln_f.weight", {d}});
  shapes.push_back({"ln_f.bias", {d}});
  return write_random_checkpoint(
      dir, c, shapes, dtype, seed,
      [](const std::string& name) {
        const bool norm_weight = name.find("ln_") != std::string::npos && name.ends_with(".weight");
        return std::pair{norm_weight ? 1.0f : 0.0f, 0.3f};
      },
      prefixed ? "transformer." : "", "transformer.");
}

// A character-level tokenizer over the tiny models' vocabulary: a-z are 0-25, space 26, BOS
// "<s>" 60 before every text.
inline void write_char_tokenizer(const fs::path& dir) {
  Json vocab = {{" ", 26}, {"<s>", 60}};
  for (int i = 0; i < 26; ++i) vocab[std::string(1, static_cast<char>('a' + i))] = i;
  const Json tokenizer = {
      {"added_tokens", {{{"id", 60}, {"content", "<s>"}, {"special", true}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {60}}, {"tokens", {"<s>"}}}}}}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", Json::array()}}}};
  write_bytes(dir / "tokenizer.json", tokenizer.dump());
}

}  // namespace amalgam::testing
