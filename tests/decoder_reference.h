// An independent double-precision forward of the Llama-like decoders (Llama, Mistral, Qwen 2,
// Qwen 3), written from Hugging Face's modeling code (modeling_llama.py and its relatives):
// plain loops, one sequence at a time, no BLAS and no code shared with amalgam's model.
#pragma once

#include <cmath>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>
#include <string>
#include <vector>

namespace amalgam::testing {

using Weights = std::map<std::string, std::vector<double>>;
using Rows = std::vector<std::vector<double>>;

// x W^T + b with W stored [out, in] row-major.
inline Rows reference_linear(const Rows& x, const std::vector<double>& w, const std::vector<double>* b, size_t out) {
  Rows y(x.size(), std::vector<double>(out, 0.0));
  for (size_t r = 0; r < x.size(); ++r)
    for (size_t o = 0; o < out; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (size_t i = 0; i < x[r].size(); ++i) s += x[r][i] * w[o * x[r].size() + i];
      y[r][o] = s;
    }
  return y;
}

inline std::vector<double> reference_rms_norm(const std::vector<double>& x, const std::vector<double>& w, double eps) {
  double ms = 0;
  for (double v : x) ms += v * v;
  ms /= static_cast<double>(x.size());
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] / std::sqrt(ms + eps) * w[i];
  return y;
}

// transformers' rope init: default, "linear" (positions divided by factor) and "llama3".
inline std::vector<double> reference_inv_freq(const nlohmann::json& c, size_t head_dim) {
  const double theta = c.value("rope_theta", 10000.0);
  std::vector<double> inv(head_dim / 2);
  for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / head_dim);
  if (!c.contains("rope_scaling") || c["rope_scaling"].is_null()) return inv;
  const auto& s = c["rope_scaling"];
  const std::string type = s.value("rope_type", s.value("type", std::string("default")));
  const double factor = s.value("factor", 1.0);
  if (type == "linear")
    for (auto& f : inv) f /= factor;
  if (type == "llama3") {
    const double low = s.value("low_freq_factor", 1.0), high = s.value("high_freq_factor", 4.0);
    const double old_len = s.value("original_max_position_embeddings", 8192.0);
    const double low_freq_wavelen = old_len / low, high_freq_wavelen = old_len / high;
    for (auto& f : inv) {
      const double wavelen = 2 * std::numbers::pi / f;
      // inv_freq_llama = where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq), then
      // the medium band interpolated between the two.
      const double scaled = wavelen > low_freq_wavelen ? f / factor : f;
      const double smooth = (old_len / wavelen - low) / (high - low);
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      f = medium ? (1 - smooth) * scaled / factor + smooth * scaled : scaled;
    }
  }
  return inv;
}

// Sees each block's linear site inputs as the forward computes them: site 0 the attention's
// input (after the first norm), 1 the attention context (o_proj's input), 2 the MLP's input,
// 3 down_proj's input.
using SiteObserver = std::function<void(size_t layer, int site, const Rows& input)>;

// Logits [tokens][vocab] of one sequence. `c` is config.json; the family's quirks are read
// from model_type as the modeling files hard-code them.
inline Rows reference_decoder_logits(const nlohmann::json& c, const Weights& w, const std::vector<int32_t>& ids,
                                     const SiteObserver& observe = {}) {
  const std::string type = c["model_type"];
  const size_t d = c["hidden_size"], heads = c["num_attention_heads"], layers = c["num_hidden_layers"];
  const size_t kv_heads = c.value("num_key_value_heads", heads);
  const size_t hd = c.value("head_dim", d / heads), inter = c["intermediate_size"], vocab = c["vocab_size"];
  const double eps = c.value("rms_norm_eps", 1e-6);
  const bool qkv_bias = type == "qwen2" || c.value("attention_bias", false);
  const bool o_bias = type != "qwen2" && c.value("attention_bias", false);
  const bool qk_norm = type == "qwen3";
  const long window = type == "mistral" && c.contains("sliding_window") && !c["sliding_window"].is_null()
                          ? c["sliding_window"].get<long>()
                          : 1L << 30;
  const auto inv_freq = reference_inv_freq(c, hd);
  const size_t n = ids.size();
  auto at = [&](const std::string& name) -> const std::vector<double>& { return w.at(name); };

  Rows h(n);
  for (size_t t = 0; t < n; ++t)
    h[t].assign(at("model.embed_tokens.weight").begin() + static_cast<long>(ids[t] * d),
                at("model.embed_tokens.weight").begin() + static_cast<long>((ids[t] + 1) * d));
  for (size_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Rows x(n);
    for (size_t t = 0; t < n; ++t) x[t] = reference_rms_norm(h[t], at(p + "input_layernorm.weight"), eps);
    if (observe) observe(l, 0, x);
    auto proj = [&](const std::string& name, size_t out, bool bias) {
      return reference_linear(x, at(p + name + ".weight"), bias ? &at(p + name + ".bias") : nullptr, out);
    };
    Rows q = proj("self_attn.q_proj", heads * hd, qkv_bias), k = proj("self_attn.k_proj", kv_heads * hd, qkv_bias),
         v = proj("self_attn.v_proj", kv_heads * hd, qkv_bias);
    auto per_head = [&](Rows& m, size_t count, const std::string& norm) {
      for (size_t t = 0; t < n; ++t)
        for (size_t hh = 0; hh < count; ++hh) {
          std::vector<double> head(m[t].begin() + static_cast<long>(hh * hd),
                                   m[t].begin() + static_cast<long>((hh + 1) * hd));
          if (qk_norm) head = reference_rms_norm(head, at(p + norm), eps);
          // q * cos + rotate_half(q) * sin, rotate_half(x) = cat(-x2, x1), position t.
          std::vector<double> rotated(hd);
          for (size_t i = 0; i < hd / 2; ++i) {
            const double angle = static_cast<double>(t) * inv_freq[i];
            rotated[i] = head[i] * std::cos(angle) - head[i + hd / 2] * std::sin(angle);
            rotated[i + hd / 2] = head[i + hd / 2] * std::cos(angle) + head[i] * std::sin(angle);
          }
          std::copy(rotated.begin(), rotated.end(), m[t].begin() + static_cast<long>(hh * hd));
        }
    };
    per_head(q, heads, "self_attn.q_norm.weight");
    per_head(k, kv_heads, "self_attn.k_norm.weight");
    Rows context(n, std::vector<double>(heads * hd, 0.0));
    for (size_t hh = 0; hh < heads; ++hh) {
      const size_t kh = hh / (heads / kv_heads);  // repeat_kv
      for (size_t i = 0; i < n; ++i) {
        std::vector<double> score(n, -INFINITY);
        double mx = -INFINITY;
        for (size_t j = 0; j <= i; ++j) {
          if (static_cast<long>(i) - static_cast<long>(j) >= window) continue;
          double s = 0;
          for (size_t e = 0; e < hd; ++e) s += q[i][hh * hd + e] * k[j][kh * hd + e];
          score[j] = s / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, score[j]);
        }
        double z = 0;
        for (size_t j = 0; j <= i; ++j) z += std::isinf(score[j]) ? 0.0 : std::exp(score[j] - mx);
        for (size_t j = 0; j <= i; ++j) {
          if (std::isinf(score[j])) continue;
          const double pr = std::exp(score[j] - mx) / z;
          for (size_t e = 0; e < hd; ++e) context[i][hh * hd + e] += pr * v[j][kh * hd + e];
        }
      }
    }
    if (observe) observe(l, 1, context);
    const Rows o = reference_linear(context, at(p + "self_attn.o_proj.weight"),
                                    o_bias ? &at(p + "self_attn.o_proj.bias") : nullptr, d);
    for (size_t t = 0; t < n; ++t)
      for (size_t i = 0; i < d; ++i) h[t][i] += o[t][i];
    for (size_t t = 0; t < n; ++t) x[t] = reference_rms_norm(h[t], at(p + "post_attention_layernorm.weight"), eps);
    if (observe) observe(l, 2, x);
    Rows gate = proj("mlp.gate_proj", inter, false), up = proj("mlp.up_proj", inter, false);
    for (size_t t = 0; t < n; ++t)
      for (size_t i = 0; i < inter; ++i) gate[t][i] = gate[t][i] / (1 + std::exp(-gate[t][i])) * up[t][i];
    if (observe) observe(l, 3, gate);
    const Rows down = reference_linear(gate, at(p + "mlp.down_proj.weight"), nullptr, d);
    for (size_t t = 0; t < n; ++t)
      for (size_t i = 0; i < d; ++i) h[t][i] += down[t][i];
  }
  Rows normed(n);
  for (size_t t = 0; t < n; ++t) normed[t] = reference_rms_norm(h[t], at("model.norm.weight"), eps);
  const auto& head = c.value("tie_word_embeddings", false) ? at("model.embed_tokens.weight") : at("lm_head.weight");
  return reference_linear(normed, head, nullptr, vocab);
}

inline std::vector<double> reference_layer_norm(const std::vector<double>& x, const std::vector<double>& w,
                                                const std::vector<double>& b, double eps) {
  double mean = 0, var = 0;
  for (double v : x) mean += v;
  mean /= static_cast<double>(x.size());
  for (double v : x) var += (v - mean) * (v - mean);
  var /= static_cast<double>(x.size());
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - mean) / std::sqrt(var + eps) * w[i] + b[i];
  return y;
}

// GPT-2 (modeling_gpt2.py): h = wte[ids] + wpe[positions]; per block h += c_proj(attn(ln_1 h)),
// h += mlp.c_proj(gelu_new(mlp.c_fc(ln_2 h))); ln_f; logits against wte. Conv1D: y = x W + b
// with W stored [in, out].
inline Rows reference_gpt2_logits(const nlohmann::json& c, const Weights& w, const std::vector<int32_t>& ids,
                                  const SiteObserver& observe = {}) {
  const size_t d = c["n_embd"], heads = c["n_head"], layers = c["n_layer"], vocab = c["vocab_size"];
  const size_t inter = c.value("n_inner", 4 * d), hd = d / heads, n = ids.size();
  const double eps = c.value("layer_norm_epsilon", 1e-5);
  auto at = [&](const std::string& name) -> const std::vector<double>& { return w.at("transformer." + name); };
  auto conv1d = [&](const Rows& x, const std::string& name, size_t out) {
    const auto& W = at(name + ".weight");
    const auto& b = at(name + ".bias");
    Rows y(x.size(), std::vector<double>(out));
    for (size_t r = 0; r < x.size(); ++r)
      for (size_t o = 0; o < out; ++o) {
        double s = b[o];
        for (size_t i = 0; i < x[r].size(); ++i) s += x[r][i] * W[i * out + o];
        y[r][o] = s;
      }
    return y;
  };
  Rows h(n, std::vector<double>(d));
  for (size_t t = 0; t < n; ++t)
    for (size_t i = 0; i < d; ++i) h[t][i] = at("wte.weight")[ids[t] * d + i] + at("wpe.weight")[t * d + i];
  for (size_t l = 0; l < layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    Rows x(n);
    for (size_t t = 0; t < n; ++t) x[t] = reference_layer_norm(h[t], at(p + "ln_1.weight"), at(p + "ln_1.bias"), eps);
    if (observe) observe(l, 0, x);
    const Rows qkv = conv1d(x, p + "attn.c_attn", 3 * d);
    Rows context(n, std::vector<double>(d, 0.0));
    for (size_t hh = 0; hh < heads; ++hh)
      for (size_t i = 0; i < n; ++i) {
        std::vector<double> score(i + 1);
        double mx = -INFINITY, z = 0;
        for (size_t j = 0; j <= i; ++j) {
          double s = 0;
          for (size_t e = 0; e < hd; ++e) s += qkv[i][hh * hd + e] * qkv[j][d + hh * hd + e];
          score[j] = s / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, score[j]);
        }
        for (size_t j = 0; j <= i; ++j) z += std::exp(score[j] - mx);
        for (size_t j = 0; j <= i; ++j)
          for (size_t e = 0; e < hd; ++e)
            context[i][hh * hd + e] += std::exp(score[j] - mx) / z * qkv[j][2 * d + hh * hd + e];
      }
    if (observe) observe(l, 1, context);
    const Rows o = conv1d(context, p + "attn.c_proj", d);
    for (size_t t = 0; t < n; ++t)
      for (size_t i = 0; i < d; ++i) h[t][i] += o[t][i];
    for (size_t t = 0; t < n; ++t) x[t] = reference_layer_norm(h[t], at(p + "ln_2.weight"), at(p + "ln_2.bias"), eps);
    if (observe) observe(l, 2, x);
    Rows mid = conv1d(x, p + "mlp.c_fc", inter);
    for (auto& row : mid)
      for (auto& v : row) v = 0.5 * v * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
    if (observe) observe(l, 3, mid);
    const Rows down = conv1d(mid, p + "mlp.c_proj", d);
    for (size_t t = 0; t < n; ++t)
      for (size_t i = 0; i < d; ++i) h[t][i] += down[t][i];
  }
  Rows normed(n);
  for (size_t t = 0; t < n; ++t) normed[t] = reference_layer_norm(h[t], at("ln_f.weight"), at("ln_f.bias"), eps);
  return reference_linear(normed, at("wte.weight"), nullptr, vocab);
}

}  // namespace amalgam::testing
