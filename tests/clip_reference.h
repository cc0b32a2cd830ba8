// An independent reference for Hugging Face's CLIPVisionModel forward (modeling_clip.py),
// written with plain loops in double precision straight from the tensors of a checkpoint
// file. It shares nothing with the engine but the safetensors reader and the dtype
// conversions, so a loader or forward bug in the engine shows up as a difference.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/checkpoint.h"

namespace amalgam::testing {

enum class RefActivation { QuickGelu, Gelu, GeluTanh };

// What the reference needs to know of the architecture (stated by the test, not read by the
// engine's config parser).
struct RefConfig {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t image_size = 0;
  int64_t patch_size = 0;
  int64_t num_channels = 0;
  RefActivation act = RefActivation::QuickGelu;
  double eps = 1e-5;
};

// Every intermediate the engine exposes, row-major.
struct RefLayerTrace {
  std::vector<double> ln1;      // [B*T, D]: input of q, k, v
  std::vector<double> context;  // [B*T, D]: input of out_proj
  std::vector<double> ln2;      // [B*T, D]: input of fc1
  std::vector<double> act;      // [B*T, I]: input of fc2
  std::vector<double> hidden;   // [B*T, D]: the residual stream after the block
};

struct RefTrace {
  std::vector<double> embedded;  // [B*T, D]: after pre_layrnorm
  std::vector<RefLayerTrace> layers;
  std::vector<double> pooled;    // [B, D]: post_layernorm of CLS
  std::vector<double> features;  // [B, F]: pooled, projected when there is a projection
  int64_t feature_dim = 0;
  bool has_projection = false;
};

class ClipReference {
 public:
  ClipReference(const std::filesystem::path& checkpoint, const RefConfig& config) : cfg_(config) {
    CheckpointReader reader(checkpoint);
    for (const auto& name : reader.names()) {
      const TensorInfo& info = reader.info(name);
      if (!is_floating(info.dtype)) continue;
      const Tensor t = reader.tensor(name).to(DType::F64);
      const auto d = t.data<double>();
      tensors_[name] = {info.shape, std::vector<double>(d.begin(), d.end())};
    }
  }

  RefTrace forward(const std::vector<float>& pixels, int64_t batch) const {
    const int64_t D = cfg_.hidden_size, I = cfg_.intermediate_size, C = cfg_.num_channels;
    const int64_t S = cfg_.image_size, P = cfg_.patch_size, G = S / P, T = G * G + 1;
    const int64_t B = batch, H = cfg_.num_heads, hd = D / H;
    if (static_cast<int64_t>(pixels.size()) != B * C * S * S) throw std::runtime_error("reference: pixel count");

    const auto& patch_w = get("vision_model.embeddings.patch_embedding.weight", {D, C, P, P});
    const auto& cls = get("vision_model.embeddings.class_embedding", {D});
    const auto& pos = get("vision_model.embeddings.position_embedding.weight", {T, D});

    RefTrace tr;
    std::vector<double> h(static_cast<size_t>(B * T * D), 0.0);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t d = 0; d < D; ++d) h[idx(b * T, d, D)] = cls[d] + pos[idx(0, d, D)];
      for (int64_t gy = 0; gy < G; ++gy) {
        for (int64_t gx = 0; gx < G; ++gx) {
          const int64_t t = 1 + gy * G + gx;
          for (int64_t d = 0; d < D; ++d) {
            double acc = 0.0;
            for (int64_t c = 0; c < C; ++c)
              for (int64_t ky = 0; ky < P; ++ky)
                for (int64_t kx = 0; kx < P; ++kx) {
                  const double w = patch_w[static_cast<size_t>(((d * C + c) * P + ky) * P + kx)];
                  const double x = pixels[static_cast<size_t>(((b * C + c) * S + gy * P + ky) * S + gx * P + kx)];
                  acc += w * x;
                }
            h[idx(b * T + t, d, D)] = acc + pos[idx(t, d, D)];
          }
        }
      }
    }
    h = layer_norm(h, D, "vision_model.pre_layrnorm");
    tr.embedded = h;

    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    for (int64_t l = 0; l < cfg_.num_layers; ++l) {
      const std::string pre = "vision_model.encoder.layers." + std::to_string(l) + ".";
      RefLayerTrace lt;
      lt.ln1 = layer_norm(h, D, pre + "layer_norm1");
      std::vector<double> q = linear(lt.ln1, D, D, pre + "self_attn.q_proj", true);
      const std::vector<double> k = linear(lt.ln1, D, D, pre + "self_attn.k_proj", true);
      const std::vector<double> v = linear(lt.ln1, D, D, pre + "self_attn.v_proj", true);
      for (auto& x : q) x *= scale;
      lt.context.assign(static_cast<size_t>(B * T * D), 0.0);
      std::vector<double> p(static_cast<size_t>(T));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t head = 0; head < H; ++head)
          for (int64_t i = 0; i < T; ++i) {
            double mx = -INFINITY;
            for (int64_t j = 0; j < T; ++j) {
              double s = 0.0;
              for (int64_t e = 0; e < hd; ++e)
                s += q[idx(b * T + i, head * hd + e, D)] * k[idx(b * T + j, head * hd + e, D)];
              p[static_cast<size_t>(j)] = s;
              mx = std::max(mx, s);
            }
            double z = 0.0;
            for (auto& s : p) z += (s = std::exp(s - mx));
            for (int64_t e = 0; e < hd; ++e) {
              double acc = 0.0;
              for (int64_t j = 0; j < T; ++j) acc += p[static_cast<size_t>(j)] * v[idx(b * T + j, head * hd + e, D)];
              lt.context[idx(b * T + i, head * hd + e, D)] = acc / z;
            }
          }
      const std::vector<double> attn = linear(lt.context, D, D, pre + "self_attn.out_proj", true);
      for (size_t i = 0; i < h.size(); ++i) h[i] += attn[i];

      lt.ln2 = layer_norm(h, D, pre + "layer_norm2");
      lt.act = linear(lt.ln2, D, I, pre + "mlp.fc1", true);
      for (auto& x : lt.act) x = activation(x);
      const std::vector<double> mlp = linear(lt.act, I, D, pre + "mlp.fc2", true);
      for (size_t i = 0; i < h.size(); ++i) h[i] += mlp[i];
      lt.hidden = h;
      tr.layers.push_back(std::move(lt));
    }

    std::vector<double> cls_rows(static_cast<size_t>(B * D));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < D; ++d) cls_rows[idx(b, d, D)] = h[idx(b * T, d, D)];
    tr.pooled = layer_norm(cls_rows, D, "vision_model.post_layernorm");
    const auto proj = tensors_.find("visual_projection.weight");
    tr.has_projection = proj != tensors_.end();
    if (tr.has_projection) {
      const Shape& shape = proj->second.shape;
      if (shape.size() != 2 || shape[1] != D) throw std::runtime_error("reference: visual_projection shape");
      tr.feature_dim = shape[0];
      tr.features = linear(tr.pooled, D, tr.feature_dim, "visual_projection", false);
    } else {
      tr.feature_dim = D;
      tr.features = tr.pooled;
    }
    return tr;
  }

 private:
  struct Stored {
    Shape shape;
    std::vector<double> values;
  };

  static size_t idx(int64_t row, int64_t col, int64_t width) { return static_cast<size_t>(row * width + col); }

  const std::vector<double>& get(const std::string& name, const Shape& shape) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) throw std::runtime_error("reference: missing tensor " + name);
    if (it->second.shape != shape)
      throw std::runtime_error("reference: tensor " + name + " has shape " + shape_to_string(it->second.shape) +
                               ", expected " + shape_to_string(shape));
    return it->second.values;
  }

  // LayerNorm over rows of `width` with biased variance.
  std::vector<double> layer_norm(const std::vector<double>& x, int64_t width, const std::string& prefix) const {
    const auto& w = get(prefix + ".weight", {width});
    const auto& b = get(prefix + ".bias", {width});
    std::vector<double> y(x.size());
    const int64_t rows = static_cast<int64_t>(x.size()) / width;
    for (int64_t r = 0; r < rows; ++r) {
      double mean = 0.0;
      for (int64_t i = 0; i < width; ++i) mean += x[idx(r, i, width)];
      mean /= static_cast<double>(width);
      double var = 0.0;
      for (int64_t i = 0; i < width; ++i) var += (x[idx(r, i, width)] - mean) * (x[idx(r, i, width)] - mean);
      var /= static_cast<double>(width);
      const double inv = 1.0 / std::sqrt(var + cfg_.eps);
      for (int64_t i = 0; i < width; ++i) y[idx(r, i, width)] = (x[idx(r, i, width)] - mean) * inv * w[i] + b[i];
    }
    return y;
  }

  // y = x W^T + b, W: [out, in].
  std::vector<double> linear(const std::vector<double>& x, int64_t in, int64_t out, const std::string& prefix,
                             bool bias) const {
    const auto& w = get(prefix + ".weight", {out, in});
    const std::vector<double>* b = bias ? &get(prefix + ".bias", {out}) : nullptr;
    const int64_t rows = static_cast<int64_t>(x.size()) / in;
    std::vector<double> y(static_cast<size_t>(rows * out));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) {
        double acc = b ? (*b)[static_cast<size_t>(o)] : 0.0;
        for (int64_t i = 0; i < in; ++i) acc += x[idx(r, i, in)] * w[idx(o, i, in)];
        y[idx(r, o, out)] = acc;
      }
    return y;
  }

  double activation(double x) const {
    switch (cfg_.act) {
      case RefActivation::QuickGelu:
        return x / (1.0 + std::exp(-1.702 * x));
      case RefActivation::Gelu:
        return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
      case RefActivation::GeluTanh:
        return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    }
    return 0.0;
  }

  RefConfig cfg_;
  std::map<std::string, Stored> tensors_;
};

}  // namespace amalgam::testing
