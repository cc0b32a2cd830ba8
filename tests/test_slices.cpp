// mergekit's slices (merge/plan.h) through run_merge on tiny Llama checkpoints: a frankenmerge
// takes layers whole and renumbers them, tensors before the layers come from the first slice
// and after them from the last; a slice's layer i of n has t = i / (n - 1); settings resolve
// source > slice > global; the values checked against a direct computation in double.
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
  auto error = [&](const std::string& yaml) {
    const std::string e = input_error_of([&] { m.merge(yaml); });
    EXPECT_FALSE(fs::exists(m.out())) << e;
    return e;
  };
  EXPECT_NE(error("merge_method: passthrough\nslices: [{sources: [{model: $A, layer_range: [1, 5]}]}]\n")
                .find("slices[0].sources[0].layer_range: [1, 5] goes past the model's 3 layers"),
            std::string::npos);
  EXPECT_NE(error("merge_method: linear\nslices: [{sources: [{model: $A, layer_range: [0, 2]}, {model: $B, "
                  "layer_range: [0, 3]}]}]\n")
                .find("slices[0]: every source must give the same number of layers (sources[0] gives 2, "
                      "sources[1] 3)"),
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

}  // namespace
}  // namespace amalgam::testing
