// `zoo build` on a reduced configuration: every artifact is written, the accuracies in
// zoo.json are what an independent `amalgam eval` of the saved files reports, a second build
// with the same options is a cache hit, other options need --force, the build is
// deterministic, and small tasks get the epochs that make up the fine-tunes' image floor.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "eval/zoo_build.h"
#include "io/json_file.h"
#include "test_util.h"
#include "zoo_fixtures.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

ZooBuildOptions tiny_zoo() { return testing::tiny_zoo_options(); }

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

}  // namespace
}  // namespace amalgam
