#include "train/families/clip_vision.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "core/parallel.h"
#include "model/patches.h"
#include "train/ops.h"

namespace amalgam::train {

template <class T>
ClipTrainGraph<T>::ClipTrainGraph(const ClipVisionConfig& config, bool with_projection)
    : config_(config), with_projection_(with_projection), layout_(clip_parameter_layout(config, with_projection)) {
  auto off = [&](const std::string& name) { return layout_.at(name).offset; };
  patch_w_ = off("vision_model.embeddings.patch_embedding.weight");
  class_emb_ = off("vision_model.embeddings.class_embedding");
  pos_emb_ = off("vision_model.embeddings.position_embedding.weight");
  pre_w_ = off("vision_model.pre_layrnorm.weight");
  pre_b_ = off("vision_model.pre_layrnorm.bias");
  post_w_ = off("vision_model.post_layernorm.weight");
  post_b_ = off("vision_model.post_layernorm.bias");
  if (with_projection) proj_w_ = off("visual_projection.weight");
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = clip_layer_prefix(l);
    blocks_.push_back({off(p + "layer_norm1.weight"), off(p + "layer_norm1.bias"), off(p + "self_attn.q_proj.weight"),
                       off(p + "self_attn.q_proj.bias"), off(p + "self_attn.out_proj.weight"),
                       off(p + "self_attn.out_proj.bias"), off(p + "layer_norm2.weight"), off(p + "layer_norm2.bias"),
                       off(p + "mlp.fc1.weight"), off(p + "mlp.fc1.bias"), off(p + "mlp.fc2.weight"),
                       off(p + "mlp.fc2.bias")});
    const size_t dd = static_cast<size_t>(config.hidden_size * config.hidden_size);
    if (off(p + "self_attn.v_proj.weight") != blocks_.back().qkv_w + 2 * dd ||
        off(p + "self_attn.v_proj.bias") != blocks_.back().qkv_b + 2 * static_cast<size_t>(config.hidden_size))
      throw std::logic_error("ClipTrainGraph: q, k and v projections are not side by side in the layout");
  }
  caches_.resize(blocks_.size());
}

namespace {

template <class T>
void sized(std::vector<T>& v, int64_t n) {
  if (v.size() != static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
}

}  // namespace

template <class T>
void ClipTrainGraph<T>::forward(std::span<const T> params, std::span<const T> pixels, int64_t batch,
                                std::vector<T>& features) {
  const auto& c = config_;
  const int64_t g = c.patches_per_side(), p = c.patch_size, ch = c.num_channels, side = c.image_size;
  const int64_t d = c.hidden_size, tokens = c.tokens(), kernel = ch * p * p, patches = batch * g * g;
  if (params.size() != layout_.total) throw std::invalid_argument("ClipTrainGraph: wrong parameter count");
  if (pixels.size() != static_cast<size_t>(batch * ch * side * side))
    throw std::invalid_argument("ClipTrainGraph: wrong pixel count");
  batch_ = batch;
  const T* w = params.data();

  // Patch embedding as im2col + GEMM, as in the inference engine.
  sized(cols_, patches * kernel);
  im2col_patches(pixels.data(), batch, ch, side, p, cols_.data());
  auto& patch_out = work_.patch_out;
  sized(patch_out, patches * d);
  linear_forward<T>(cols_.data(), patches, kernel, w + patch_w_, nullptr, d, patch_out.data());
  auto& h = work_.h;
  sized(h, batch * tokens * d);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < tokens; ++t) {
      const T* src = t == 0 ? w + class_emb_ : patch_out.data() + (b * g * g + t - 1) * d;
      T* dst = h.data() + (b * tokens + t) * d;
      for (int64_t i = 0; i < d; ++i) dst[i] = src[i] + w[pos_emb_ + static_cast<size_t>(t * d + i)];
    }
  sized(pre_xhat_, batch * tokens * d);
  sized(pre_rstd_, batch * tokens);
  layer_norm_forward<T>(h.data(), batch * tokens, d, w + pre_w_, w + pre_b_, c.layer_norm_eps, h.data(),
                        pre_xhat_.data(), pre_rstd_.data());

  for (size_t l = 0; l < blocks_.size(); ++l) block_forward(params, blocks_[l], caches_[l], h);

  auto& cls = work_.cls;
  sized(cls, batch * d);
  for (int64_t b = 0; b < batch; ++b)
    std::copy(h.begin() + b * tokens * d, h.begin() + (b * tokens + 1) * d, cls.begin() + b * d);
  sized(post_xhat_, batch * d);
  sized(post_rstd_, batch);
  sized(pooled_, batch * d);
  layer_norm_forward<T>(cls.data(), batch, d, w + post_w_, w + post_b_, c.layer_norm_eps, pooled_.data(),
                        post_xhat_.data(), post_rstd_.data());
  if (!with_projection_) {
    features = pooled_;
    return;
  }
  sized(features, batch * c.projection_dim);
  linear_forward<T>(pooled_.data(), batch, d, w + proj_w_, nullptr, c.projection_dim, features.data());
}

template <class T>
void ClipTrainGraph<T>::block_forward(std::span<const T> params, const BlockOffsets& o, BlockCache& c,
                                      std::vector<T>& h) {
  const auto& cfg = config_;
  const int64_t rows = batch_ * cfg.tokens(), d = cfg.hidden_size, f = cfg.intermediate_size;
  const T* w = params.data();
  for (auto* v : {&c.ln1_xhat, &c.ln1_out, &c.context, &c.ln2_xhat, &c.ln2_out, &work_.x_mid}) sized(*v, rows * d);
  sized(c.ln1_rstd, rows);
  sized(c.ln2_rstd, rows);
  sized(c.qkv, rows * 3 * d);
  sized(c.fc1_pre, rows * f);
  sized(c.act, rows * f);
  sized(c.probs, batch_ * cfg.num_attention_heads * cfg.tokens() * cfg.tokens());

  // x_mid = h + out_proj(attention(LN1(h))); h = x_mid + fc2(act(fc1(LN2(x_mid)))).
  auto& x_mid = work_.x_mid;
  layer_norm_forward<T>(h.data(), rows, d, w + o.ln1_w, w + o.ln1_b, cfg.layer_norm_eps, c.ln1_out.data(),
                        c.ln1_xhat.data(), c.ln1_rstd.data());
  linear_forward<T>(c.ln1_out.data(), rows, d, w + o.qkv_w, w + o.qkv_b, 3 * d, c.qkv.data());
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(cfg.head_dim())));
  attention_forward<T>(c.qkv.data(), batch_, cfg.tokens(), d, cfg.num_attention_heads, scale, c.probs.data(),
                       c.context.data());
  linear_forward<T>(c.context.data(), rows, d, w + o.o_w, w + o.o_b, d, x_mid.data(), h.data());

  layer_norm_forward<T>(x_mid.data(), rows, d, w + o.ln2_w, w + o.ln2_b, cfg.layer_norm_eps, c.ln2_out.data(),
                        c.ln2_xhat.data(), c.ln2_rstd.data());
  linear_forward<T>(c.ln2_out.data(), rows, d, w + o.fc1_w, w + o.fc1_b, f, c.fc1_pre.data());
  activation_forward<T>(cfg.hidden_act, c.fc1_pre.data(), c.act.data(), c.act.size());
  linear_forward<T>(c.act.data(), rows, f, w + o.fc2_w, w + o.fc2_b, d, h.data(), x_mid.data());
}

template <class T>
void ClipTrainGraph<T>::backward(std::span<const T> params, std::span<const T> dfeatures, std::span<T> grads) {
  const auto& c = config_;
  const int64_t batch = batch_, d = c.hidden_size, tokens = c.tokens(), g = c.patches_per_side();
  const int64_t p = c.patch_size, kernel = c.num_channels * p * p, patches = batch * g * g;
  if (grads.size() != layout_.total) throw std::invalid_argument("ClipTrainGraph: wrong gradient size");
  if (dfeatures.size() != static_cast<size_t>(batch * feature_dim()))
    throw std::invalid_argument("ClipTrainGraph: wrong feature-gradient size");
  const T* w = params.data();
  T* gw = grads.data();

  auto& dpooled = work_.dpooled;
  sized(dpooled, batch * d);
  if (with_projection_)
    linear_backward<T>(pooled_.data(), dfeatures.data(), batch, d, w + proj_w_, c.projection_dim, dpooled.data(), false,
                       gw + proj_w_, nullptr);
  else
    std::copy(dfeatures.begin(), dfeatures.end(), dpooled.begin());
  auto& dcls = work_.dcls;
  sized(dcls, batch * d);
  layer_norm_backward<T>(dpooled.data(), post_xhat_.data(), post_rstd_.data(), batch, d, w + post_w_, dcls.data(),
                         false, gw + post_w_, gw + post_b_);
  // Only the CLS tokens reach the output; the stream's gradient is zero elsewhere.
  auto& dh = work_.dh;
  sized(dh, batch * tokens * d);
  std::fill(dh.begin(), dh.end(), T(0));
  for (int64_t b = 0; b < batch; ++b)
    std::copy(dcls.begin() + b * d, dcls.begin() + (b + 1) * d, dh.begin() + b * tokens * d);

  for (size_t l = blocks_.size(); l-- > 0;) block_backward(params, grads, blocks_[l], caches_[l], dh);

  auto& de = work_.de;
  sized(de, batch * tokens * d);
  layer_norm_backward<T>(dh.data(), pre_xhat_.data(), pre_rstd_.data(), batch * tokens, d, w + pre_w_, de.data(), false,
                         gw + pre_w_, gw + pre_b_);
  auto& dpatch = work_.dpatch;
  sized(dpatch, patches * d);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < tokens; ++t) {
      const T* src = de.data() + (b * tokens + t) * d;
      T* dpos = gw + pos_emb_ + static_cast<size_t>(t * d);
      for (int64_t i = 0; i < d; ++i) dpos[i] += src[i];
      if (t == 0)
        for (int64_t i = 0; i < d; ++i) gw[class_emb_ + static_cast<size_t>(i)] += src[i];
      else
        std::copy(src, src + d, dpatch.begin() + (b * g * g + t - 1) * d);
    }
  linear_backward<T>(cols_.data(), dpatch.data(), patches, kernel, w + patch_w_, d, nullptr, false, gw + patch_w_,
                     nullptr);
}

template <class T>
void ClipTrainGraph<T>::block_backward(std::span<const T> params, std::span<T> grads, const BlockOffsets& o,
                                       BlockCache& c, std::vector<T>& dh) {
  const auto& cfg = config_;
  const int64_t rows = batch_ * cfg.tokens(), d = cfg.hidden_size, f = cfg.intermediate_size;
  const T* w = params.data();
  T* gw = grads.data();

  // MLP half: h = x_mid + fc2(act(fc1(LN2(x_mid)))); dh is also d x_mid through the residual.
  auto& dact = work_.dact;
  sized(dact, rows * f);
  linear_backward<T>(c.act.data(), dh.data(), rows, f, w + o.fc2_w, d, dact.data(), false, gw + o.fc2_w, gw + o.fc2_b);
  activation_backward<T>(cfg.hidden_act, c.fc1_pre.data(), dact.data(), dact.data(), dact.size());
  auto& dnorm = work_.dnorm;
  sized(dnorm, rows * d);
  linear_backward<T>(c.ln2_out.data(), dact.data(), rows, d, w + o.fc1_w, f, dnorm.data(), false, gw + o.fc1_w,
                     gw + o.fc1_b);
  layer_norm_backward<T>(dnorm.data(), c.ln2_xhat.data(), c.ln2_rstd.data(), rows, d, w + o.ln2_w, dh.data(), true,
                         gw + o.ln2_w, gw + o.ln2_b);

  // Attention half: x_mid = x_in + out_proj(attention(LN1(x_in))).
  auto& dcontext = work_.dcontext;
  sized(dcontext, rows * d);
  linear_backward<T>(c.context.data(), dh.data(), rows, d, w + o.o_w, d, dcontext.data(), false, gw + o.o_w,
                     gw + o.o_b);
  auto& dqkv = work_.dqkv;
  sized(dqkv, rows * 3 * d);
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(cfg.head_dim())));
  attention_backward<T>(c.qkv.data(), c.probs.data(), dcontext.data(), batch_, cfg.tokens(), d, cfg.num_attention_heads,
                        scale, dqkv.data());
  linear_backward<T>(c.ln1_out.data(), dqkv.data(), rows, d, w + o.qkv_w, 3 * d, dnorm.data(), false, gw + o.qkv_w,
                     gw + o.qkv_b);
  layer_norm_backward<T>(dnorm.data(), c.ln1_xhat.data(), c.ln1_rstd.data(), rows, d, w + o.ln1_w, dh.data(), true,
                         gw + o.ln1_w, gw + o.ln1_b);
}

template <class T>
ShardedClipGraph<T>::ShardedClipGraph(const ClipVisionConfig& config, bool with_projection, int64_t shard_images)
    : shard_images_(shard_images) {
  if (shard_images < 1) throw std::invalid_argument("ShardedClipGraph: shard size must be positive");
  shards_.emplace_back(config, with_projection);
}

template <class T>
void ShardedClipGraph<T>::forward(std::span<const T> params, std::span<const T> pixels, int64_t batch,
                                  std::vector<T>& features) {
  const int64_t shards = shard_count(batch);
  if (shards <= 1) {
    batch_ = batch;
    shards_.front().forward(params, pixels, batch, features);
    return;
  }
  const ClipVisionConfig& c = shards_.front().config();
  const int64_t image_floats = c.num_channels * c.image_size * c.image_size;
  if (pixels.size() != static_cast<size_t>(batch * image_floats))
    throw std::invalid_argument("ClipTrainGraph: wrong pixel count");
  while (static_cast<int64_t>(shards_.size()) < shards) shards_.push_back(shards_.front());
  shard_features_.resize(static_cast<size_t>(shards));
  batch_ = batch;
  parallel_for(static_cast<size_t>(shards), [&](size_t s) {
    const auto first = static_cast<size_t>(static_cast<int64_t>(s) * shard_images_ * image_floats);
    const int64_t n = shard_size(static_cast<int64_t>(s));
    shards_[s].forward(params, pixels.subspan(first, static_cast<size_t>(n * image_floats)), n, shard_features_[s]);
  });
  features.clear();
  for (int64_t s = 0; s < shards; ++s)
    features.insert(features.end(), shard_features_[s].begin(), shard_features_[s].end());
}

template <class T>
void ShardedClipGraph<T>::backward(std::span<const T> params, std::span<const T> dfeatures, std::span<T> grads) {
  const int64_t shards = shard_count(batch_);
  if (shards <= 1) {
    shards_.front().backward(params, dfeatures, grads);
    return;
  }
  const int64_t dim = shards_.front().feature_dim();
  if (dfeatures.size() != static_cast<size_t>(batch_ * dim))
    throw std::invalid_argument("ClipTrainGraph: wrong feature-gradient size");
  // The first shard accumulates into `grads` itself, the others into zeroed buffers.
  shard_grads_.resize(static_cast<size_t>(shards - 1));
  parallel_for(static_cast<size_t>(shards), [&](size_t s) {
    std::span<T> g = grads;
    if (s > 0) {
      shard_grads_[s - 1].assign(grads.size(), T(0));
      g = shard_grads_[s - 1];
    }
    const auto first = static_cast<size_t>(static_cast<int64_t>(s) * shard_images_ * dim);
    const auto n = static_cast<size_t>(shard_size(static_cast<int64_t>(s)) * dim);
    shards_[s].backward(params, dfeatures.subspan(first, n), g);
  });
  // Element by element, shards in order: the same sum whichever thread ran which shard.
  parallel_chunks(grads.size(), 1 << 15, [&](size_t begin, size_t end) {
    for (const std::vector<T>& g : shard_grads_)
      for (size_t i = begin; i < end; ++i) grads[i] += g[i];
  });
}

template <class T>
int64_t ShardedClipGraph<T>::image_floats() const {
  const ClipVisionConfig& c = shards_.front().config();
  return c.num_channels * c.image_size * c.image_size;
}

template class ClipTrainGraph<float>;
template class ClipTrainGraph<double>;
template class ShardedClipGraph<float>;
template class ShardedClipGraph<double>;

namespace {

const bool registered = register_train_graph({[](const std::string& type) { return type == "clip_vision_model"; },
                                              [](const Model& model) -> std::unique_ptr<TrainGraph<float>> {
                                                const auto& clip = dynamic_cast<const ClipVisionModel&>(model);
                                                return std::make_unique<ShardedClipGraph<float>>(
                                                    clip.config(), clip.weights().visual_projection.has_value());
                                              }});

}  // namespace

}  // namespace amalgam::train
