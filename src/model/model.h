// The one interface every model family implements, and the registry that picks a family
// from config.json's model_type.
//
//   stream = embed(batch)                          images or token sequences -> Stream
//   for each block l: run_block(l, read_block(l), stream, tap)
//   out = head(stream, tap)                        CLIP: pooled features; decoders: logits
//
// The forward is exposed block by block because RegMean++ runs candidates' blocks on a
// merged model's stream, and the statistics step measures a block at a time. The tap sees
// every linear site's input rows (valid tokens only); linear_sites() is the table that says
// which weights read them and which Gram a statistics file keeps for them. Code that
// measures, merges or routes reads that table and this interface, and nothing else about an
// architecture.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/tensor.h"
#include "io/checkpoint.h"
#include "linalg/linalg.h"
#include "model/linear_sites.h"
#include "model/stream.h"

namespace amalgam {

// One batch for embed(): `images` preprocessed images ([images, C, H, W] pixel values) for a
// vision family, or token sequences for a language model.
struct ModelInput {
  std::span<const float> pixels;
  int64_t images = 0;
  std::span<const std::vector<int32_t>> sequences;

  static ModelInput of_images(std::span<const float> pixels, int64_t images) {
    ModelInput in;
    in.pixels = pixels;
    in.images = images;
    return in;
  }
};

// What images a vision family takes: channels and side, square.
struct ImageInput {
  int64_t channels = 0;
  int64_t size = 0;
};

// One block's weights in F32, as a family lays them out (what read_block returns and
// run_block takes).
class BlockWeights {
 public:
  BlockWeights() = default;
  BlockWeights(const BlockWeights&) = default;
  BlockWeights(BlockWeights&&) = default;
  BlockWeights& operator=(const BlockWeights&) = default;
  BlockWeights& operator=(BlockWeights&&) = default;
  virtual ~BlockWeights() = default;
};

// A model's parameters as one flat F32 vector, each tensor a slot of it under its checkpoint
// name. The order is the family's (CLIP's puts each layer's q, k and v side by side: one GEMM
// in training); code that edits parameters goes slot by slot, by name.
struct ParameterSlot {
  std::string name;
  Shape shape;
  size_t offset = 0;
  size_t size = 0;
  bool decay = false;  // weight decay applies to matrices, not to norms, biases, embeddings
};
struct ParameterLayout {
  std::vector<ParameterSlot> slots;
  size_t total = 0;

  const ParameterSlot* find(const std::string& name) const;
  const ParameterSlot& at(const std::string& name) const;  // std::out_of_range when absent
};

class Model {
 public:
  Model() = default;
  Model(const Model&) = default;
  Model(Model&&) = default;
  Model& operator=(const Model&) = default;
  Model& operator=(Model&&) = default;
  virtual ~Model() = default;

  // config.json's model_type ("clip_vision_model", "llama", ...).
  virtual std::string model_type() const = 0;
  virtual int64_t num_layers() const = 0;
  // The images a vision family takes, or nullopt: a language model takes token ids.
  virtual std::optional<ImageInput> image_input() const { return std::nullopt; }
  // Block `layer`'s linear sites in the order its tap reports them, or with layer -1 the
  // sites after the blocks (CLIP's projection; none for a decoder).
  virtual std::vector<LinearSiteSpec> linear_sites(int64_t layer) const = 0;
  // Every site, blocks first.
  std::vector<LinearSiteSpec> all_linear_sites() const;
  // The checkpoint names of block `layer`'s tensors (everything read_block reads); a
  // checkpoint's other tensors come before or after the blocks.
  virtual std::vector<std::string> block_tensor_names(int64_t layer) const = 0;

  // A stream for one batch (the vision families take pixels, the language families ids;
  // the other kind is an std::invalid_argument).
  virtual Stream embed(const ModelInput& batch) const = 0;
  // Block `layer` of this model, or of another checkpoint of the same shapes (a candidate
  // RegMean++ runs on the merged stream), converted to F32; errors name the checkpoint and
  // the tensor.
  virtual std::unique_ptr<BlockWeights> read_block(int64_t layer) const = 0;
  virtual std::unique_ptr<BlockWeights> read_block(const CheckpointReader& checkpoint, int64_t layer) const = 0;
  // One block on the stream, in place; `layer` is what the tap reports.
  virtual void run_block(int64_t layer, const BlockWeights& block, Stream& stream, const SiteTap& tap = {}) const = 0;
  // Block `layer` of this model's own weights: read_block then run_block, which a family
  // that holds its blocks in memory does without copying them (CLIP).
  virtual void run_own_block(int64_t layer, Stream& stream, const SiteTap& tap = {}) const {
    run_block(layer, *read_block(layer), stream, tap);
  }
  // What follows the blocks: one row per sequence for a vision model (its pooled features),
  // one row per token for a language model (its logits).
  virtual Matrix head(const Stream& stream, const SiteTap& tap = {}) const = 0;
  // The width of head()'s rows: a vision model's feature width, a language model's vocabulary.
  virtual int64_t head_width() const = 0;

  // The whole forward, head(blocks(embed(batch))). A family may run a large batch in shards
  // across threads (CLIP does), with the same bits on any thread count.
  virtual Matrix forward(const ModelInput& batch, const SiteTap& tap = {}) const;

  // A family that holds its weights in memory in F32 (the vision families) gives them as one
  // vector, makes a model of its architecture from one (training, MASS's per-task-set models,
  // the zoo's combinations) and saves itself as a checkpoint. A family that maps its weights
  // from the checkpoint (the decoders: a model larger than memory still runs) answers each
  // with an InputError saying so.
  virtual bool holds_parameters() const { return false; }
  virtual const ParameterLayout& parameter_layout() const;
  virtual std::vector<float> parameters() const;
  virtual std::unique_ptr<Model> with_parameters(std::span<const float> flat) const;
  // This model without the projection after its features, as SimCLR drops its projection
  // head after contrastive pretraining; an InputError for a family that has none.
  virtual std::unique_ptr<Model> without_projection() const;
  // A checkpoint directory (model.safetensors in `dtype`, config.json, and
  // preprocessor_config.json when given), staged and renamed into place (AtomicOutput).
  virtual void save(const std::filesystem::path& dir, DType dtype, bool force,
                    const std::optional<nlohmann::json>& preprocessor_config = std::nullopt) const;
};

// The images a model takes: InputError naming `what` (the model's path, for messages) when it
// is a language model.
ImageInput image_input_of(const Model& model, const std::string& what);

// Which token of each sequence stands for it: the first (CLIP's CLS), the mean of all of
// them (in double, so the result does not depend on the rows' order of rounding), or the
// last (a decoder's summary of the sequence).
enum class TokenPick { First, Mean, Last };
// rows [offsets.back(), width] -> [sequences, width].
Matrix pick_tokens(const float* rows, int64_t width, std::span<const int64_t> offsets, TokenPick pick);
inline Matrix pick_tokens(const Stream& stream, TokenPick pick) {
  return pick_tokens(stream.data.data(), stream.width, stream.offsets, pick);
}

// A checkpoint's tensors by where they sit in the model, from its config.json and tensor
// names alone, without reading weights (mergekit's architecture tables): what the merge
// engine counts a gradient's layers by.
struct ArchitectureTable {
  std::vector<std::string> before;               // embeddings and what precedes the blocks
  std::vector<std::vector<std::string>> blocks;  // each block's tensors, in depth order
  std::vector<std::string> after;                // final norms, heads
};

// A family: the model_types it runs, how it opens a checkpoint directory of one, how it
// tables one without opening it, and how it makes a model of random weights from a
// config.json (the vision families, whose models amalgam trains; null for the others).
struct ModelFamily {
  std::string name;  // for messages: "CLIP vision", "decoder language model"
  std::function<bool(const std::string& model_type)> runs;
  std::function<std::unique_ptr<Model>(const std::filesystem::path& checkpoint)> open;
  std::function<ArchitectureTable(const CheckpointReader& checkpoint)> table;
  std::function<std::unique_ptr<Model>(const nlohmann::json& config, uint64_t seed, const std::string& where)> random;
};
// Registers a family (from a static initialiser in its file); returns true.
bool register_model_family(ModelFamily family);

// config.json's model_type of a checkpoint (a directory, or a file in one): InputError naming
// the file when it is missing or not JSON. A CLIPConfig's model_type is "clip".
std::string checkpoint_model_type(const std::filesystem::path& checkpoint);
// The family that runs a checkpoint's model_type, or nullptr.
const ModelFamily* find_model_family(const std::string& model_type);
// Opens a checkpoint with its family: InputError naming config.json and its model_type
// when no family runs it (data-free merging needs none).
std::unique_ptr<Model> open_model(const std::filesystem::path& checkpoint);
// The table of a checkpoint whose config.json names a family amalgam runs; nullopt for any
// other checkpoint (no config.json, or an architecture only data-free merging takes).
// InputError naming config.json when it names a family but does not fit it.
std::optional<ArchitectureTable> architecture_table(const CheckpointReader& checkpoint);
// A model of random weights (seeded) as `config` (a config.json) describes: InputError naming
// `where` and the key when its model_type is missing or not one of a family that makes them.
std::unique_ptr<Model> random_model(const nlohmann::json& config, uint64_t seed, const std::string& where);

}  // namespace amalgam
