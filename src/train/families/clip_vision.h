// The CLIP vision model's training graph: the model as a differentiable function of its
// flat parameter vector (clip_parameter_layout: each layer's q, k and v projections side by
// side, one GEMM), composed of model/kernels' forward kernels and train/ops' backward
// passes. ShardedClipGraph is what make_train_graph gives a clip_vision_model.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/families/clip_vision.h"
#include "train/graph.h"

namespace amalgam::train {

template <class T>
class ClipTrainGraph {
 public:
  ClipTrainGraph(const ClipVisionConfig& config, bool with_projection);

  const ClipVisionConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_; }
  int64_t feature_dim() const { return with_projection_ ? config_.projection_dim : config_.hidden_size; }

  // pixels [batch, C, H, W] -> features [batch, feature_dim]; keeps the activations.
  void forward(std::span<const T> params, std::span<const T> pixels, int64_t batch, std::vector<T>& features);
  // grads += d<features, dfeatures>/d params for the last forward's batch.
  void backward(std::span<const T> params, std::span<const T> dfeatures, std::span<T> grads);

 private:
  // qkv_w is q_proj's weight, followed by k_proj's and v_proj's (clip_parameter_layout puts them so).
  struct BlockOffsets {
    size_t ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  // What one block's backward needs from its forward.
  struct BlockCache {
    std::vector<T> ln1_xhat, ln1_rstd, ln1_out, qkv, probs, context, ln2_xhat, ln2_rstd, ln2_out, fc1_pre, act;
  };

  void block_forward(std::span<const T> params, const BlockOffsets& o, BlockCache& c, std::vector<T>& h);
  void block_backward(std::span<const T> params, std::span<T> grads, const BlockOffsets& o, BlockCache& c,
                      std::vector<T>& dh);

  ClipVisionConfig config_;
  bool with_projection_;
  ParameterLayout layout_;
  size_t patch_w_, class_emb_, pos_emb_, pre_w_, pre_b_, post_w_, post_b_, proj_w_ = 0;
  std::vector<BlockOffsets> blocks_;

  int64_t batch_ = 0;
  std::vector<T> cols_, pre_xhat_, pre_rstd_, post_xhat_, post_rstd_, pooled_;
  std::vector<BlockCache> caches_;
  // Work buffers reused from step to step: fresh pages cost more than the arithmetic here.
  struct Work {
    std::vector<T> patch_out, h, x_mid, cls, dpooled, dcls, dh, de, dpatch, dact, dnorm, dcontext, dqkv;
  } work_;
};

// Data parallelism inside a batch: the batch is cut into shards of `shard_images` images;
// each shard runs forward and backward on its own ClipTrainGraph on one thread (BLAS
// called inside a parallel region is single-threaded), and the shards' gradients are summed
// in shard order. That is one thread barrier per pass instead of one per GEMM: at the zoo's
// sizes, threaded GEMMs spent a fifth of a step waiting for each other. The shard size, not
// the thread count, fixes the summation order, so the bits do not depend on the machine.
template <class T>
class ShardedClipGraph final : public TrainGraph<T> {
 public:
  static constexpr int64_t kDefaultShardImages = 32;

  ShardedClipGraph(const ClipVisionConfig& config, bool with_projection, int64_t shard_images = kDefaultShardImages);

  const ParameterLayout& layout() const override { return shards_.front().layout(); }
  int64_t image_floats() const override;

  // Same contracts as ClipTrainGraph's.
  void forward(std::span<const T> params, std::span<const T> pixels, int64_t batch, std::vector<T>& features) override;
  void backward(std::span<const T> params, std::span<const T> dfeatures, std::span<T> grads) override;

 private:
  int64_t shard_count(int64_t batch) const { return (batch + shard_images_ - 1) / shard_images_; }
  int64_t shard_size(int64_t s) const { return std::min(shard_images_, batch_ - s * shard_images_); }

  int64_t shard_images_;
  int64_t batch_ = 0;
  std::vector<ClipTrainGraph<T>> shards_;
  std::vector<std::vector<T>> shard_features_, shard_grads_;
};

extern template class ClipTrainGraph<float>;
extern template class ClipTrainGraph<double>;
extern template class ShardedClipGraph<float>;
extern template class ShardedClipGraph<double>;

}  // namespace amalgam::train
