// The CLIP vision transformer, computed exactly as Hugging Face's CLIPVisionModel computes
// it (and CLIPVisionModelWithProjection, with the projection), in F32 on the CPU.
//
//   pixels [B, C, H, W] -> patch convolution (no bias) -> [CLS; patches] + positions
//   -> pre_layrnorm -> L x block -> post_layernorm(CLS) -> visual_projection (optional)
//   block: h += out_proj(attention(LN1(h)));  h += fc2(act(fc1(LN2(h))))
//
// Every product is a BLAS call on all tokens of the batch at once. The model is a family
// behind the Model interface (model/model.h): embed, run_block, head (= pool) and its table
// of linear sites; it registers itself for config.json's model_type "clip_vision_model" and
// "clip" (a CLIPModel, whose text tower is ignored).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "io/checkpoint.h"
#include "linalg/linalg.h"
#include "model/kernels.h"
#include "model/linear_sites.h"
#include "model/model.h"
#include "model/stream.h"

namespace amalgam {

// The fields of Hugging Face's CLIPVisionConfig that the forward needs; missing fields take
// CLIPVisionConfig's defaults (a ViT-B/32).
struct ClipVisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  int64_t num_channels = 3;
  int64_t projection_dim = 512;  // used only when the checkpoint has a visual_projection
  Activation hidden_act = Activation::QuickGelu;
  double layer_norm_eps = 1e-5;

  // From a CLIPVisionConfig object, or a CLIPConfig's "vision_config" section. `where`
  // names the file in errors (InputError naming the key).
  static ClipVisionConfig from_json(const nlohmann::json& json, const std::string& where);
  // A complete CLIPVisionConfig ("model_type": "clip_vision_model").
  nlohmann::json to_json() const;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t patches_per_side() const { return image_size / patch_size; }
  int64_t tokens() const { return patches_per_side() * patches_per_side() + 1; }
};

std::string activation_name(Activation act);

struct ClipBlockWeights : BlockWeights {
  LayerNormParams layer_norm1;
  LinearParams q_proj, k_proj, v_proj, out_proj;
  LayerNormParams layer_norm2;
  LinearParams fc1, fc2;
};

struct ClipVisionWeights {
  Matrix patch_embedding;                // [D, C*P*P]: the conv kernel [D, C, P, P], flattened
  std::vector<float> class_embedding;    // [D]
  Matrix position_embedding;             // [tokens, D]
  LayerNormParams pre_layrnorm;          // (sic: Hugging Face's spelling)
  std::vector<ClipBlockWeights> layers;  // encoder.layers.{i}
  LayerNormParams post_layernorm;
  std::optional<Matrix> visual_projection;  // [projection_dim, D], no bias
};

// Every tensor of the model under its Hugging Face name, in checkpoint order, with where its
// values live in a ClipVisionWeights. Loading, saving, random initialisation and training's
// flat parameter vector are all built from this one table.
struct ClipParameter {
  enum class Kind { Matrix, Vector, LayerNormWeight };
  std::string name;
  Shape shape;
  float* data;  // shape_numel(shape) floats inside the weights
  Kind kind;
  float init_scale;  // standard deviation of random initialisation
};
// Sizes `weights` for `config` (keeping values whose sizes already match), then lists them.
std::vector<ClipParameter> clip_parameters(const ClipVisionConfig& config, ClipVisionWeights& weights,
                                           bool with_projection);

// The same for one encoder block.
std::vector<ClipParameter> clip_block_parameters(const ClipVisionConfig& config, ClipBlockWeights& block,
                                                 int64_t layer);

// Hugging Face tensor names. The vision tower's tensors are prefixed "vision_model." in
// every CLIP checkpoint class; the projection is "visual_projection.weight".
std::string clip_layer_prefix(int64_t layer);  // "vision_model.encoder.layers.{i}."

// CLIP's linear sites: AttentionInput (q, k, v), AttentionOutput (out_proj), MlpInput (fc1),
// MlpOutput (fc2), Head (visual_projection, layer -1).
// The weight tensors that read a site's input ("...self_attn.q_proj.weight", ...).
std::vector<std::string> linear_site_weights(int64_t layer, SiteRole role);
// The Gram a statistics file keeps for a site: "<layer prefix>self_attn.qkv.gram",
// "...self_attn.out_proj.gram", "...mlp.fc1.gram", "...mlp.fc2.gram", "visual_projection.gram".
std::string clip_gram_name(int64_t layer, SiteRole role);
// Every site of the model in forward order (blocks, then the projection when there is one).
std::vector<LinearSiteSpec> clip_linear_sites(const ClipVisionConfig& config, bool with_projection);

// Writes a Hugging Face checkpoint directory (atomically): config.json (a CLIPVisionConfig,
// architectures CLIPVisionModel or CLIPVisionModelWithProjection), model.safetensors in
// `dtype`, and `preprocessor_config` as preprocessor_config.json when given.
void save_clip_vision(const std::filesystem::path& dir, const ClipVisionConfig& config,
                      const ClipVisionWeights& weights, DType dtype, bool force,
                      const std::optional<nlohmann::json>& preprocessor_config = std::nullopt);

// The flat parameter order (Model::parameter_layout): clip_parameters' checkpoint order, except
// that each layer's q, k and v projections sit side by side, weights then biases (one
// [3 * width, width] matrix and one bias: one GEMM in training). Weight decay marks the
// matrices other than the embeddings.
ParameterLayout clip_parameter_layout(const ClipVisionConfig& config, bool with_projection);
std::vector<float> flatten_clip_weights(const ClipVisionConfig& config, const ClipVisionWeights& weights);
ClipVisionWeights unflatten_clip_weights(const ClipVisionConfig& config, std::span<const float> flat,
                                         bool with_projection);

class ClipVisionModel final : public Model {
 public:
  // Checks every shape against the config (InputError naming the tensor).
  ClipVisionModel(ClipVisionConfig config, ClipVisionWeights weights);

  // A CLIPVisionModel, CLIPVisionModelWithProjection or CLIPModel checkpoint (file or
  // directory, sharded or not; the text tower is ignored). F32, F16, BF16 and F64 weights
  // are converted to F32. The config comes from the directory's config.json, or from the
  // file's directory; errors name the checkpoint and the tensor.
  static ClipVisionModel load(const std::filesystem::path& checkpoint);

  const ClipVisionConfig& config() const { return config_; }
  const ClipVisionWeights& weights() const { return weights_; }
  // Width of what features() returns: projection_dim with a projection, else hidden_size.
  int64_t feature_dim() const;

  // The family interface (model/model.h). head() is pool().
  std::string model_type() const override { return "clip_vision_model"; }
  int64_t num_layers() const override { return config_.num_hidden_layers; }
  std::optional<ImageInput> image_input() const override {
    return ImageInput{config_.num_channels, config_.image_size};
  }
  std::vector<LinearSiteSpec> linear_sites(int64_t layer) const override;
  std::vector<std::string> block_tensor_names(int64_t layer) const override;
  Stream embed(const ModelInput& batch) const override { return embed(batch.pixels, batch.images); }
  std::unique_ptr<BlockWeights> read_block(int64_t layer) const override;
  std::unique_ptr<BlockWeights> read_block(const CheckpointReader& checkpoint, int64_t layer) const override;
  void run_block(int64_t layer, const BlockWeights& block, Stream& h, const SiteTap& tap = {}) const override;
  void run_own_block(int64_t layer, Stream& h, const SiteTap& tap = {}) const override { run_block(layer, h, tap); }
  Matrix head(const Stream& h, const SiteTap& tap = {}) const override { return pool(h, tap); }
  int64_t head_width() const override { return feature_dim(); }
  Matrix forward(const ModelInput& batch, const SiteTap& tap = {}) const override {
    return features(batch.pixels, batch.images, tap);
  }
  bool holds_parameters() const override { return true; }
  const ParameterLayout& parameter_layout() const override { return layout_; }
  std::vector<float> parameters() const override { return flatten_clip_weights(config_, weights_); }
  std::unique_ptr<Model> with_parameters(std::span<const float> flat) const override;
  std::unique_ptr<Model> without_projection() const override;
  void save(const std::filesystem::path& dir, DType dtype, bool force,
            const std::optional<nlohmann::json>& preprocessor_config = std::nullopt) const override {
    save_clip_vision(dir, config_, weights_, dtype, force, preprocessor_config);
  }

  // pixels: [batch, C, H, W], already normalized (Hugging Face's pixel_values).
  Stream embed(std::span<const float> pixels, int64_t batch) const;
  // The same into `h`, reusing its buffers (fresh pages cost more than a small model's math).
  void embed(std::span<const float> pixels, int64_t batch, Stream& h) const;
  // Block `layer` of this model's own weights.
  void run_block(int64_t layer, Stream& h, const SiteTap& tap = {}) const;
  // post_layernorm of the CLS tokens, then the projection when there is one: [batch, feature_dim].
  Matrix pool(const Stream& h, const SiteTap& tap = {}) const;
  // All of the above.
  Matrix features(std::span<const float> pixels, int64_t batch, const SiteTap& tap = {}) const;

 private:
  ClipVisionConfig config_;
  ClipVisionWeights weights_;
  ParameterLayout layout_;
};

// Reads one encoder block of a checkpoint (converted to F32), without the rest of the
// model: RegMean++ walks the candidates block by block.
ClipBlockWeights load_clip_block(const CheckpointReader& checkpoint, const ClipVisionConfig& config, int64_t layer);

// One encoder block with the given weights on `h`, in place: RegMean++ runs a candidate's
// block on the merged model's stream. `layer` is what the tap reports.
void run_clip_block(const ClipVisionConfig& config, const ClipBlockWeights& block, int64_t layer, Stream& h,
                    const SiteTap& tap = {});

// Seeded random weights of the right shapes and scales (LayerNorms near identity): for
// tests, benchmarks and the zoo's initialisation. Same config and seed, same bits.
ClipVisionWeights random_clip_vision_weights(const ClipVisionConfig& config, uint64_t seed, bool with_projection);

}  // namespace amalgam
