// End-to-end tests of the amalgam executable: exit codes, messages, `inspect`.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::run_amalgam;
using testing::TempDir;
using testing::write_bytes;

TEST(Cli, VersionAndHelp) {
  const auto v = run_amalgam("--version");
  EXPECT_EQ(v.code, 0);
  EXPECT_NE(v.out.find("amalgam " AMALGAM_VERSION), std::string::npos);
  const auto h = run_amalgam("--help");
  EXPECT_EQ(h.code, 0);
  EXPECT_NE(h.out.find("inspect"), std::string::npos);
  const auto ih = run_amalgam("inspect --help");
  EXPECT_EQ(ih.code, 0);
  EXPECT_NE(ih.out.find("--json"), std::string::npos);
}

TEST(Cli, BadArgumentsExitTwo) {
  EXPECT_EQ(run_amalgam("").code, 2);
  EXPECT_EQ(run_amalgam("no-such-command").code, 2);
  EXPECT_EQ(run_amalgam("inspect").code, 2);
}

TEST(Cli, InspectShardedCheckpointAsJson) {
  TempDir tmp;
  const fs::path ck = tmp / "ck";
  fs::create_directories(ck);
  {
    CheckpointWriter w(ck, {{"x.weight", DType::BF16, {4, 8}}, {"x.bias", DType::F32, {4}}, {"y", DType::I64, {3}}},
                       64);
    w.write("x.weight", Tensor::zeros(DType::BF16, {4, 8}));
    w.write("x.bias", Tensor::zeros(DType::F32, {4}));
    w.write("y", Tensor::zeros(DType::I64, {3}));
    w.finish();
  }
  write_bytes(ck / "config.json", R"({"model_type":"clip_vision_model","hidden_size":8})");
  const auto r = run_amalgam("inspect --json " + ck.string());
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["sharded"].get<bool>());
  EXPECT_EQ(j["shards"].size(), 2u);
  EXPECT_EQ(j["total_tensors"], 3);
  EXPECT_EQ(j["total_parameters"], 32 + 4 + 3);
  EXPECT_EQ(j["total_bytes"], 64 + 16 + 24);
  EXPECT_EQ(j["parameters_by_dtype"]["BF16"], 32);
  EXPECT_EQ(j["tensors"][0]["name"], "x.weight");
  EXPECT_EQ(j["tensors"][0]["shape"], nlohmann::json::parse("[4,8]"));
  EXPECT_EQ(j["config"]["hidden_size"], 8);

  const auto table = run_amalgam("inspect " + ck.string());
  ASSERT_EQ(table.code, 0);
  EXPECT_NE(table.out.find("3 tensors, 39 parameters"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("in 2 shards"), std::string::npos);
  EXPECT_NE(table.out.find("x.weight"), std::string::npos);
}

TEST(Cli, InspectSingleFile) {
  TempDir tmp;
  save_safetensors(tmp / "m.safetensors", {{"w", Tensor::zeros(DType::F16, {2, 2})}});
  const auto r = run_amalgam("inspect " + (tmp / "m.safetensors").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("1 tensors, 4 parameters"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("format = pt"), std::string::npos);
}

TEST(Cli, CorruptFileIsOneLineExitTwo) {
  TempDir tmp;
  write_bytes(tmp / "bad.safetensors",
              testing::raw_safetensors(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", "short"));
  const auto r = run_amalgam("inspect " + (tmp / "bad.safetensors").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err.rfind("amalgam: error: " + (tmp / "bad.safetensors").string() + ": tensor 'w':", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
  EXPECT_TRUE(r.out.empty());
}

}  // namespace
}  // namespace amalgam

namespace amalgam {
namespace {

TEST(CliInterrupt, CtrlCLeavesNoPartialOutput) {
  testing::TempDir tmp;
  const auto gen = testing::run_amalgam("generate -o " + (tmp / "fam").string() +
                                        " --models 2 --layers 6 --hidden 384 --intermediate 1024 --vocab 2000");
  ASSERT_EQ(gen.code, 0) << gen.err;
  testing::write_bytes(tmp / "tsv.yaml", "merge_method: tsv\nbase_model: " + (tmp / "fam/base").string() +
                                             "\nmodels:\n  - model: " + (tmp / "fam/model_1").string() +
                                             "\n  - model: " + (tmp / "fam/model_2").string() + "\n");
  const fs::path out = tmp / "out";
  testing::make_amalgam_output(out, {{"previous.txt", "keep me"}});
  // TSV's SVDs take long enough that SIGINT arrives mid-merge. The signal waits for the
  // staging directory, made after amalgam installs its handler: a loaded machine (a sanitizer
  // build beside other jobs) can take longer than any fixed sleep to get there.
  const pid_t pid =
      testing::spawn_amalgam({"merge", (tmp / "tsv.yaml").string(), "-o", out.string(), "--force", "-q"}, tmp / "err");
  const bool started = testing::wait_until(pid, [&] { return !testing::staging_directories(out, pid).empty(); });
  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(started) << "the merge never staged its output (or finished first)";
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130)
      << "the merge finished before the signal; make it slower. stderr: " << testing::read_bytes(tmp / "err");
  EXPECT_NE(testing::read_bytes(tmp / "err").find("interrupted"), std::string::npos);
  EXPECT_EQ(testing::read_bytes(out / "previous.txt"), "keep me");  // the old output is intact
  for (const auto& e : fs::directory_iterator(tmp.path()))
    EXPECT_EQ(e.path().filename().string().find(".out.amalgam-tmp"), std::string::npos) << e.path();
}

}  // namespace
}  // namespace amalgam
