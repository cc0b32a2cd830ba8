// Checkpoint directories: sharded writing and reading, index validation, carried-over
// files, and atomic outputs.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_output.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;

Tensor filled(DType dtype, Shape shape, uint8_t seed) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  uint8_t v = seed;
  for (auto& b : t.mutable_bytes()) b = static_cast<std::byte>(v++);
  return t;
}

void write_checkpoint(const fs::path& dir, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      uint64_t max_shard) {
  fs::create_directories(dir);
  std::vector<TensorSpec> plan;
  for (const auto& [n, t] : tensors) plan.push_back({n, t.dtype(), t.shape()});
  CheckpointWriter w(dir, plan, max_shard);
  for (auto it = tensors.rbegin(); it != tensors.rend(); ++it) w.write(it->first, it->second);  // any order
  w.finish();
}

TEST(Checkpoint, ShardsGreedilyInPlanOrder) {
  TempDir tmp;
  // 40 + 40 fit in 80; 100 is alone (larger than the limit); 10 starts a new shard.
  const std::vector<std::pair<std::string, Tensor>> tensors = {{"a", filled(DType::U8, {40}, 1)},
                                                               {"b", filled(DType::U8, {40}, 2)},
                                                               {"c", filled(DType::BF16, {50}, 3)},
                                                               {"d", filled(DType::U8, {10}, 4)}};
  write_checkpoint(tmp / "ck", tensors, 80);
  EXPECT_TRUE(fs::exists(tmp / "ck/model-00001-of-00003.safetensors"));
  EXPECT_TRUE(fs::exists(tmp / "ck/model-00002-of-00003.safetensors"));
  EXPECT_TRUE(fs::exists(tmp / "ck/model-00003-of-00003.safetensors"));
  EXPECT_FALSE(fs::exists(tmp / "ck/model.safetensors"));
  const auto index = nlohmann::json::parse(read_bytes(tmp / "ck/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 190);
  EXPECT_EQ(index["weight_map"]["a"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["b"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["c"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["d"], "model-00003-of-00003.safetensors");

  CheckpointReader r(tmp / "ck");
  EXPECT_TRUE(r.sharded());
  EXPECT_EQ(r.names(), (std::vector<std::string>{"a", "b", "c", "d"}));
  for (const auto& [name, t] : tensors) {
    const Tensor back = r.tensor(name);
    EXPECT_EQ(back.dtype(), t.dtype());
    EXPECT_EQ(back.shape(), t.shape());
    EXPECT_EQ(std::memcmp(back.bytes().data(), t.bytes().data(), t.nbytes()), 0) << name;
  }
}

TEST(Checkpoint, OneShardIsModelSafetensorsWithoutIndex) {
  TempDir tmp;
  write_checkpoint(tmp / "ck", {{"w", filled(DType::F32, {2, 3}, 9)}}, kDefaultMaxShardBytes);
  EXPECT_TRUE(fs::exists(tmp / "ck/model.safetensors"));
  EXPECT_FALSE(fs::exists(tmp / "ck/model.safetensors.index.json"));
  CheckpointReader dir_reader(tmp / "ck");
  CheckpointReader file_reader(tmp / "ck/model.safetensors");
  EXPECT_FALSE(dir_reader.sharded());
  EXPECT_EQ(dir_reader.names(), file_reader.names());
  EXPECT_EQ(dir_reader.info("w").shape, (Shape{2, 3}));
}

TEST(Checkpoint, AuxiliaryFilesAreTheNonWeightFiles) {
  TempDir tmp;
  write_checkpoint(tmp / "ck", {{"w", filled(DType::F32, {2}, 0)}}, kDefaultMaxShardBytes);
  write_bytes(tmp / "ck/config.json", R"({"hidden_size": 4})");
  write_bytes(tmp / "ck/tokenizer.json", "{}");
  write_bytes(tmp / "ck/pytorch_model.bin", "weights");
  write_bytes(tmp / "ck/.hidden", "x");
  CheckpointReader r(tmp / "ck");
  ASSERT_TRUE(r.config().has_value());
  EXPECT_EQ((*r.config())["hidden_size"], 4);
  std::vector<std::string> names;
  for (const auto& f : r.auxiliary_files()) names.push_back(f.filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"config.json", "tokenizer.json"}));
  fs::create_directories(tmp / "out");
  copy_files_into(r.auxiliary_files(), tmp / "out");
  EXPECT_EQ(read_bytes(tmp / "out/tokenizer.json"), "{}");
}

struct BadIndex {
  const char* name;
  std::string index;
  const char* expected;
};

TEST(CheckpointMalformed, IndexProblemsAreNamed) {
  const std::vector<BadIndex> cases = {
      {"index not JSON", "{", "not valid JSON"},
      {"no weight_map", R"({"metadata":{}})", "no \"weight_map\" object"},
      {"empty weight_map", R"({"weight_map":{}})", "weight_map is empty"},
      {"shard value not a string", R"({"weight_map":{"a":1}})", "weight_map value is not a string"},
      {"missing shard file", R"({"weight_map":{"a":"model-00009-of-00009.safetensors"}})", "does not exist"},
      {"shard escaping the directory", R"({"weight_map":{"a":"../outside.safetensors"}})", "not a plain file name"},
      {"absolute shard path", R"({"weight_map":{"a":"/etc/passwd"}})", "not a plain file name"},
      {"tensor missing from its shard", R"({"weight_map":{"a":"s1.safetensors","zz":"s1.safetensors"}})",
       "listed in the index but missing"},
      {"tensor in a shard but not listed", R"({"weight_map":{"a":"s1.safetensors"}})",
       "not listed for it in the index"},
  };
  TempDir tmp;
  const fs::path ck = tmp / "ck";
  fs::create_directories(ck);
  save_safetensors(ck / "s1.safetensors", {{"a", filled(DType::U8, {2}, 0)}, {"b", filled(DType::U8, {2}, 0)}});
  for (const auto& c : cases) {
    std::string index = c.index;
    // The "tensor missing" case lists only a tensor the shard lacks besides one it has;
    // the shard also holds "b", listed everywhere except in the last case.
    if (std::string(c.name) == "tensor missing from its shard")
      index = R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","zz":"s1.safetensors"}})";
    write_bytes(ck / "model.safetensors.index.json", index);
    try {
      CheckpointReader r(ck);
      ADD_FAILURE() << c.name << ": accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos) << c.name << ": " << e.what();
    }
  }
}

TEST(CheckpointMalformed, DirectoryWithoutWeights) {
  TempDir tmp;
  write_bytes(tmp / "pytorch_model.bin", "x");
  try {
    CheckpointReader r(tmp.path());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("pytorch_model.bin is not supported"), std::string::npos);
  }
  EXPECT_THROW(CheckpointReader(tmp / "does-not-exist"), InputError);
}

TEST(AtomicOutput, RefusesExistingOutputWithoutForce) {
  TempDir tmp;
  fs::create_directories(tmp / "out");
  write_bytes(tmp / "out/keep.txt", "previous");
  EXPECT_THROW(AtomicOutput(tmp / "out", false), InputError);
  EXPECT_EQ(read_bytes(tmp / "out/keep.txt"), "previous");
}

TEST(AtomicOutput, EmptyDirectoryTargetIsAccepted) {
  TempDir tmp;
  fs::create_directories(tmp / "out");
  AtomicOutput out(tmp / "out", false);
  write_bytes(out.staging() / "x", "new");
  out.commit();
  EXPECT_EQ(read_bytes(tmp / "out/x"), "new");
}

TEST(AtomicOutput, ForceReplacesAndLeavesNoTemporaries) {
  TempDir tmp;
  testing::make_amalgam_output(tmp / "out", {{"old.txt", "previous"}, {"sub/deep.txt", "previous"}});
  EXPECT_TRUE(fs::exists(tmp / "out" / kOutputMarker));
  {
    AtomicOutput out(tmp / "out/", true);  // trailing slash names the same directory
    write_bytes(out.staging() / "new.txt", "new");
    EXPECT_EQ(read_bytes(tmp / "out/old.txt"), "previous");  // nothing visible before commit
    out.commit();
  }
  EXPECT_FALSE(fs::exists(tmp / "out/old.txt"));
  EXPECT_EQ(read_bytes(tmp / "out/new.txt"), "new");
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(tmp.path())) ++entries;
  EXPECT_EQ(entries, 1u);  // no staging, no lock file
  // The marker lists what amalgam wrote.
  const auto marker = nlohmann::json::parse(read_bytes(tmp / "out" / kOutputMarker));
  EXPECT_EQ(marker["entries"], nlohmann::json({"new.txt"}));
  EXPECT_TRUE(marker["written_by"].get<std::string>().starts_with("amalgam "));
}

TEST(AtomicOutput, FailureBeforeCommitLeavesPreviousOutputIntact) {
  TempDir tmp;
  testing::make_amalgam_output(tmp / "out", {{"old.txt", "previous"}});
  try {
    AtomicOutput out(tmp / "out", true);
    write_bytes(out.staging() / "partial.txt", "half");
    throw std::runtime_error("merge failed");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(read_bytes(tmp / "out/old.txt"), "previous");
  EXPECT_FALSE(fs::exists(tmp / "out/partial.txt"));
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(tmp.path())) ++entries;
  EXPECT_EQ(entries, 1u);
}

TEST(AtomicOutput, SingleFileOutputs) {
  TempDir tmp;
  const auto tensor = Tensor::from_f32({1}, std::vector<float>{1.0f});
  {
    AtomicOutput out(tmp / "stats.safetensors", false, AtomicOutput::Kind::File);
    save_safetensors(out.staging(), {{"x", tensor}}, {{"written_by", "amalgam test"}});
    out.commit();
  }
  EXPECT_TRUE(safetensors_written_by_amalgam(tmp / "stats.safetensors"));
  EXPECT_THROW(AtomicOutput(tmp / "stats.safetensors", false, AtomicOutput::Kind::File), InputError);
  {
    AtomicOutput out(tmp / "stats.safetensors", true, AtomicOutput::Kind::File);
    write_bytes(out.staging(), "two");
    out.commit();
  }
  EXPECT_EQ(read_bytes(tmp / "stats.safetensors"), "two");
  // "two" is not a file amalgam writes: --force now refuses it, as any file not amalgam's.
  EXPECT_THROW(AtomicOutput(tmp / "stats.safetensors", true, AtomicOutput::Kind::File), InputError);
  save_safetensors(tmp / "plain.safetensors", {{"x", tensor}});  // {"format": "pt"}, as torch writes
  EXPECT_FALSE(safetensors_written_by_amalgam(tmp / "plain.safetensors"));
  EXPECT_THROW(AtomicOutput(tmp / "plain.safetensors", true, AtomicOutput::Kind::File), InputError);
  EXPECT_EQ(read_bytes(tmp / "stats.safetensors"), "two");
}

}  // namespace
}  // namespace amalgam
