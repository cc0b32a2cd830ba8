// `zoo build` on a reduced configuration: every artifact is written, the accuracies in
// zoo.json are what an independent `amalgam eval` of the saved files reports, a second build
// with the same options is a cache hit, other options need --force, the build is
// deterministic, and small tasks get the epochs that make up the fine-tunes' image floor.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"
#include "model/classifier_head.h"
#include "test_util.h"
#include "zoo/build.h"
#include "zoo_fixtures.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

ZooBuildOptions tiny_zoo() {
  return testing::tiny_zoo_options();
}

TEST(ZooBuild, WritesEverythingAndZooJsonMatchesEval) {
  TempDir tmp;
  const auto zoo = build_zoo(tmp / "zoo", tiny_zoo(), false);
  const fs::path dir = tmp / "zoo";
  EXPECT_TRUE(fs::exists(dir / "zoo.json"));
  EXPECT_TRUE(fs::exists(dir / "base/config.json"));
  EXPECT_TRUE(fs::exists(dir / "base/preprocessor_config.json"));
  ASSERT_EQ(zoo["tasks"].size(), zoo_task_names().size());
  for (const auto& name : zoo_task_names()) {
    EXPECT_TRUE(fs::exists(dir / "data" / name / "task.json")) << name;
    EXPECT_TRUE(fs::exists(dir / "heads" / (name + ".safetensors"))) << name;
    EXPECT_TRUE(fs::exists(dir / "finetuned" / name / "model.safetensors")) << name;
  }
  // Two tasks re-evaluated from the files by the CLI, in another process.
  for (size_t i : {size_t{0}, size_t{5}}) {
    const auto& entry = zoo["tasks"][i];
    const std::string name = entry["task"].get<std::string>();
    for (const char* model : {"base", "finetuned"}) {
      const fs::path ckpt = std::string(model) == "base" ? dir / "base" : dir / "finetuned" / name;
      const auto r =
          testing::run_amalgam("eval " + ckpt.string() + " --task " + (dir / "data" / name).string() + " --head " +
                               (dir / "heads" / (name + ".safetensors")).string() + " --batch-size 256 --json -q");
      ASSERT_EQ(r.code, 0) << r.err;
      const double acc = nlohmann::json::parse(r.out)["results"][0]["accuracy"].get<double>();
      const std::string key = std::string(model) == "base" ? "base_probe_test" : "finetuned_test";
      EXPECT_DOUBLE_EQ(acc, entry[key].get<double>()) << name << " " << model;
    }
  }
  // The fine-tunes moved away from the base.
  EXPECT_NE(testing::read_bytes(dir / "base/model.safetensors"),
            testing::read_bytes(dir / "finetuned" / zoo_task_names()[0] / "model.safetensors"));
}

TEST(ZooBuild, CachedDeterministicAndRefusesOtherOptions) {
  TempDir tmp;
  const ZooBuildOptions o = tiny_zoo();
  build_zoo(tmp / "a", o, false);
  const auto stamp = fs::last_write_time(tmp / "a/zoo.json");
  const auto again = build_zoo(tmp / "a", o, false);  // a cache hit: nothing is rewritten
  EXPECT_EQ(fs::last_write_time(tmp / "a/zoo.json"), stamp);
  EXPECT_EQ(nlohmann::json(again["options"]), nlohmann::json(o.to_json()));

  build_zoo(tmp / "b", o, false);
  for (const std::string f : {"base/model.safetensors", "heads/mnist.safetensors", "finetuned/count/model.safetensors"})
    EXPECT_EQ(testing::read_bytes(tmp / "a" / f), testing::read_bytes(tmp / "b" / f)) << f;

  ZooBuildOptions other = o;
  other.finetune.seed += 1;
  EXPECT_THROW(build_zoo(tmp / "a", other, false), InputError);
}

// A fine-tune sees at least finetune_min_images images: a task with fewer train images gets
// ceil(floor / n) epochs where that is more than the configured one.
TEST(ZooBuild, SmallTasksGetMoreEpochsUpToTheImageFloor) {
  TempDir tmp;
  ZooBuildOptions o = tiny_zoo();
  o.finetune.epochs = 1;
  o.finetune_min_images = 300;
  const auto zoo = build_zoo(tmp / "zoo", o, false);
  bool some_task_got_more = false;
  for (const auto& entry : zoo["tasks"]) {
    const int64_t n = entry["train_examples_used"].get<int64_t>();
    int64_t expected = 1;
    while (expected * n < 300) ++expected;
    EXPECT_EQ(entry["finetune_epochs"].get<int64_t>(), expected) << entry["task"];
    some_task_got_more = some_task_got_more || expected > 1;
  }
  EXPECT_TRUE(some_task_got_more);
  EXPECT_EQ(zoo["options"]["finetune_min_images"].get<int64_t>(), 300);
}

// With zero-shot-like heads: heads/ holds class prototypes, probes/ the linear probes; the
// base's scores through each are what `amalgam eval` reports, and the regime's simple average
// is what `amalgam merge` (linear) and `amalgam eval` give, in other processes.
TEST(ZooBuild, PrototypeHeadsProbeCeilingAndTheRegimeMatchMergeAndEval) {
  TempDir tmp;
  ZooBuildOptions o = tiny_zoo();
  o.heads = ZooHeads::Prototype;
  const auto zoo = build_zoo(tmp / "zoo", o, false);
  const fs::path dir = tmp / "zoo";
  const auto& names = zoo_task_names();
  for (const auto& name : names) {
    const ClassifierHead head = ClassifierHead::load(dir / "heads" / (name + ".safetensors"));
    EXPECT_TRUE(head.normalize_features) << name;
    EXPECT_TRUE(head.bias.empty()) << name;
    EXPECT_FALSE(ClassifierHead::load(dir / "probes" / (name + ".safetensors")).bias.empty()) << name;
  }
  auto eval = [&](const fs::path& model, const std::string& task, const std::string& heads) {
    const auto r = testing::run_amalgam("eval " + model.string() + " --task " + (dir / "data" / task).string() +
                                        " --head " + (dir / heads / (task + ".safetensors")).string() + " --json -q");
    EXPECT_EQ(r.code, 0) << r.err;
    return nlohmann::json::parse(r.out)["results"][0]["accuracy"].get<double>();
  };
  std::string config = "merge_method: linear\nmodels:\n";
  for (const auto& name : names)
    config += "  - model: " + (dir / "finetuned" / name).string() + "\n    parameters: {weight: 1.0}\n";
  testing::write_bytes(tmp / "average.yaml", config);
  const auto merged = testing::run_amalgam("merge " + (tmp / "average.yaml").string() + " -o " +
                                           (tmp / "average").string() + " --quiet");
  ASSERT_EQ(merged.code, 0) << merged.err;

  const auto& regime = zoo["regime"];
  ASSERT_EQ(regime["tasks"].size(), names.size());
  double average_sum = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const auto& entry = zoo["tasks"][i];
    const auto& row = regime["tasks"][i];
    EXPECT_DOUBLE_EQ(entry["base_test"].get<double>(), eval(dir / "base", names[i], "heads")) << names[i];
    EXPECT_DOUBLE_EQ(entry["base_probe_test"].get<double>(), eval(dir / "base", names[i], "probes")) << names[i];
    EXPECT_DOUBLE_EQ(row["base"].get<double>(), entry["base_test"].get<double>()) << names[i];
    EXPECT_DOUBLE_EQ(row["probe_ceiling"].get<double>(), entry["base_probe_test"].get<double>()) << names[i];
    EXPECT_DOUBLE_EQ(row["finetuned"].get<double>(), entry["finetuned_test"].get<double>()) << names[i];
    // The merge engine sums in another order: at most one of the 60 test images may flip.
    const double merged_accuracy = eval(tmp / "average", names[i], "heads");
    EXPECT_NEAR(row["average"].get<double>(), merged_accuracy, 1.0 / 60 + 1e-12) << names[i];
    average_sum += row["average"].get<double>();
  }
  const double base = regime["mean"]["base"], tuned = regime["mean"]["finetuned"];
  EXPECT_NEAR(regime["mean"]["average"].get<double>(), average_sum / static_cast<double>(names.size()), 1e-12);
  EXPECT_NEAR(regime["gap"].get<double>(), tuned - base, 1e-12);
  EXPECT_NEAR(regime["average_recovery"].get<double>(),
              (regime["mean"]["average"].get<double>() - base) / (tuned - base), 1e-12);
  // 28 pairs, each disagreement a share of the pair's images.
  const auto& pairs = regime["disentanglement"]["pairs"];
  ASSERT_EQ(pairs.size(), names.size() * (names.size() - 1) / 2);
  for (const auto& pair : pairs) {
    EXPECT_GE(pair["on_first"].get<double>(), 0.0);
    EXPECT_LE(pair["on_first"].get<double>(), 1.0);
  }
}

// A build that reuses another zoo's data and base gives the same bits as one that makes them
// again; a zoo built with another model cannot lend its base.
TEST(ZooBuild, ReusedBaseGivesTheSameBitsAndMustMatchTheOptions) {
  TempDir tmp;
  const ZooBuildOptions o = tiny_zoo();
  build_zoo(tmp / "first", o, false);
  ZooBuildOptions other = o;
  other.finetune.seed += 7;
  build_zoo(tmp / "scratch", other, false);
  other.reuse_base_from = tmp / "first";
  const auto reused = build_zoo(tmp / "reused", other, false);
  EXPECT_EQ(reused["pretrain"]["reused_from"].get<std::string>(), (tmp / "first").string());
  for (const std::string f : {"base/model.safetensors", "heads/mnist.safetensors", "finetuned/count/model.safetensors",
                              "data/letters/train.safetensors"})
    EXPECT_EQ(testing::read_bytes(tmp / "scratch" / f), testing::read_bytes(tmp / "reused" / f)) << f;

  ZooBuildOptions wider = other;
  wider.model["hidden_size"] = wider.model["hidden_size"].get<int64_t>() + 8;
  try {
    build_zoo(tmp / "wider", wider, false);
    ADD_FAILURE() << "a base of another width was reused";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("options.model differs"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(tmp / "wider"));
}

// The CLI's recipe levers land in the options zoo.json records; a lever given twice takes its
// last value (a study's common options first, each lever's own after them).
TEST(ZooBuildCli, LeversReachTheOptionsAndTheLastValueWins) {
  TempDir tmp;
  const std::string data_dir = testing::small_zoo_options().data.data_dir.string();
  const auto r = testing::run_amalgam(
      "zoo build --small -o " + (tmp / "zoo").string() + " --data-dir " + data_dir +
      " --width 64 --layers 1 --heads prototype --logit-scale 20 --prototype-per-class 4 --pretrain-epochs 1"
      " --finetune-epochs 3 --finetune-epochs 1 --finetune-min-images 100 -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto options = read_json_file(tmp / "zoo/zoo.json")["options"];
  EXPECT_EQ(options["model"]["hidden_size"], 64);
  EXPECT_EQ(options["model"]["intermediate_size"], 256);
  EXPECT_EQ(options["model"]["num_attention_heads"], 2);
  EXPECT_EQ(options["model"]["num_hidden_layers"], 1);
  EXPECT_EQ(options["heads"], "prototype");
  EXPECT_EQ(options["prototype"]["logit_scale"], 20.0);
  EXPECT_EQ(options["prototype"]["per_class"], 4);
  EXPECT_EQ(options["pretrain"]["epochs"], 1);
  EXPECT_EQ(options["finetune"]["epochs"], 1);
  EXPECT_EQ(options["finetune_min_images"], 100);
  EXPECT_FALSE(options.contains("domain_pretrain"));  // off: no key, so older zoos stay cached
}

}  // namespace
}  // namespace amalgam
