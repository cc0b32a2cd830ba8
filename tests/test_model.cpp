// The model-family interface (model/model.h): the registry picks a family from config.json's
// model_type; a forward through the interface (embed, read_block, run_block, head) gives the
// bits of each family's own forward; blocks read from another checkpoint are that
// checkpoint's; token picking by hand-worked values.
#include <algorithm>
#include <set>

#include <gtest/gtest.h>

#include "clip_fixtures.h"
#include "core/error.h"
#include "decoder_fixtures.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "model/decoder.h"
#include "model/families/clip_vision.h"
#include "model/model.h"
#include "test_util.h"
#include "train/graph.h"

namespace amalgam::testing {
namespace {

using Json = nlohmann::json;

TEST(TokenPick, FirstMeanAndLastOfSequencesOfDifferentLengths) {
  // Two sequences of width 2: rows 0-1, then rows 2-4.
  const std::vector<float> rows = {1, 2, 3, 6, /* second */ -1, 0, 0, 1, 4, 8};
  const std::vector<int64_t> offsets = {0, 2, 5};
  EXPECT_EQ(pick_tokens(rows.data(), 2, offsets, TokenPick::First).data, (std::vector<float>{1, 2, -1, 0}));
  EXPECT_EQ(pick_tokens(rows.data(), 2, offsets, TokenPick::Mean).data, (std::vector<float>{2, 4, 1, 3}));
  EXPECT_EQ(pick_tokens(rows.data(), 2, offsets, TokenPick::Last).data, (std::vector<float>{3, 6, 4, 8}));
  const std::vector<int64_t> with_empty = {0, 2, 2};
  EXPECT_THROW(pick_tokens(rows.data(), 2, with_empty, TokenPick::First), std::invalid_argument);
}

std::vector<float> seeded_pixels(size_t n) {
  std::vector<float> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<float>((i * 37) % 23) / 11.0f - 1.0f;
  return p;
}

TEST(ModelFamilies, ClipThroughTheInterfaceIsItsOwnForward) {
  TempDir dir;
  const ClipVisionConfig c = tiny_clip_config();  // 1 channel, 8x8, width 12, a projection
  save_clip_vision(dir.path() / "clip", c, random_clip_vision_weights(c, 3, true), DType::F32, false);
  const std::unique_ptr<Model> model = open_model(dir.path() / "clip");
  EXPECT_EQ(model->model_type(), "clip_vision_model");
  EXPECT_EQ(model->num_layers(), 2);
  ASSERT_TRUE(model->image_input());
  EXPECT_EQ(model->image_input()->channels, 1);
  EXPECT_EQ(model->image_input()->size, 8);
  // Four sites a block, and the projection's after the blocks.
  EXPECT_EQ(model->linear_sites(1).size(), 4U);
  ASSERT_EQ(model->linear_sites(-1).size(), 1U);
  EXPECT_EQ(model->linear_sites(-1)[0].role, SiteRole::Head);
  EXPECT_EQ(model->linear_sites(-1)[0].weights, std::vector<std::string>{"visual_projection.weight"});
  EXPECT_EQ(model->all_linear_sites().size(), 9U);

  const int64_t images = 3;
  const std::vector<float> pixels = seeded_pixels(static_cast<size_t>(images * 1 * 8 * 8));
  Stream s = model->embed(ModelInput{pixels, images, {}});
  EXPECT_EQ(s.sequences(), images);
  EXPECT_EQ(s.rows(), images * c.tokens());
  int64_t tapped = 0;
  for (int64_t l = 0; l < model->num_layers(); ++l)
    model->run_block(l, *model->read_block(l), s, [&](const SiteInput& in) { tapped += in.rows; });
  EXPECT_EQ(tapped, 2 * 4 * images * c.tokens());  // every site sees every token, never more
  const Matrix through_interface = model->head(s);
  const Matrix own = ClipVisionModel::load(dir.path() / "clip").features(pixels, images);
  EXPECT_TRUE(same_bits(through_interface.data, own.data));
  // The whole forward in one call, and its width.
  EXPECT_TRUE(same_bits(model->forward(ModelInput::of_images(pixels, images)).data, own.data));
  EXPECT_EQ(model->head_width(), own.cols);
  // `amalgam inspect` names the family from the same registry.
  const CliResult inspect = run_amalgam("inspect " + (dir.path() / "clip").string() + " --json");
  ASSERT_EQ(inspect.code, 0) << inspect.err;
  EXPECT_EQ(nlohmann::json::parse(inspect.out)["family"], "clip_vision_model");
}

TEST(ModelFamilies, DecoderThroughTheInterfaceIsItsOwnForwardAndReadsOtherCheckpointsBlocks) {
  TempDir dir;
  const Json c = tiny_config("qwen2");
  write_random_decoder(dir.path() / "a", c, DType::BF16, 1);
  write_random_decoder(dir.path() / "b", c, DType::BF16, 2);
  const std::unique_ptr<Model> model = open_model(dir.path() / "a");
  EXPECT_EQ(model->model_type(), "qwen2");
  EXPECT_FALSE(model->image_input());
  EXPECT_TRUE(model->linear_sites(-1).empty());  // lm_head is not merged from its input's statistics
  EXPECT_EQ(model->linear_sites(0).size(), 4U);
  EXPECT_THROW(model->embed(ModelInput{std::vector<float>(3), 1, {}}), std::invalid_argument);

  const std::vector<std::vector<int32_t>> sequences = {{3, 17, 42, 5}, {8}, {59, 1, 2}};
  const DecoderModel a = DecoderModel::open(dir.path() / "a"), b = DecoderModel::open(dir.path() / "b");
  // Model a's blocks through the interface; then b's blocks, read by a from b's checkpoint.
  const CheckpointReader b_checkpoint(dir.path() / "b");
  Stream via_a = model->embed(ModelInput{{}, 0, sequences}), via_b = b.embed(sequences);
  Stream own_a = a.embed(sequences), own_b = b.embed(sequences);
  for (int64_t l = 0; l < model->num_layers(); ++l) {
    model->run_block(l, *model->read_block(l), via_a);
    a.run_block(l, a.load_block(l), own_a);
    b.run_block(l, *model->read_block(b_checkpoint, l), via_b);
    b.run_block(l, b.load_block(l), own_b);
  }
  EXPECT_TRUE(same_bits(model->head(via_a).data, a.logits(own_a).data));
  // The whole forward in one call, and its width.
  const Matrix logits = model->forward(ModelInput{{}, 0, sequences});
  EXPECT_TRUE(same_bits(logits.data, a.logits(own_a).data));
  EXPECT_EQ(logits.cols, model->head_width());
  EXPECT_EQ(model->head_width(), c["vocab_size"].get<int64_t>());
  // Image classification (evaluate, probes) asks for image input, which a decoder lacks.
  const std::string not_images = input_error_of([&] { (void)image_input_of(*model, "model/a"); });
  EXPECT_EQ(not_images, "model/a: a qwen2 model takes token ids, not images");
  EXPECT_TRUE(same_bits(via_b.data, own_b.data));
  EXPECT_FALSE(same_bits(via_a.data, via_b.data));  // the two checkpoints differ
}

TEST(ModelFamilies, ClipParametersAreOneVectorWithEveryCheckpointTensorOnce) {
  TempDir dir;
  const ClipVisionConfig c = tiny_clip_config();
  save_clip_vision(dir.path() / "clip", c, random_clip_vision_weights(c, 4, true), DType::F32, false);
  const std::unique_ptr<Model> model = open_model(dir.path() / "clip");
  ASSERT_TRUE(model->holds_parameters());
  const ParameterLayout& layout = model->parameter_layout();
  const std::vector<float> flat = model->parameters();
  ASSERT_EQ(flat.size(), layout.total);
  // Every tensor of the checkpoint is one slot, with its values, and the slots tile the vector.
  const CheckpointReader checkpoint(dir.path() / "clip");
  std::vector<std::string> names;
  size_t offset = 0;
  for (const ParameterSlot& s : layout.slots) {
    EXPECT_EQ(s.offset, offset);
    offset += s.size;
    names.push_back(s.name);
    const std::vector<double> values = tensor_values(dir.path() / "clip", s.name);
    ASSERT_EQ(values.size(), s.size) << s.name;
    for (size_t i = 0; i < s.size; ++i) ASSERT_EQ(flat[s.offset + i], static_cast<float>(values[i])) << s.name;
  }
  std::vector<std::string> stored = checkpoint.names();
  std::sort(names.begin(), names.end());
  std::sort(stored.begin(), stored.end());
  EXPECT_EQ(names, stored);
  // q, k and v of a layer side by side (one GEMM in training); decay on matrices only.
  const ParameterSlot& q = layout.at(clip_layer_prefix(1) + "self_attn.q_proj.weight");
  EXPECT_EQ(layout.at(clip_layer_prefix(1) + "self_attn.k_proj.weight").offset, q.offset + q.size);
  EXPECT_TRUE(q.decay);
  EXPECT_FALSE(layout.at(clip_layer_prefix(1) + "self_attn.q_proj.bias").decay);
  EXPECT_FALSE(layout.at("vision_model.embeddings.position_embedding.weight").decay);

  // A model from a changed vector holds the change; saved and loaded, it keeps its bits.
  std::vector<float> changed = flat;
  for (size_t i = 0; i < changed.size(); ++i) changed[i] += 0.001f * static_cast<float>(i % 7);
  const std::unique_ptr<Model> other = model->with_parameters(changed);
  EXPECT_EQ(other->parameters(), changed);
  other->save(dir.path() / "other", DType::F32, false);
  EXPECT_EQ(open_model(dir.path() / "other")->parameters(), changed);
  EXPECT_THROW(model->with_parameters(std::span(changed).first(changed.size() - 1)), std::invalid_argument);
}

// Each family's table, read from config.json without opening the weights, lists every
// tensor of the checkpoint once, each block's as the model reads that block.
void expect_table_matches_model(const fs::path& checkpoint) {
  const CheckpointReader reader(checkpoint);
  const std::optional<ArchitectureTable> table = architecture_table(reader);
  ASSERT_TRUE(table) << checkpoint;
  const std::unique_ptr<Model> model = open_model(checkpoint);
  ASSERT_EQ(static_cast<int64_t>(table->blocks.size()), model->num_layers()) << checkpoint;
  std::multiset<std::string> listed(table->before.begin(), table->before.end());
  listed.insert(table->after.begin(), table->after.end());
  for (int64_t l = 0; l < model->num_layers(); ++l) {
    const auto& block = table->blocks[static_cast<size_t>(l)];
    EXPECT_EQ(block, model->block_tensor_names(l)) << checkpoint << " block " << l;
    listed.insert(block.begin(), block.end());
  }
  for (const auto& name : reader.names()) EXPECT_EQ(listed.count(name), 1U) << checkpoint << ": " << name;
}

TEST(ModelFamilies, TablesListEveryTensorWhereTheModelReadsIt) {
  TempDir dir;
  const ClipVisionConfig c = tiny_clip_config();
  save_clip_vision(dir.path() / "clip", c, random_clip_vision_weights(c, 5, true), DType::F32, false);
  expect_table_matches_model(dir.path() / "clip");
  const auto clip_table = architecture_table(CheckpointReader(dir.path() / "clip"));
  EXPECT_EQ(clip_table->before.back(), "vision_model.pre_layrnorm.bias");
  EXPECT_EQ(clip_table->after.front(), "vision_model.post_layernorm.weight");
  for (const char* family : {"llama", "mistral", "qwen2", "qwen3"}) {
    write_random_decoder(dir.path() / family, tiny_config(family), DType::F32, 1);
    expect_table_matches_model(dir.path() / family);
  }
  // GPT-2 as GPT2LMHeadModel saves it ("transformer.h.0...") and as GPT2Model does ("h.0...").
  const Json gpt2 = {{"model_type", "gpt2"}, {"vocab_size", 61}, {"n_embd", 16},
                     {"n_layer", 3},         {"n_head", 2},      {"n_positions", 24}};
  for (const bool prefixed : {true, false}) {
    const fs::path at = dir.path() / (prefixed ? "gpt2-lm" : "gpt2-base");
    write_random_gpt2(at, gpt2, DType::F32, 2, prefixed);
    expect_table_matches_model(at);
  }
  // A config.json naming no family amalgam runs has no table (data-free merging reads names).
  fs::create_directories(dir.path() / "mamba");
  write_bytes(dir.path() / "mamba" / "config.json", R"({"model_type": "mamba"})");
  fs::copy_file(dir.path() / "llama" / "model.safetensors", dir.path() / "mamba" / "model.safetensors");
  EXPECT_FALSE(architecture_table(CheckpointReader(dir.path() / "mamba")));
}

TEST(ModelFamilies, ARandomModelFromAConfigIsTheFamilysRandomModel) {
  const ClipVisionConfig c = tiny_clip_config();
  const std::unique_ptr<Model> made = random_model(c.to_json(), 9, "test config");
  EXPECT_EQ(made->parameters(), ClipVisionModel(c, random_clip_vision_weights(c, 9, true)).parameters());
  // Without its projection: the same weights, less visual_projection.
  const std::unique_ptr<Model> plain = made->without_projection();
  EXPECT_EQ(plain->parameters(), ClipVisionModel(c, random_clip_vision_weights(c, 9, false)).parameters());
  EXPECT_EQ(plain->parameter_layout().find("visual_projection.weight"), nullptr);
  nlohmann::json no_projection = c.to_json();
  no_projection["architectures"] = {"CLIPVisionModel"};
  EXPECT_EQ(random_model(no_projection, 9, "test config")->parameters(), plain->parameters());
  // A decoder is not made at random; a config without a model_type says so.
  const std::string decoder = input_error_of([&] { (void)random_model(tiny_config("llama"), 1, "test config"); });
  EXPECT_EQ(decoder, "test config: model.model_type: 'llama' is not an architecture amalgam makes and trains");
  EXPECT_NE(input_error_of([&] {
              (void)random_model(nlohmann::json::object(), 1, "test config");
            }).find("no string 'model_type'"),
            std::string::npos);
}

TEST(ModelFamilies, ADecoderMapsItsWeightsAndSaysSoWhenAskedForThemInMemory) {
  TempDir dir;
  write_random_decoder(dir.path() / "a", tiny_config("llama"), DType::F32, 1);
  const std::unique_ptr<Model> model = open_model(dir.path() / "a");
  EXPECT_FALSE(model->holds_parameters());
  const std::string why = input_error_of([&] { (void)model->parameters(); });
  EXPECT_NE(why.find("a llama model maps its weights from its checkpoint"), std::string::npos) << why;
  EXPECT_NE(input_error_of([&] { model->save(dir.path() / "b", DType::F32, false); }).find("maps its weights"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(dir.path() / "b"));
  const std::string untrainable = input_error_of([&] { (void)train::make_train_graph(*model); });
  EXPECT_EQ(untrainable, "training: amalgam has no training graph for a llama model (it trains clip_vision_model)");
}

TEST(ModelFamilies, AnUnknownOrMissingModelTypeIsAnInputErrorNamingConfigJson) {
  TempDir dir;
  write_bytes(dir.path() / "config.json", R"({"model_type": "mamba"})");
  const std::string unknown = input_error_of([&] { (void)open_model(dir.path()); });
  EXPECT_NE(unknown.find("config.json"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("model_type 'mamba' is not an architecture amalgam runs"), std::string::npos) << unknown;
  write_bytes(dir.path() / "config.json", R"({"hidden_size": 8})");
  const std::string missing = input_error_of([&] { (void)open_model(dir.path()); });
  EXPECT_NE(missing.find("no string 'model_type'"), std::string::npos) << missing;
  fs::create_directories(dir.path() / "empty");
  EXPECT_NE(input_error_of([&] { (void)open_model(dir.path() / "empty"); }).find("no config.json"), std::string::npos);
}

}  // namespace
}  // namespace amalgam::testing
