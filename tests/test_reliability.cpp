// Reliability: hostile files, faults (a full disk, SIGKILL mid-write, short reads) and the
// cleanup after them, through the library and the amalgam executable. docs/RELIABILITY.md
// lists every bad input and fault amalgam is tested against, with the test that proves it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "clip_fixtures.h"
#include "core/error.h"
#include "io/atomic_output.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "mass/bundle.h"
#include "mass/router.h"
#include "model/families/clip_vision.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::raw_safetensors;
using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

Tensor f32_tensor(const Shape& shape, float start) {
  Tensor t = Tensor::zeros(DType::F32, shape);
  float v = start;
  for (float& x : t.mutable_data<float>()) x = v++;
  return t;
}

// A one-file checkpoint with config.json: tensor i of `names` is [rows, 16] F32 counting up
// from `start`.
void write_model(const fs::path& dir, const std::vector<std::string>& names, int64_t rows, float start) {
  fs::create_directories(dir);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (size_t i = 0; i < names.size(); ++i)
    tensors.emplace_back(names[i], f32_tensor({rows, 16}, start + 1000.0f * static_cast<float>(i)));
  save_safetensors(dir / "model.safetensors", tensors);
  write_bytes(dir / "config.json", "{\"model_type\": \"test\"}\n");
}

// Models a and b and a linear merge of them (equal weights) in `tmp`/merge.yaml.
fs::path linear_merge_of_two(const fs::path& tmp, const std::vector<std::string>& names, int64_t rows) {
  write_model(tmp / "a", names, rows, 0);
  write_model(tmp / "b", names, rows, 2);
  const fs::path config = tmp / "merge.yaml";
  write_bytes(config, "merge_method: linear\nmodels:\n  - model: " + (tmp / "a").string() +
                          "\n    parameters: {weight: 1.0}\n  - model: " + (tmp / "b").string() +
                          "\n    parameters: {weight: 1.0}\n");
  return config;
}

std::set<std::string> entries(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// Hidden siblings an output leaves beside its target (".out.amalgam-tmp.PID.N", ...).
std::vector<std::string> leftovers(const fs::path& target) {
  std::vector<std::string> found;
  const std::string prefix = "." + target.filename().string() + ".amalgam-";
  for (const auto& name : entries(target.parent_path()))
    if (name.starts_with(prefix)) found.push_back(name);
  return found;
}

size_t lines(const std::string& s) {
  return static_cast<size_t>(std::count(s.begin(), s.end(), '\n'));
}

// Runs `amalgam ARGS` (shell words) in a child with its own limits: files it writes may not
// grow past `max_file_bytes` (RLIMIT_FSIZE), and SIGXFSZ is ignored, so a write past the
// limit fails with EFBIG exactly as one on a full disk fails with ENOSPC.
testing::CliResult run_amalgam_with_file_limit(const std::string& args, rlim_t max_file_bytes, const fs::path& tmp) {
  const fs::path err = tmp / "limited.stderr";
  const std::string cmd = std::string(AMALGAM_BIN) + " " + args + " 2>" + err.string();
  const pid_t pid = ::fork();
  if (pid == 0) {
    // The shell opens the stderr file before the limit matters: it stays far below it.
    const rlimit limit{max_file_bytes, max_file_bytes};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    ::signal(SIGXFSZ, SIG_IGN);
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  testing::CliResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.err = read_bytes(err);
  return r;
}

// ---- Hostile names ------------------------------------------------------------------------

TEST(HostileNames, TensorNamesThatLookLikePathsStayNames) {
  TempDir tmp;
  const std::vector<std::string> names = {"../../escape.weight", "a/b/c.weight", "/abs.weight", "..", "plain.weight"};
  const fs::path config = linear_merge_of_two(tmp.path(), names, 2);
  const auto r = testing::run_amalgam("merge " + config.string() + " -q -o " + (tmp / "out").string());
  ASSERT_EQ(r.code, 0) << r.err;
  // Nothing was created under the names: the temporary tree holds only what the test made.
  EXPECT_EQ(entries(tmp.path()), (std::set<std::string>{"a", "b", "merge.yaml", "out"}));
  for (const auto& e : fs::recursive_directory_iterator(tmp.path())) {
    const std::string n = e.path().filename().string();
    EXPECT_FALSE(contains(n, "escape") || contains(n, "abs") || n == "c.weight") << e.path();
  }
  // And the merged tensors kept their names and values: (x + (x + 2)) / 2 = x + 1.
  const CheckpointReader out(tmp / "out");
  ASSERT_EQ(out.names().size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const Tensor t = out.tensor(names[i]).to(DType::F32);
    EXPECT_EQ(t.data<float>()[0], 1.0f + 1000.0f * static_cast<float>(i)) << names[i];
  }
}

struct ControlName {
  std::string json;     // the name as written in the header
  std::string escaped;  // how the error shows it
};

TEST(HostileNames, ControlCharactersInTensorNamesAreRejected) {
  TempDir tmp;
  const std::vector<ControlName> cases = {{"a\\nb", "a\\nb"},
                                          {"\\u001b[2Jx", "\\x1b[2Jx"},
                                          {"tab\\there", "tab\\there"},
                                          {"del\\u007f", "del\\x7f"},
                                          {"nul\\u0000", "nul\\x00"}};
  for (const auto& c : cases) {
    const fs::path path = tmp / "names.safetensors";
    write_bytes(path, raw_safetensors(R"({")" + c.json + R"(":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x"));
    try {
      SafetensorsReader reader(path);
      ADD_FAILURE() << c.json << ": accepted";
    } catch (const InputError& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.rfind(path.string() + ": tensor '" + c.escaped + "': ", 0), 0u) << m;
      EXPECT_TRUE(contains(m, "control character")) << m;
      EXPECT_EQ(lines(m), 0u) << m;
    }
  }
  // The command line reports it on one line, exit code 2.
  const auto r = testing::run_amalgam("inspect " + (tmp / "names.safetensors").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(lines(r.err), 1u) << r.err;
  EXPECT_TRUE(r.out.empty());
}

TEST(HostileNames, ErrorMessagesEscapeControlCharactersOfNamesFromElsewhere) {
  // Names reach messages from configs and indexes too: a message stays one line.
  const InputError e("f.json", "bad\nname\x1b", "problem");
  EXPECT_EQ(std::string(e.what()), "f.json: tensor 'bad\\nname\\x1b': problem");
  // Before: an index entry {"a\nb": "x\ny"} printed a three-line error.
  TempDir tmp;
  fs::create_directories(tmp / "ck");
  write_bytes(tmp / "ck/model.safetensors.index.json", R"({"weight_map":{"a\nb":"x\ny"}})");
  const auto r = testing::run_amalgam("inspect " + (tmp / "ck").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "amalgam: error: " + (tmp / "ck/model.safetensors.index.json").string() +
                       ": tensor 'a\\nb': shard 'x\\ny' is not a plain file name in the checkpoint directory\n");
}

TEST(HostileNames, IndexShardNamesThatCouldEscapeTheDirectory) {
  TempDir tmp;
  const fs::path ck = tmp / "ck";
  fs::create_directories(ck / "sub");
  save_safetensors(ck / "s1.safetensors", {{"a", f32_tensor({1}, 0)}});
  save_safetensors(ck / "sub/x.safetensors", {{"a", f32_tensor({1}, 0)}});
  save_safetensors(tmp / "outside.safetensors", {{"a", f32_tensor({1}, 0)}});
  // (../outside and /etc/passwd are in CheckpointMalformed.IndexProblemsAreNamed.)
  for (const std::string shard : {"..", ".", "", "sub/x.safetensors", "sub/../s1.safetensors",
                                  "..\\\\outside.safetensors", "s1.safetensors\\u0000.txt", "./s1.safetensors"}) {
    write_bytes(ck / "model.safetensors.index.json", R"({"weight_map":{"a":")" + shard + R"("}})");
    try {
      CheckpointReader r(ck);
      ADD_FAILURE() << shard << ": accepted";
    } catch (const InputError& e) {
      EXPECT_TRUE(contains(e.what(), "not a plain file name in the checkpoint directory")) << shard << ": " << e.what();
      EXPECT_EQ(lines(e.what()), 0u) << e.what();
    }
  }
}

TEST(HostileNames, SpecialFilesAsWeightsOrConfigAreRefusedWithoutBlocking) {
  TempDir tmp;
  // A FIFO would block open() forever waiting for a writer; a device would read forever.
  const fs::path fifo_ck = tmp / "fifo";
  fs::create_directories(fifo_ck);
  ASSERT_EQ(::mkfifo((fifo_ck / "model.safetensors").c_str(), 0600), 0);
  const fs::path device_ck = tmp / "device";
  fs::create_directories(device_ck);
  save_safetensors(device_ck / "s1.safetensors", {{"a", f32_tensor({1}, 0)}});
  fs::create_symlink("/dev/zero", device_ck / "s2.safetensors");
  write_bytes(device_ck / "model.safetensors.index.json",
              R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  const fs::path fifo_config = tmp / "fifo_config";
  write_model(fifo_config, {"w"}, 1, 0);
  fs::remove(fifo_config / "config.json");
  ASSERT_EQ(::mkfifo((fifo_config / "config.json").c_str(), 0600), 0);

  for (const fs::path& ck : {fifo_ck, device_ck, fifo_config}) {
    try {
      CheckpointReader r(ck);
      ADD_FAILURE() << ck << ": accepted";
    } catch (const InputError& e) {
      EXPECT_TRUE(contains(e.what(), "not a regular file")) << e.what();
    }
  }
}

TEST(HostileNames, RouterTaskNamesCannotReachOutsideTheBundle) {
  // A bundle reads factors/NAME.safetensors and heads/NAME.safetensors for each task that
  // router.json (and bundle.json, which must agree) lists.
  nlohmann::json j = {{"layer", 1},       {"site", "fc1"},      {"token", "cls"}, {"mode", "topk"},
                      {"threshold", 0.2}, {"temperature", 1.0}, {"max_tasks", 2}, {"tasks", {"digits"}}};
  EXPECT_EQ(mass::RouterConfig::from_json(j, "router.json").tasks, (std::vector<std::string>{"digits"}));
  for (const std::string name : {"../../etc/passwd", "/abs", "a/b", "..", ".hidden", "", "tab\t"}) {
    j["tasks"] = {"digits", name};
    try {
      (void)mass::RouterConfig::from_json(j, "router.json");
      ADD_FAILURE() << name << ": accepted";
    } catch (const InputError& e) {
      EXPECT_TRUE(contains(e.what(), "router.json: tasks: '")) << e.what();
      EXPECT_TRUE(contains(e.what(), "is not a task name")) << e.what();
    }
  }
}

TEST(HostileFields, BundleJsonValuesOfTheWrongTypeAreInputErrors) {
  // These used to escape as nlohmann type errors (exit 1 instead of 2).
  TempDir tmp;
  const nlohmann::json good = {
      {"format", mass::kBundleFormat},
      {"version", mass::kBundleVersion},
      {"base", "base"},
      {"tasks", {{{"name", "a"}}}},
      {"sizes", {{"base", 1}, {"factors", 1}, {"first_pass", 1}, {"heads", 1}, {"all_finetunes", 1}}}};
  struct Case {
    const char* key;
    nlohmann::json value;
    const char* message;
  };
  for (const Case& c :
       {Case{"format", 7, "format: not an amalgam-mass bundle"}, Case{"version", "1", "version: expected 1"},
        Case{"rank_fraction", "half", "rank_fraction: expected a number"},
        Case{"ranks", {{"w", "3"}}, "ranks.w: expected an integer"},
        Case{"filtered",
             {{{"tensor", 1}, {"task", "a"}, {"like", "a"}, {"cosine", 1.0}}},
             "filtered: every entry needs tensor, task, like and cosine"}}) {
    nlohmann::json j = good;
    j[c.key] = c.value;
    write_bytes(tmp / mass::kBundleFile, j.dump());
    try {
      (void)mass::BundleInfo::read(tmp.path());
      ADD_FAILURE() << c.key << ": accepted";
    } catch (const InputError& e) {
      EXPECT_TRUE(contains(e.what(), "bundle.json: " + std::string(c.message))) << c.key << ": " << e.what();
    }
  }
}

// ---- Absurd sizes -------------------------------------------------------------------------

TEST(HostileSizes, ZeroElementShapesWhoseOtherDimensionsOverflowAreRejected) {
  // numel is 0, so the byte count (0) matches, but any code that divides by the first
  // dimension or multiplies the others (rows x columns of a matrix view) would overflow.
  TempDir tmp;
  const fs::path path = tmp / "zero.safetensors";
  for (const std::string shape : {"[0,4611686018427387904,4611686018427387904]", "[4294967296,0,4294967296,8]"}) {
    write_bytes(path, raw_safetensors(R"({"z":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,0]}})", ""));
    try {
      SafetensorsReader r(path);
      ADD_FAILURE() << shape << ": accepted";
    } catch (const InputError& e) {
      EXPECT_TRUE(contains(e.what(), "tensor 'z'")) << e.what();
      EXPECT_TRUE(contains(e.what(), "overflows 64 bits")) << e.what();
    }
  }
  // A zero-element tensor with sane dimensions is fine.
  write_bytes(path, raw_safetensors(R"({"z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})", ""));
  EXPECT_EQ(SafetensorsReader(path).tensors().at(0).shape, (Shape{0, 3}));
}

TEST(HostileSizes, SparseHugeConfigIsRefusedWithoutReadingIt) {
  TempDir tmp;
  write_model(tmp / "ck", {"w"}, 1, 0);
  // 200 MB of holes: refused by its size, before a byte of it is read.
  ASSERT_EQ(::truncate((tmp / "ck/config.json").c_str(), 200'000'000), 0);
  try {
    CheckpointReader r(tmp / "ck");
    FAIL() << "accepted";
  } catch (const InputError& e) {
    EXPECT_TRUE(contains(e.what(), "config.json: file is 200000000 bytes, more than the 100000000 allowed"))
        << e.what();
  }
}

TEST(HostileSizes, HeaderClaimingTerabytesCostsNoMemory) {
  TempDir tmp;
  // A 1 TB tensor claimed by a 100-byte file; and a 1 TB header length.
  const fs::path claims = tmp / "claims.safetensors";
  write_bytes(claims,
              raw_safetensors(R"({"t":{"dtype":"U8","shape":[1099511627776],"data_offsets":[0,1099511627776]}})", "x"));
  const fs::path long_header = tmp / "long_header.safetensors";
  write_bytes(long_header, testing::le64(1099511627776ULL) + "{}");
  for (const fs::path& f : {claims, long_header}) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execl(AMALGAM_BIN, AMALGAM_BIN, "inspect", f.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    int status = 0;
    rusage usage{};
    ::wait4(pid, &status, 0, &usage);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 2) << f;
    // The whole process stayed small (ru_maxrss is in KiB; sanitizer builds run larger).
    EXPECT_LT(usage.ru_maxrss, 512 * 1024) << f;
  }
}

TEST(HostileSizes, ClipConfigClaimingAHugeModelAllocatesNothing) {
  // Loading used to size every buffer from config.json before comparing any stored shape
  // with it: these claims asked for terabytes (std::bad_alloc, exit 1) or overflowed int64.
  TempDir tmp;
  const ClipVisionConfig c = testing::tiny_clip_config();
  save_clip_vision(tmp / "m", c, random_clip_vision_weights(c, 1, true), DType::F32, false);
  const nlohmann::json good = read_json_file(tmp / "m/config.json");
  struct Claim {
    const char* key;
    int64_t value;
    const char* tensor;  // the first stored tensor that disagrees
  };
  for (const Claim& claim :
       {Claim{"hidden_size", 12 << 20, "patch_embedding"}, Claim{"intermediate_size", 1 << 24, "layers.0.mlp.fc1"},
        Claim{"num_hidden_layers", 1 << 24, "layers.2.self_attn.q_proj"},
        Claim{"image_size", 1 << 24, "position_embedding"}, Claim{"projection_dim", 1 << 24, "visual_projection"}}) {
    nlohmann::json j = good;
    j[claim.key] = claim.value;
    write_bytes(tmp / "m/config.json", j.dump());
    try {
      (void)ClipVisionModel::load(tmp / "m");
      ADD_FAILURE() << claim.key << ": accepted";
    } catch (const InputError& e) {
      EXPECT_TRUE(contains(e.what(), claim.tensor)) << claim.key << ": " << e.what();
    }
  }
}

// ---- Faults -------------------------------------------------------------------------------

TEST(Faults, FullDiskFailsCleanlyAndKeepsThePreviousOutput) {
  TempDir tmp;
  // Four [256, 16] F32 tensors: a 64 KB output, against a 16 KB limit per file.
  const fs::path config = linear_merge_of_two(tmp.path(), {"w0", "w1", "w2", "w3"}, 256);
  const fs::path out = tmp / "out";
  const std::string merge = "merge " + config.string() + " -q -o " + out.string();

  const auto fresh = run_amalgam_with_file_limit(merge, 16 * 1024, tmp.path());
  EXPECT_EQ(fresh.code, 1) << fresh.err;
  EXPECT_TRUE(contains(fresh.err, "amalgam: error: ")) << fresh.err;  // a system failure, not an internal error
  EXPECT_TRUE(contains(fresh.err, "write failed: File too large (nothing was written)")) << fresh.err;
  EXPECT_TRUE(contains(fresh.err, "model.safetensors")) << fresh.err;
  EXPECT_EQ(lines(fresh.err), 1u) << fresh.err;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(leftovers(out).empty());

  testing::make_amalgam_output(out, {{"model.safetensors", "previous"}});
  const auto replacing = run_amalgam_with_file_limit(merge + " --force", 16 * 1024, tmp.path());
  EXPECT_EQ(replacing.code, 1) << replacing.err;
  EXPECT_EQ(entries(out), (std::set<std::string>{kOutputMarker, "model.safetensors"}));
  EXPECT_EQ(read_bytes(out / "model.safetensors"), "previous");
  EXPECT_TRUE(leftovers(out).empty());

  // With room, the same command succeeds.
  const auto room = run_amalgam_with_file_limit(merge + " --force", 1 << 20, tmp.path());
  ASSERT_EQ(room.code, 0) << room.err;
  EXPECT_EQ(CheckpointReader(out).names().size(), 4u);
}

// Whether process `pid` has written the first output shard into its staging directory.
bool writing_started(const fs::path& target, pid_t pid) {
  std::error_code ec;
  for (const auto& staging : testing::staging_directories(target, pid))
    for (const auto& f : fs::directory_iterator(staging, ec))
      if (f.path().extension() == ".safetensors") return true;
  return false;
}

TEST(Faults, SigkillMidWriteKeepsThePreviousOutputAndTheNextRunCleansUp) {
  TempDir tmp;
  const auto gen = testing::run_amalgam("generate -o " + (tmp / "fam").string() +
                                        " --models 2 --layers 4 --hidden 512 --intermediate 1024 --vocab 1000");
  ASSERT_EQ(gen.code, 0) << gen.err;
  // A linear merge of two 20 MB models: the write phase lasts long enough to be caught.
  write_bytes(tmp / "merge.yaml", "merge_method: linear\nmodels:\n  - model: " + (tmp / "fam/model_1").string() +
                                      "\n    parameters: {weight: 1.0}\n  - model: " + (tmp / "fam/model_2").string() +
                                      "\n    parameters: {weight: 1.0}\n");
  const fs::path out = tmp / "out";
  testing::make_amalgam_output(out, {{"previous.txt", "keep me"}});

  const std::string config = (tmp / "merge.yaml").string();
  const pid_t pid = testing::spawn_amalgam({"merge", config, "-o", out.string(), "--force", "-q"}, "/dev/null");
  const bool started = testing::wait_until(pid, [&] { return writing_started(out, pid); });
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(started) << "the merge never started writing (or finished first)";
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the merge finished before the kill";

  EXPECT_EQ(entries(out), (std::set<std::string>{kOutputMarker, "previous.txt"}));
  EXPECT_EQ(read_bytes(out / "previous.txt"), "keep me");
  // The dead process's staging directory and its lock file (a lock dies with its process).
  EXPECT_EQ(leftovers(out).size(), 2u);

  // The next merge to the same target removes it, and commits.
  const auto again = testing::run_amalgam("merge " + config + " -o " + out.string() + " --force -q");
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_TRUE(leftovers(out).empty());
  EXPECT_FALSE(fs::exists(out / "previous.txt"));
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
}

TEST(Faults, ShardShorterThanItsHeaderSaysIsRefusedBeforeMerging) {
  TempDir tmp;
  const fs::path config = linear_merge_of_two(tmp.path(), {"w0", "w1"}, 64);
  const fs::path shard = tmp / "b/model.safetensors";
  ASSERT_EQ(::truncate(shard.c_str(), static_cast<off_t>(fs::file_size(shard) - 100)), 0);
  const auto r = testing::run_amalgam("merge " + config.string() + " -q -o " + (tmp / "out").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err.rfind("amalgam: error: " + shard.string() + ": tensor 'w1': ", 0), 0u) << r.err;
  EXPECT_TRUE(contains(r.err, "past the end of the data")) << r.err;
  EXPECT_EQ(lines(r.err), 1u);
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_TRUE(leftovers(tmp / "out").empty());
}

TEST(Faults, FileShrunkAfterValidationGivesAShortReadError) {
  // Reads go through pread (Tensor::read_bytes), which sees the file end early and reports
  // it; only touching the mapped bytes would fault (out of scope: the map is not read here).
  TempDir tmp;
  const fs::path path = tmp / "m.safetensors";
  save_safetensors(path, {{"a", f32_tensor({64}, 0)}, {"b", f32_tensor({64}, 0)}});
  const SafetensorsReader reader(path);
  const Tensor b = reader.tensor("b");
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(reader.file_bytes() - 128)), 0);
  std::vector<std::byte> dst(b.nbytes());
  try {
    b.read_bytes(0, dst);
    FAIL() << "read past the end";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path.string() + ": file ended at byte ", 0), 0u) << e.what();
    EXPECT_TRUE(contains(e.what(), "truncated")) << e.what();
  }
}

// ---- Cleanup after killed processes -------------------------------------------------------

// A process id that is certainly not running: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  return pid;
}

TEST(AtomicOutputCleanup, StagingOfDeadProcessesIsRemovedOthersAreKept) {
  TempDir tmp;
  const std::string dead = std::to_string(dead_pid());
  const std::string alive = std::to_string(::getpid());
  const std::vector<std::string> stale = {".out.amalgam-tmp." + dead + ".0", ".out.amalgam-tmp." + dead + ".12",
                                          ".outer.amalgam-tmp." + dead + ".0",  // another target's
                                          ".a.b.amalgam-tmp." + dead + ".1"};   // a target with dots
  const std::vector<std::string> kept = {".out.amalgam-tmp." + alive + ".3",    // a live process's (this one's) staging
                                         ".held.amalgam-tmp." + dead + ".0",    // its target locked by a live writer
                                         ".out.amalgam-tmp." + dead + ".x",     // not a name amalgam makes
                                         ".out.amalgam-tmp.0.0", "unrelated.txt"};
  write_bytes(tmp / stale[0], "partial");  // a file output's staging
  fs::create_directories(tmp / stale[1] / "nested");
  write_bytes(tmp / stale[1] / "nested/model.safetensors", "partial");
  // A live writer of "held" (it cleans up beside it first, so it starts before the files are made).
  AtomicOutput held(tmp / "held", false);
  for (const auto& n : kept) write_bytes(tmp / n, "other");
  write_bytes(tmp / stale[2], "partial");
  write_bytes(tmp / stale[3], "partial");
  {
    AtomicOutput out(tmp / "out", false);
    write_bytes(out.staging() / "x", "new");
    out.commit();
  }
  std::set<std::string> want(kept.begin(), kept.end());
  want.insert("out");
  for (const auto& p : testing::staging_directories(tmp / "held", ::getpid())) want.insert(p.filename().string());
  want.insert(".held.amalgam-lock");
  EXPECT_EQ(entries(tmp.path()), want);
  EXPECT_EQ(read_bytes(tmp / "out/x"), "new");
}

TEST(AtomicOutputCleanup, PreviousOutputMovedAsideByADeadProcessIsPutBack) {
  // A process killed between moving the previous output aside and moving the new one in
  // (rename fallback where the file system cannot exchange) leaves no target.
  TempDir tmp;
  const std::string aside = ".out.amalgam-old." + std::to_string(dead_pid()) + ".1";
  fs::create_directories(tmp / aside);
  write_bytes(tmp / aside / "keep.txt", "previous");
  // Without --force the restored output is protected again.
  EXPECT_THROW(AtomicOutput(tmp / "out", false), InputError);
  EXPECT_EQ(read_bytes(tmp / "out/keep.txt"), "previous");
  EXPECT_EQ(entries(tmp.path()), (std::set<std::string>{"out"}));
}

TEST(AtomicOutputCleanup, ReplacingADirectoryLeavesOnlyTheNewOutput) {
  TempDir tmp;
  testing::make_amalgam_output(tmp / "out", {{"old.txt", "previous"}});
  AtomicOutput out(tmp / "out", true);
  write_bytes(out.staging() / "new.txt", "new");
  out.commit();
  EXPECT_EQ(entries(tmp / "out"), (std::set<std::string>{kOutputMarker, "new.txt"}));
  EXPECT_EQ(entries(tmp.path()), (std::set<std::string>{"out"}));
}

}  // namespace
}  // namespace amalgam
