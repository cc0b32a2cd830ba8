// mergekit's slices (merge/plan.h) through run_merge on tiny Llama checkpoints: a frankenmerge
// takes layers whole and renumbers them, tensors before the layers come from the first slice
// and after them from the last; a slice's layer i of n has t = i / (n - 1); settings resolve
// source > slice > module > global; the values checked against a direct computation in double.
// mergekit's modules: a vision-language checkpoint merged module by module.
#include <gtest/gtest.h>

#include "decoder_fixtures.h"
#include "io/checkpoint.h"
#include "merge/config.h"
#include "merge/engine.h"
#include "model/model.h"
#include "test_util.h"

namespace amalgam::testing {
namespace {

// Two 3-layer Llamas of the same shapes, a and b, stored in F32.
struct TwoLlamas {
  TempDir dir;
  Weights a, b;
  TwoLlamas() {
    Json c = tiny_config("llama");
    c["num_hidden_layers"] = 3;
    a = write_random_decoder(dir.path() / "a", c, DType::F32, 11);
    b = write_random_decoder(dir.path() / "b", c, DType::F32, 12);
  }
  std::string path(const char* model) const { return (dir.path() / model).string(); }
  fs::path out() const { return dir.path() / "out"; }

  // Runs the config ($A and $B replaced by the checkpoints' paths).
  MergeSummary merge(std::string yaml) const {
    for (const auto& [from, to] : {std::pair{"$A", path("a")}, std::pair{"$B", path("b")}})
      for (size_t at = yaml.find(from); at != std::string::npos; at = yaml.find(from, at + to.size()))
        yaml.replace(at, 2, to);
    write_bytes(dir.path() / "merge.yaml", yaml);
    MergeOptions o;
    o.output = out();
    o.quiet = true;
    return run_merge(load_merge_config(dir.path() / "merge.yaml"), o);
  }
};

// Every tensor of a checkpoint in double.
Weights read_checkpoint_values(const fs::path& dir) {
  const CheckpointReader r(dir);
  Weights w;
  for (const std::string& name : r.names()) {
    const Tensor t = r.tensor(name).to(DType::F64);
    w[name].assign(t.data<double>().begin(), t.data<double>().end());
  }
  return w;
}

Json read_json(const fs::path& file) {
  return Json::parse(read_bytes(file));
}

std::string layer(int64_t i, const std::string& rest) {
  return "model.layers." + std::to_string(i) + "." + rest;
}

// The tensor names of layer 0 after its prefix ("mlp.up_proj.weight", ...).
std::vector<std::string> layer_parts(const Weights& w) {
  std::vector<std::string> parts;
  for (const auto& [name, values] : w)
    if (name.starts_with("model.layers.0.")) parts.push_back(name.substr(15));
  return parts;
}

// The input error a merge fails with, having written nothing at `out`.
std::string refused(const std::function<void()>& merge, const fs::path& out) {
  const std::string e = input_error_of(merge);
  EXPECT_FALSE(fs::exists(out)) << e;
  return e;
}

TEST(Slices, AFrankenmergeTakesLayersWholeAndRenumbersThem) {
  const TwoLlamas m;
  m.merge(R"(
merge_method: passthrough
slices:
  - sources: [{model: $A, layer_range: [0, 2]}]
  - sources: [{model: $B, layer_range: [1, 3]}]
)");
  const Weights out = read_checkpoint_values(m.out());
  const auto parts = layer_parts(m.a);
  ASSERT_EQ(parts.size(), 9U);  // two norms, q, k, v, o, gate, up, down
  const std::pair<const Weights*, int64_t> from[] = {{&m.a, 0}, {&m.a, 1}, {&m.b, 1}, {&m.b, 2}};
  for (int64_t l = 0; l < 4; ++l)
    for (const std::string& part : parts)
      EXPECT_EQ(out.at(layer(l, part)), from[l].first->at(layer(from[l].second, part))) << layer(l, part);
  // Before the layers from the first slice, after them from the last.
  EXPECT_EQ(out.at("model.embed_tokens.weight"), m.a.at("model.embed_tokens.weight"));
  EXPECT_EQ(out.at("model.norm.weight"), m.b.at("model.norm.weight"));
  EXPECT_EQ(out.at("lm_head.weight"), m.b.at("lm_head.weight"));
  EXPECT_EQ(out.size(), 3 + 4 * parts.size());

  // config.json says four layers, and the output runs as a 4-layer Llama.
  EXPECT_EQ(read_json(m.out() / "config.json")["num_hidden_layers"], 4);
  const std::unique_ptr<Model> model = open_model(m.out());
  EXPECT_EQ(model->num_layers(), 4);
  const std::vector<std::vector<int32_t>> tokens = {{1, 2, 3}};
  EXPECT_EQ(model->forward(ModelInput{{}, 0, tokens}).rows, 3);
}

TEST(Slices, LinearSlicesWeighSourceThenSliceThenGlobalAcrossEachSlicesLayers) {
  const TwoLlamas m;
  m.merge(R"(
merge_method: linear
parameters: {weight: 1}
slices:
  - sources:
      - {model: $A, layer_range: [0, 3], parameters: {weight: [1, 3]}}
      - {model: $B, layer_range: [0, 3]}
  - sources:
      - {model: $A, layer_range: [2, 3]}
      - {model: $B, layer_range: [0, 1]}
    parameters: {weight: 4}
)");
  const Weights out = read_checkpoint_values(m.out());
  // out = (wa a + wb b) / (wa + wb), in double, against the F32 output.
  auto expect = [&](const std::string& out_name, const std::string& a_name, const std::string& b_name, double wa,
                    double wb) {
    const auto &x = m.a.at(a_name), &y = m.b.at(b_name), &got = out.at(out_name);
    ASSERT_EQ(got.size(), x.size()) << out_name;
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_NEAR(got[i], (wa * x[i] + wb * y[i]) / (wa + wb), 1e-6 * (1 + std::abs(x[i]) + std::abs(y[i])))
          << out_name << "[" << i << "]";
  };
  for (const std::string& part : layer_parts(m.a)) {
    // Slice 0: a's gradient [1, 3] at t = 0, 0.5, 1; b has none of its own: the global 1.
    for (int64_t l = 0; l < 3; ++l) expect(layer(l, part), layer(l, part), layer(l, part), 1.0 + l, 1.0);
    // Slice 1: one layer (t = 1); neither source has a weight: the slice's 4 for both.
    expect(layer(3, part), layer(2, part), layer(0, part), 4.0, 4.0);
  }
  // Before the layers: slice 0's settings at t = 0; after them: slice 1's.
  expect("model.embed_tokens.weight", "model.embed_tokens.weight", "model.embed_tokens.weight", 1.0, 1.0);
  expect("lm_head.weight", "lm_head.weight", "lm_head.weight", 4.0, 4.0);
  EXPECT_EQ(read_json(m.out() / "config.json")["num_hidden_layers"], 4);

  // The recorded config runs again to the same bits.
  const auto first = read_bytes(m.out() / "model.safetensors");
  MergeOptions o;
  o.output = m.dir.path() / "again";
  o.quiet = true;
  run_merge(load_merge_config(m.out() / "amalgam_config.yaml"), o);
  EXPECT_EQ(read_bytes(m.dir.path() / "again" / "model.safetensors"), first);
}

// mergekit's examples/gradient-slerp.yml in small: the base among the sources, t a gradient
// across the slice: its first layer is the base's bits (t = 0), its last the other model's.
TEST(Slices, AGradientSlerpRunsFromTheBaseToTheOtherModelAcrossTheSlice) {
  const TwoLlamas m;
  m.merge(R"(
merge_method: slerp
base_model: $A
slices:
  - sources:
      - {model: $A, layer_range: [0, 3]}
      - {model: $B, layer_range: [0, 3]}
parameters:
  t: [0, 1]
)");
  const Weights out = read_checkpoint_values(m.out());
  for (const std::string& part : layer_parts(m.a)) {
    EXPECT_EQ(out.at(layer(0, part)), m.a.at(layer(0, part))) << part;
    const auto &got = out.at(layer(2, part)), &b = m.b.at(layer(2, part));
    for (size_t i = 0; i < b.size(); ++i) ASSERT_NEAR(got[i], b[i], 1e-6 * (1 + std::abs(b[i]))) << part;
    EXPECT_NE(out.at(layer(1, part)), m.a.at(layer(1, part))) << part;  // t = 0.5: between them
  }
  EXPECT_EQ(out.at("lm_head.weight"), m.a.at("lm_head.weight"));  // outside the layers: t = 0
}

TEST(Slices, ErrorsNameTheKeyAndWriteNothing) {
  const TwoLlamas m;
  auto error = [&](const std::string& yaml) { return refused([&] { m.merge(yaml); }, m.out()); };
  EXPECT_NE(error("merge_method: passthrough\nslices: [{sources: [{model: $A, layer_range: [1, 5]}]}]\n")
                .find("slices[0].sources[0].layer_range: [1, 5] goes past the model's 3 layers"),
            std::string::npos);
  EXPECT_NE(error("merge_method: linear\nslices: [{sources: [{model: $A, layer_range: [0, 2]}, {model: $B, "
                  "layer_range: [0, 3]}]}]\n")
                .find("slices[0]: every source must give the same number of layers (slices[0].sources[0] gives "
                      "2, slices[0].sources[1] 3)"),
            std::string::npos);
  EXPECT_NE(error("merge_method: task_arithmetic\nslices: [{sources: [{model: $A, layer_range: [0, 2]}, {model: $B, "
                  "layer_range: [0, 2]}]}]\n")
                .find("slices[0]: task_arithmetic needs the base model among the slice's sources"),
            std::string::npos);
  EXPECT_NE(error("merge_method: passthrough\nslices: [{sources: [{model: $A, layer_range: [0, 2]}, {model: $B, "
                  "layer_range: [0, 2]}]}]\n")
                .find("slices[0]: passthrough merges 1 model(s), the slice has 2"),
            std::string::npos);
  EXPECT_NE(error("merge_method: linear\nslices: [{sources: [{model: $A, layer_range: [0, 2], parameters: {t: 1}}]}]\n")
                .find("slices[0].sources[0].parameters.t: not a parameter of linear"),
            std::string::npos);
  EXPECT_NE(error("merge_method: passthrough\nslices: [{sources: [{model: $A, layer_range: [0, 1]}]}, {sources: "
                  "[{model: nowhere, layer_range: [0, 1]}]}]\n")
                .find("slices[1].sources[0].model: 'nowhere' does not exist"),
            std::string::npos);
  EXPECT_NE(error("merge_method: regmean\nslices: [{sources: [{model: $A, layer_range: [0, 2]}]}]\n")
                .find("slices: regmean measures whole models' statistics"),
            std::string::npos);
}

// A Mistral3-style vision-language checkpoint: a 4-layer text decoder, a projector and a
// 3-layer vision tower, under mergekit's weight prefixes for Mistral3ForConditionalGeneration.
struct TwoVisionLanguageModels {
  TempDir dir;
  Weights a, b;
  TwoVisionLanguageModels() {
    const Json c = {{"architectures", {"Mistral3ForConditionalGeneration"}},
                    {"model_type", "mistral3"},
                    {"text_config", {{"num_hidden_layers", 4}, {"hidden_size", 4}}},
                    {"vision_config", {{"num_hidden_layers", 3}}}};
    std::vector<std::pair<std::string, Shape>> shapes = {{"language_model.model.embed_tokens.weight", {10, 4}},
                                                         {"language_model.model.norm.weight", {4}},
                                                         {"language_model.lm_head.weight", {10, 4}},
                                                         {"multi_modal_projector.linear_1.weight", {4, 6}},
                                                         {"vision_tower.patch_conv.weight", {6, 3}},
                                                         {"vision_tower.ln_pre.weight", {6}}};
    for (int l = 0; l < 4; ++l) {
      shapes.push_back({text_layer(l, "self_attn.q_proj.weight"), {4, 4}});
      shapes.push_back({text_layer(l, "input_layernorm.weight"), {4}});
    }
    for (int l = 0; l < 3; ++l) shapes.push_back({vision_layer(l), {6, 6}});
    const auto init = [](const std::string&) { return std::pair{0.0f, 1.0f}; };
    a = write_random_checkpoint(dir.path() / "a", c, shapes, DType::F32, 21, init);
    b = write_random_checkpoint(dir.path() / "b", c, shapes, DType::F32, 22, init);
  }
  static std::string text_layer(int64_t l, const std::string& rest) {
    return "language_model.model.layers." + std::to_string(l) + "." + rest;
  }
  static std::string vision_layer(int64_t l) {
    return "vision_tower.transformer.layers." + std::to_string(l) + ".attention.q_proj.weight";
  }
  fs::path out() const { return dir.path() / "out"; }
  void merge(std::string yaml, const fs::path& out) const {
    for (const auto& [from, to] : {std::pair{"$A", dir.path() / "a"}, std::pair{"$B", dir.path() / "b"}})
      for (size_t at = yaml.find(from); at != std::string::npos; at = yaml.find(from, at + to.string().size()))
        yaml.replace(at, 2, to.string());
    write_bytes(dir.path() / "merge.yaml", yaml);
    MergeOptions o;
    o.output = out;
    o.quiet = true;
    run_merge(load_merge_config(dir.path() / "merge.yaml"), o);
  }
};

TEST(Modules, AVisionLanguageModelMergesEachModuleFromItsOwnModelsOrSlices) {
  const TwoVisionLanguageModels m;
  m.merge(R"(
merge_method: linear
parameters: {weight: 1}
modules:
  text_decoder:
    slices:
      - sources: [{model: $A, layer_range: [0, 3]}]
      - sources: [{model: $B, layer_range: [2, 4]}]
  vision_tower:
    models:
      - model: $A
      - model: $B
        parameters: {weight: 3}
    parameters: {weight: 0.5}
  multi_modal_projector:
    models: [$A, $B]
)",
          m.out());
  const Weights out = read_checkpoint_values(m.out());
  // The text decoder: a frankenmerge of a's layers 0-2 and b's 2-3, renumbered 0-4; its
  // embeddings from the first slice (a), its norm and head from the last (b).
  const std::pair<const Weights*, int64_t> from[] = {{&m.a, 0}, {&m.a, 1}, {&m.a, 2}, {&m.b, 2}, {&m.b, 3}};
  for (int64_t l = 0; l < 5; ++l)
    for (const char* part : {"self_attn.q_proj.weight", "input_layernorm.weight"})
      EXPECT_EQ(out.at(m.text_layer(l, part)), from[l].first->at(m.text_layer(from[l].second, part)));
  EXPECT_EQ(out.at("language_model.model.embed_tokens.weight"), m.a.at("language_model.model.embed_tokens.weight"));
  EXPECT_EQ(out.at("language_model.model.norm.weight"), m.b.at("language_model.model.norm.weight"));
  EXPECT_EQ(out.at("language_model.lm_head.weight"), m.b.at("language_model.lm_head.weight"));
  // The vision tower: a at its module's weight 0.5, b at its own 3; the projector at the
  // global 1 each. (wa a + wb b) / (wa + wb) in double against the F32 output.
  auto expect_mean = [&](const std::string& name, double wa, double wb) {
    const auto &x = m.a.at(name), &y = m.b.at(name), &got = out.at(name);
    ASSERT_EQ(got.size(), x.size()) << name;
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_NEAR(got[i], (wa * x[i] + wb * y[i]) / (wa + wb), 1e-6 * (1 + std::abs(x[i]) + std::abs(y[i]))) << name;
  };
  for (int64_t l = 0; l < 3; ++l) expect_mean(m.vision_layer(l), 0.5, 3);
  expect_mean("vision_tower.patch_conv.weight", 0.5, 3);
  expect_mean("vision_tower.ln_pre.weight", 0.5, 3);
  expect_mean("multi_modal_projector.linear_1.weight", 1, 1);
  EXPECT_EQ(out.size(), 3 + 2 * 5 + 1 + 2 + 3U);

  // config.json counts each module's layers under its own key.
  const Json config = read_json(m.out() / "config.json");
  EXPECT_EQ(config["text_config"]["num_hidden_layers"], 5);
  EXPECT_EQ(config["text_config"]["hidden_size"], 4);
  EXPECT_EQ(config["vision_config"]["num_hidden_layers"], 3);
  EXPECT_FALSE(config.contains("num_hidden_layers"));

  // The recorded config (modules written back) runs again to the same bits.
  m.merge(read_bytes(m.out() / "amalgam_config.yaml"), m.dir.path() / "again");
  EXPECT_EQ(read_bytes(m.dir.path() / "again" / "model.safetensors"), read_bytes(m.out() / "model.safetensors"));
}

// A one-module model's only module is mergekit's "default": modules: default: models: is the
// top-level models: merge, the base_model added to the module's models as mergekit adds it.
TEST(Modules, TheDefaultModuleOfAOneModuleModelIsTheWholeModel) {
  const TwoLlamas m;
  const auto merge_to = [&](const std::string& yaml, const char* out) {
    m.merge(yaml);
    fs::rename(m.out(), m.dir.path() / out);
    return read_bytes(m.dir.path() / out / "model.safetensors");
  };
  EXPECT_EQ(merge_to("merge_method: linear\nmodels: [{model: $A, parameters: {weight: 1}}, {model: $B, parameters: "
                     "{weight: 3}}]\n",
                     "top"),
            merge_to("merge_method: linear\nmodules:\n  default:\n    models: [{model: $A}, {model: $B, parameters: "
                     "{weight: 3}}]\n    parameters: {weight: 1}\n",
                     "module"));
  EXPECT_EQ(merge_to("merge_method: task_arithmetic\nbase_model: $A\nmodels: [{model: $B, parameters: {weight: "
                     "0.5}}]\n",
                     "top_base"),
            merge_to("merge_method: task_arithmetic\nbase_model: $A\nmodules: {default: {models: [{model: $B, "
                     "parameters: {weight: 0.5}}]}}\n",
                     "module_base"));
  EXPECT_EQ(read_json(m.dir.path() / "module_base" / "config.json")["num_hidden_layers"], 3);
}

TEST(Modules, ErrorsNameTheModuleAndWriteNothing) {
  const TwoVisionLanguageModels m;
  auto error = [&](const std::string& yaml) { return refused([&] { m.merge(yaml, m.out()); }, m.out()); };
  EXPECT_NE(error("merge_method: linear\nmodules: {vision: {models: [$A]}}\n")
                .find("modules.vision: " + (m.dir.path() / "a").string() +
                      " has no such module (its modules: text_decoder, multi_modal_projector, vision_tower)"),
            std::string::npos);
  EXPECT_NE(error("merge_method: passthrough\nslices: [{sources: [{model: $A, layer_range: [0, 2]}]}]\n")
                .find("has modules (text_decoder, multi_modal_projector, vision_tower); slices of it go under "
                      "modules: NAME: slices:"),
            std::string::npos);
  EXPECT_NE(error("merge_method: passthrough\nmodules: {text_decoder: {slices: [{sources: [{model: $A, layer_range: "
                  "[2, 5]}]}]}}\n")
                .find("modules.text_decoder.slices[0].sources[0].layer_range: [2, 5] goes past the model's 4 layers"),
            std::string::npos);
  EXPECT_NE(error("merge_method: linear\nmodules: {vision_tower: {models: [$A, $B], parameters: {t: 1}}}\n")
                .find("modules.vision_tower.parameters.t: not a parameter of linear"),
            std::string::npos);
  EXPECT_NE(error("merge_method: linear\nmodules: {vision_tower: {models: [$A, {model: $B, parameters: {t: 1}}]}}\n")
                .find("modules.vision_tower.models[1].parameters.t: not a parameter of linear"),
            std::string::npos);
  EXPECT_NE(error("merge_method: linear\nmodules: {vision_tower: {models: [$A], slices: [{sources: [{model: $A, "
                  "layer_range: [0, 1]}]}]}}\n")
                .find("modules.vision_tower: give either models or slices"),
            std::string::npos);
  EXPECT_NE(error("merge_method: linear\nmodels: [$A]\nmodules: {vision_tower: {models: [$A]}}\n")
                .find("give one of models, slices and modules"),
            std::string::npos);
  // A tensor under no module's prefix (a checkpoint saved with other names).
  write_random_checkpoint(m.dir.path() / "c", read_json(m.dir.path() / "a" / "config.json"),
                          {{"model.language_model.embed_tokens.weight", {2, 2}}}, DType::F32, 1,
                          [](const std::string&) {
                            return std::pair{0.0f, 1.0f};
                          });
  EXPECT_NE(error("merge_method: linear\nmodules: {text_decoder: {models: [" + (m.dir.path() / "c").string() + "]}}\n")
                .find("tensor 'model.language_model.embed_tokens.weight': belongs to none of the checkpoint's modules"),
            std::string::npos);
}

}  // namespace
}  // namespace amalgam::testing
