// Never destroy a user's data (issue 28): what --force may replace, the lock on a target, the
// cleanup of what dead processes left, outputs that say the truth about themselves, and
// headers parsed in time linear in the tensor count. docs/RELIABILITY.md lists each case.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/child_process.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "io/atomic_output.h"
#include "io/checkpoint.h"
#include "io/run_inputs.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::read_bytes;
using testing::run_amalgam;
using testing::TempDir;
using testing::write_bytes;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A one-file checkpoint of two [4, 8] tensors in `dtype`, values from `start`, with a
// config.json saying `torch_dtype` and a README.md about itself.
void write_model(const fs::path& dir, DType dtype, float start, int nan_at = -1) {
  fs::create_directories(dir);
  std::vector<float> values(32);
  for (size_t i = 0; i < values.size(); ++i) values[i] = start + 0.25f * static_cast<float>(i);
  if (nan_at >= 0) values[static_cast<size_t>(nan_at)] = std::numeric_limits<float>::quiet_NaN();
  save_safetensors(dir / "model.safetensors", {{"a.weight", Tensor::from_f32({4, 8}, values).to(dtype)},
                                               {"b.weight", Tensor::from_f32({4, 8}, values).to(dtype)}});
  write_bytes(dir / "config.json",
              "{\"model_type\": \"test\", \"torch_dtype\": \"" + std::string(torch_dtype_name(dtype)) + "\"}\n");
  write_bytes(dir / "README.md", "# The base model's own card\n");
}

// Models base, m1 and m2 under `dir` and a linear merge of m1 and m2 with base as base_model.
fs::path family_and_config(const fs::path& dir, DType dtype = DType::F32, const std::string& extra = "") {
  write_model(dir / "base", dtype, 0);
  write_model(dir / "m1", dtype, 1);
  write_model(dir / "m2", dtype, 2);
  const fs::path config = dir / "merge.yaml";
  write_bytes(config, "merge_method: linear\nbase_model: " + (dir / "base").string() +
                          "\nmodels:\n  - model: " + (dir / "m1").string() +
                          "\n    parameters: {weight: 1.0}\n  - model: " + (dir / "m2").string() +
                          "\n    parameters: {weight: 1.0}\n" + extra);
  return config;
}

std::string merge_args(const fs::path& config, const fs::path& out) {
  return "merge " + config.string() + " -o " + out.string() + " -q";
}

// ---- --force replaces only amalgam's own outputs ------------------------------------------

TEST(ForceReplaces, NeverADirectoryAmalgamDidNotWrite) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam");
  fs::create_directories(tmp / "p");
  write_bytes(tmp / "p/notes.txt", "keep");
  const auto r = run_amalgam(merge_args(config, tmp / "p") + " --force");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, (tmp / "p").string() + ": was not written by amalgam")) << r.err;
  EXPECT_EQ(read_bytes(tmp / "p/notes.txt"), "keep");
}

TEST(ForceReplaces, NeverTheDirectoryHoldingTheInputs) {
  TempDir tmp;
  // fam is amalgam's own output (generate), so only the inputs protect it.
  ASSERT_EQ(run_amalgam("generate -o " + (tmp / "fam").string() +
                        " --models 2 --layers 1 --hidden 16 --intermediate 32 --vocab 8")
                .code,
            0);
  write_bytes(tmp / "merge.yaml", "merge_method: linear\nmodels:\n  - model: " + (tmp / "fam/model_1").string() +
                                      "\n    parameters: {weight: 1.0}\n  - model: " + (tmp / "fam/model_2").string() +
                                      "\n    parameters: {weight: 1.0}\n");
  const auto r = run_amalgam(merge_args(tmp / "merge.yaml", tmp / "fam") + " --force");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "an input of this run")) << r.err;
  EXPECT_TRUE(fs::exists(tmp / "fam/model_1/model.safetensors"));
  EXPECT_TRUE(fs::exists(tmp / "fam/model_2/model.safetensors"));
}

TEST(ForceReplaces, AnAmalgamOutputButNotAFileTheUserAddedToIt) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam");
  ASSERT_EQ(run_amalgam(merge_args(config, tmp / "out")).code, 0);
  EXPECT_TRUE(fs::is_regular_file(tmp / "out" / kOutputMarker));
  ASSERT_EQ(run_amalgam(merge_args(config, tmp / "out") + " --force").code, 0);  // its own output: replaced
  write_bytes(tmp / "out/notes.txt", "mine");
  const auto r = run_amalgam(merge_args(config, tmp / "out") + " --force");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "holds 'notes.txt', which amalgam did not write")) << r.err;
  EXPECT_EQ(read_bytes(tmp / "out/notes.txt"), "mine");
}

TEST(ForceReplaces, NeverTheWorkingDirectoryAHomeOrTheRoot) {
  TempDir tmp;
  testing::make_amalgam_output(tmp / "work", {{"x", "1"}});
  testing::make_amalgam_output(tmp / "home", {{"x", "1"}});
  const fs::path cwd = fs::current_path();
  fs::current_path(tmp / "work");
  EXPECT_THROW(AtomicOutput(tmp / "work", true), InputError);
  EXPECT_THROW(AtomicOutput(tmp.path(), true), InputError);  // holds the working directory
  fs::current_path(cwd);
  const char* home = std::getenv("HOME");
  const std::string saved = home ? home : "";
  ::setenv("HOME", (tmp / "home").c_str(), 1);
  try {
    AtomicOutput out(tmp / "home", true);
    ADD_FAILURE() << "a home directory was accepted";
  } catch (const InputError& e) {
    EXPECT_TRUE(contains(e.what(), "is a home directory")) << e.what();
  }
  home ? ::setenv("HOME", saved.c_str(), 1) : ::unsetenv("HOME");
  try {
    AtomicOutput out("/", true);
    ADD_FAILURE() << "/ was accepted";
  } catch (const InputError& e) {
    EXPECT_TRUE(contains(e.what(), "root directory")) << e.what();
  }
  EXPECT_FALSE(fs::exists("/.amalgam-lock"));
  EXPECT_EQ(read_bytes(tmp / "work/x"), "1");
  EXPECT_EQ(read_bytes(tmp / "home/x"), "1");
}

TEST(ForceReplaces, AFileOnlyWhenAmalgamWroteIt) {
  TempDir tmp;
  write_bytes(tmp / "stats.safetensors", "a user's file");
  try {
    AtomicOutput out(tmp / "stats.safetensors", true, AtomicOutput::Kind::File);
    ADD_FAILURE() << "a file amalgam did not write was accepted";
  } catch (const InputError& e) {
    EXPECT_TRUE(contains(e.what(), "was not written by amalgam")) << e.what();
  }
  EXPECT_EQ(read_bytes(tmp / "stats.safetensors"), "a user's file");
}

// ---- One writer at a time -----------------------------------------------------------------

TEST(OutputLock, ASecondWriterFailsAtOnceNamingTheHolder) {
  TempDir tmp;
  AtomicOutput first(tmp / "out", false);
  const auto start = std::chrono::steady_clock::now();
  try {
    AtomicOutput second(tmp / "out", false);
    ADD_FAILURE() << "two writers of one target";
  } catch (const InputError& e) {
    EXPECT_TRUE(contains(e.what(), (tmp / "out").string())) << e.what();
    EXPECT_TRUE(contains(e.what(), "process " + std::to_string(::getpid()))) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  write_bytes(first.staging() / "x", "first");
  first.commit();
  // Released at commit: the next writer may go (and replaces the first's output with force).
  AtomicOutput third(tmp / "out", true);
  third.commit();
  EXPECT_FALSE(fs::exists(tmp / ".out.amalgam-lock"));
}

TEST(OutputLock, TwoMergesToOneTargetAtOnce) {
  TempDir tmp;
  ASSERT_EQ(run_amalgam("generate -o " + (tmp / "fam").string() +
                        " --models 2 --layers 6 --hidden 384 --intermediate 1024 --vocab 2000")
                .code,
            0);
  write_bytes(tmp / "tsv.yaml", "merge_method: tsv\nbase_model: " + (tmp / "fam/base").string() +
                                    "\nmodels:\n  - model: " + (tmp / "fam/model_1").string() +
                                    "\n  - model: " + (tmp / "fam/model_2").string() + "\n");
  const fs::path out = tmp / "out";
  const pid_t pid =
      testing::spawn_amalgam({"merge", (tmp / "tsv.yaml").string(), "-o", out.string(), "-q"}, tmp / "err");
  const bool started = testing::wait_until(pid, [&] { return !testing::staging_directories(out, pid).empty(); });
  const auto second = run_amalgam("merge " + (tmp / "tsv.yaml").string() + " -o " + out.string() + " -q");
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(started) << "the first merge never staged its output";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << testing::read_bytes(tmp / "err");
  EXPECT_EQ(second.code, 2) << second.err;
  EXPECT_TRUE(contains(second.err, "is being written by another amalgam (process " + std::to_string(pid) + ")"))
      << second.err;
}

TEST(OutputLock, AnEarlyClaimChecksAtOnceAndIsSharedWithTheOutputMadeLater) {
  TempDir tmp;
  const fs::path target = tmp / "stats.safetensors";
  {
    const auto claim = claim_output(target, false, AtomicOutput::Kind::File);
    AtomicOutput out(target, false, AtomicOutput::Kind::File);  // the same process: the same lock
    write_bytes(out.staging(), "x");
    out.commit();
    EXPECT_TRUE(fs::exists(tmp / ".stats.safetensors.amalgam-lock"));  // still held by the claim
  }
  EXPECT_FALSE(fs::exists(tmp / ".stats.safetensors.amalgam-lock"));
  // `x` is not a file amalgam writes: refused at the claim, before any work, even with --force.
  EXPECT_THROW(claim_output(target, true, AtomicOutput::Kind::File), InputError);
  // Through the CLI: the existing output is named before the (missing) model is even opened.
  const auto r = run_amalgam("stats " + (tmp / "no-model").string() + " --data " + (tmp / "no-task").string() + " -o " +
                             target.string());
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, target.string() + ": already exists")) << r.err;
}

// ---- Leftovers of dead processes ----------------------------------------------------------

TEST(Leftovers, StagingOfADeadProcessBesideAnyTargetIsRemovedWithANote) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam");
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const std::string stale = ".other.amalgam-tmp." + std::to_string(dead) + ".0";
  fs::create_directories(tmp / stale / "big");
  write_bytes(tmp / stale / "big/model.safetensors", "gigabytes");
  const auto r = run_amalgam("merge " + config.string() + " -o " + (tmp / "out").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(tmp / stale));
  EXPECT_TRUE(contains(r.err, "note: removed " + (tmp / stale).string())) << r.err;
}

// ---- Outputs that say the truth -----------------------------------------------------------

TEST(OutputFiles, ConfigJsonNamesTheDtypeWrittenAndTheReadmeIsAmalgams) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam", DType::BF16, "dtype: float32\n");
  ASSERT_EQ(run_amalgam(merge_args(config, tmp / "out")).code, 0);
  const auto written = nlohmann::json::parse(read_bytes(tmp / "out/config.json"));
  EXPECT_EQ(written["torch_dtype"], "float32");
  EXPECT_EQ(written["model_type"], "test");
  EXPECT_EQ(CheckpointReader(tmp / "out").info("a.weight").dtype, DType::F32);
  const std::string card = read_bytes(tmp / "out/README.md");
  EXPECT_FALSE(contains(card, "The base model's own card")) << card;
  EXPECT_TRUE(contains(card, "amalgam")) << card;
  EXPECT_TRUE(contains(card, "`linear`")) << card;
  EXPECT_TRUE(contains(card, (tmp / "fam/m2").string())) << card;
  EXPECT_TRUE(contains(card, "merge_method: linear")) << card;

  ASSERT_EQ(run_amalgam("generate --dtype float16 -o " + (tmp / "gen").string() +
                        " --models 1 --layers 1 --hidden 16 --intermediate 32 --vocab 8")
                .code,
            0);
  EXPECT_EQ(nlohmann::json::parse(read_bytes(tmp / "gen/base/config.json"))["torch_dtype"], "float16");
  EXPECT_EQ(CheckpointReader(tmp / "gen/base").info(CheckpointReader(tmp / "gen/base").names()[0]).dtype, DType::F16);
}

TEST(OutputFiles, AnOutputNamedLikeASafetensorsFileIsRefused) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam");
  const auto r = run_amalgam(merge_args(config, tmp / "x.safetensors"));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "not one .safetensors file; give a directory")) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "x.safetensors"));
}

// ---- Headers ------------------------------------------------------------------------------

TEST(SafetensorsHeader, FiftyThousandTensorsParseInLinearTime) {
  TempDir tmp;
  const int n = 50000;
  std::string header = "{";
  for (int i = 0; i < n; ++i) {
    const std::string offsets = std::to_string(4 * i) + "," + std::to_string(4 * i + 4);
    header += (i ? ",\"" : "\"") + ("model.layers." + std::to_string(i / 100) + ".experts." + std::to_string(i % 100)) +
              ".w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[" + offsets + "]}";
  }
  header += "}";
  write_bytes(tmp / "moe.safetensors", testing::raw_safetensors(header, std::string(4 * n, '\0')));
  const auto start = std::chrono::steady_clock::now();
  const SafetensorsReader reader(tmp / "moe.safetensors");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(reader.tensors().size(), static_cast<size_t>(n));
  // 0.2 s in a Release build; the quadratic parser took 21 s. Generous for sanitizer builds.
  EXPECT_LT(seconds, 8.0);
  // The duplicate-key check is kept.
  const std::string twice =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
  write_bytes(tmp / "twice.safetensors", testing::raw_safetensors(twice, std::string(8, '\0')));
  try {
    SafetensorsReader r(tmp / "twice.safetensors");
    ADD_FAILURE() << "a duplicate tensor was accepted";
  } catch (const InputError& e) {
    EXPECT_TRUE(contains(e.what(), "duplicate key")) << e.what();
  }
}

// ---- Messages and exit codes (issue 28, point 7) ------------------------------------------

TEST(Messages, FiniteInputsOverflowingTheOutputDtypeAreAnInputErrorNamingTensorAndModels) {
  TempDir tmp;
  write_model(tmp / "m1", DType::F32, 40000);
  write_model(tmp / "m2", DType::F32, 40000);
  write_bytes(tmp / "merge.yaml",
              "merge_method: linear\ndtype: float16\nparameters: {normalize: false}\nmodels:\n"
              "  - model: " +
                  (tmp / "m1").string() +
                  "\n    parameters: {weight: 1.0}\n"
                  "  - model: " +
                  (tmp / "m2").string() + "\n    parameters: {weight: 1.0}\n");
  const auto r = run_amalgam(merge_args(tmp / "merge.yaml", tmp / "out"));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_FALSE(contains(r.err, "internal error")) << r.err;
  EXPECT_TRUE(contains(r.err, (tmp / "merge.yaml").string() + ": tensor 'a.weight'")) << r.err;
  EXPECT_TRUE(contains(r.err, (tmp / "m2").string())) << r.err;
  EXPECT_TRUE(contains(r.err, "F16's range")) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(Messages, PathsThatCannotBeFollowedNameTheConfigKey) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam");
  fs::create_symlink(tmp / "loop", tmp / "loop");
  write_bytes(tmp / "loop.yaml", "merge_method: linear\nmodels:\n  - model: " + (tmp / "fam/m1").string() +
                                     "\n  - model: " + (tmp / "loop").string() + "\n");
  const auto loop = run_amalgam(merge_args(tmp / "loop.yaml", tmp / "out"));
  EXPECT_EQ(loop.code, 2) << loop.err;
  EXPECT_TRUE(contains(loop.err, (tmp / "loop.yaml").string() + ": models[1].model: ")) << loop.err;
  EXPECT_TRUE(contains(loop.err, "symbolic links")) << loop.err;
  const auto inspect = run_amalgam("inspect " + (tmp / "loop").string());
  EXPECT_EQ(inspect.code, 2) << inspect.err;
  EXPECT_TRUE(contains(inspect.err, "symbolic links")) << inspect.err;

  write_bytes(tmp / "missing.yaml", "merge_method: linear\nmodels:\n  - model: " + (tmp / "fam/m1").string() +
                                        "\n  - model: " + (tmp / "fam/m1").string() + "\n  - model: nowhere/m3\n");
  const auto missing = run_amalgam(merge_args(tmp / "missing.yaml", tmp / "out"));
  EXPECT_EQ(missing.code, 2) << missing.err;
  EXPECT_TRUE(contains(missing.err, (tmp / "missing.yaml").string() + ": models[2].model: 'nowhere/m3' does not exist"))
      << missing.err;
}

TEST(Messages, MergekitsArgumentOrderWorksAndNoOutputSaysHowToGiveOne) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam");
  const auto positional = run_amalgam("merge " + config.string() + " " + (tmp / "out").string() + " -q");
  ASSERT_EQ(positional.code, 0) << positional.err;
  EXPECT_TRUE(fs::exists(tmp / "out/model.safetensors"));
  const auto none = run_amalgam("merge " + config.string());
  EXPECT_EQ(none.code, 2) << none.err;
  EXPECT_TRUE(contains(none.err, "-o OUT")) << none.err;
}

TEST(Messages, NoCheckFiniteWarnsWithTheCountOfNonFiniteValuesWritten) {
  TempDir tmp;
  write_model(tmp / "m1", DType::F32, 1, 5);
  write_model(tmp / "m2", DType::F32, 2);
  write_bytes(tmp / "merge.yaml", "merge_method: linear\nparameters: {weight: 1.0}\nmodels:\n  - model: " +
                                      (tmp / "m1").string() + "\n  - model: " + (tmp / "m2").string() + "\n");
  const auto checked = run_amalgam(merge_args(tmp / "merge.yaml", tmp / "checked"));
  EXPECT_EQ(checked.code, 2) << checked.err;
  EXPECT_TRUE(contains(checked.err, "contains NaN or Inf")) << checked.err;
  // Both tensors of m1 hold one NaN at index 5: two NaN in the output.
  const auto r = run_amalgam(merge_args(tmp / "merge.yaml", tmp / "out") + " --no-check-finite");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.err, "warning: --no-check-finite: the output holds 2 NaN or Inf values")) << r.err;
}

TEST(Messages, ASecondYamlDocumentIsAnError) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam");
  write_bytes(tmp / "two.yaml", read_bytes(config) + "---\nmerge_method: ties\n");
  const auto r = run_amalgam(merge_args(tmp / "two.yaml", tmp / "out"));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, (tmp / "two.yaml").string() + ": holds more than one YAML document")) << r.err;
}

TEST(Messages, NegativeSeedsAndZeroCountsAreRefusedReadably) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam");
  const auto seed = run_amalgam(merge_args(config, tmp / "out") + " --seed -1");
  EXPECT_EQ(seed.code, 2) << seed.err;
  EXPECT_TRUE(contains(seed.err, "--seed: must be zero or more, got '-1'")) << seed.err;
  const auto top = run_amalgam("audit " + (tmp / "out").string() + " --top 0");
  EXPECT_EQ(top.code, 2) << top.err;
  EXPECT_TRUE(contains(top.err, "--top: must be a positive number, got '0'")) << top.err;
  EXPECT_FALSE(contains(top.err, "e+308") || contains(top.err, "1797693")) << top.err;
}

TEST(Messages, WeightsSummingToZeroNameTheConfig) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam");
  write_bytes(tmp / "zero.yaml", "merge_method: linear\nmodels:\n  - model: " + (tmp / "fam/m1").string() +
                                     "\n    parameters: {weight: 1.0}\n  - model: " + (tmp / "fam/m2").string() +
                                     "\n    parameters: {weight: -1.0}\n");
  const auto r = run_amalgam(merge_args(tmp / "zero.yaml", tmp / "out"));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(
      contains(r.err, (tmp / "zero.yaml").string() + ": tensor 'a.weight': linear: the models' weights sum to zero"))
      << r.err;
}

// ---- Same bits on any thread count --------------------------------------------------------

TEST(ThreadCount, EveryDataFreeMethodWritesTheSameBitsOnOneTwoAndThreeThreads) {
  TempDir tmp;
  // Matrices of 256 x 688: large enough that BLAS and the parallel loops split their work.
  ASSERT_EQ(run_amalgam("generate -o " + (tmp / "fam").string() +
                        " --models 3 --layers 2 --hidden 256 --intermediate 688 --vocab 500")
                .code,
            0);
  const std::string base = "base_model: " + (tmp / "fam/base").string() + "\n";
  std::string weighted = "models:\n", sparse = "models:\n", plain = "models:\n";
  for (int m = 1; m <= 3; ++m) {
    const std::string model = (tmp / ("fam/model_" + std::to_string(m))).string();
    weighted += "  - model: " + model + "\n    parameters: {weight: 0.5}\n";
    sparse += "  - model: " + model + "\n    parameters: {weight: 0.5, density: 0.5}\n";
    plain += "  - model: " + model + "\n";
  }
  const std::vector<std::pair<std::string, std::string>> configs = {
      {"linear", "merge_method: linear\n" + weighted},
      {"task_arithmetic", "merge_method: task_arithmetic\n" + base + weighted},
      {"ties", "merge_method: ties\n" + base + sparse},
      {"dare_ties", "merge_method: dare_ties\nseed: 7\n" + base + sparse},
      {"dare_linear", "merge_method: dare_linear\nseed: 7\n" + base + sparse},
      {"breadcrumbs", "merge_method: breadcrumbs\n" + base + sparse},
      {"breadcrumbs_ties", "merge_method: breadcrumbs_ties\n" + base + sparse},
      {"slerp", "merge_method: slerp\nparameters: {t: 0.3}\n" + base +
                    "models:\n  - model: " + (tmp / "fam/model_1").string() + "\n"},
      {"tsv", "merge_method: tsv\n" + base + plain}};
  for (const auto& [method, yaml] : configs) {
    write_bytes(tmp / (method + ".yaml"), yaml);
    std::string first;
    for (const int threads : {1, 2, 3}) {
      const fs::path out = tmp / (method + std::to_string(threads));
      const auto r = run_amalgam("merge " + (tmp / (method + ".yaml")).string() + " -o " + out.string() +
                                 " -q --threads " + std::to_string(threads));
      ASSERT_EQ(r.code, 0) << method << ": " << r.err;
      const std::string bits = read_bytes(out / "model.safetensors");
      if (threads == 1)
        first = bits;
      else
        EXPECT_TRUE(bits == first) << method << " differs between 1 and " << threads << " threads";
    }
  }
}

// ---- Progress in logs ---------------------------------------------------------------------

TEST(Progress, PlainLinesWhenStderrIsNotATerminal) {
  TempDir tmp;
  const fs::path config = family_and_config(tmp / "fam");
  // run_amalgam sends stderr to a file, as nohup and Slurm do.
  const auto logged = run_amalgam("merge " + config.string() + " -o " + (tmp / "a").string());
  ASSERT_EQ(logged.code, 0) << logged.err;
  EXPECT_TRUE(contains(logged.err, "amalgam: merging: started, 2 tensors\n")) << logged.err;
  EXPECT_TRUE(contains(logged.err, "amalgam: merging: 1/2 tensors (50%)")) << logged.err;
  EXPECT_TRUE(contains(logged.err, "amalgam: merging: 2/2 tensors (100%)")) << logged.err;
  EXPECT_FALSE(contains(logged.err, "\r")) << logged.err;  // no bar redrawn in place
  const auto bar = run_amalgam("merge " + config.string() + " -o " + (tmp / "b").string() + " --progress bar");
  ASSERT_EQ(bar.code, 0) << bar.err;
  EXPECT_TRUE(contains(bar.err, "\rmerging [")) << bar.err;
  for (const std::string quiet : {" --progress none", " -q"}) {
    fs::remove_all(tmp / "c");
    const auto none = run_amalgam("merge " + config.string() + " -o " + (tmp / "c").string() + quiet);
    ASSERT_EQ(none.code, 0) << none.err;
    EXPECT_FALSE(contains(none.err, "merging")) << quiet << ": " << none.err;
  }
}

// ---- Signals reach children ---------------------------------------------------------------

TEST(Interrupts, ASignalToAmalgamReachesTheChildItWaitsFor) {
  install_interrupt_handler();
  clear_interrupt();
  TempDir tmp;
  for (const bool child_ignores_it : {false, true}) {
    std::thread signaller([] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      ::kill(::getpid(), SIGTERM);
    });
    const auto start = std::chrono::steady_clock::now();
    const std::vector<std::string> argv = child_ignores_it
                                              ? std::vector<std::string>{"sh", "-c", "trap '' TERM; sleep 30"}
                                              : std::vector<std::string>{"sleep", "30"};
    EXPECT_THROW(run_child(argv, tmp / "log"), Interrupted);
    signaller.join();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // SIGTERM passed on at once; a child deaf to it is killed 5 s later.
    EXPECT_LT(seconds, child_ignores_it ? 8.0 : 2.0);
    EXPECT_GT(seconds, child_ignores_it ? 5.0 : 0.2);
    errno = 0;
    EXPECT_EQ(::waitpid(-1, nullptr, WNOHANG), -1);  // no child left behind
    EXPECT_EQ(errno, ECHILD);
    clear_interrupt();
  }
}

}  // namespace
}  // namespace amalgam
