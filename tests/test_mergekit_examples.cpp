// mergekit's own example configs run as a mergekit user runs them: `amalgam merge CONFIG OUT`
// (mergekit's argument order), unchanged (tests/mergekit_examples/ holds mergekit's
// examples/*.yml as they are at its commit a6e4028), the models they name found by their
// Hugging Face ids in a hub cache ($HF_HUB_CACHE) that holds tiny generated checkpoints of
// the families and depths those ids are (13B Llama 2 fine-tunes: 40 layers).
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>

#include "clip_fixtures.h"  // tensor_floats
#include "core/error.h"
#include "decoder_fixtures.h"
#include "io/checkpoint.h"
#include "io/hub_cache.h"
#include "io/json_file.h"
#include "merge/config.h"
#include "merge/method.h"
#include "test_util.h"

namespace amalgam::testing {
namespace {

// Sets an environment variable for one test, and puts back what was there.
class ScopedEnvironment {
 public:
  ScopedEnvironment(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnvironment() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// The directory snapshot_download leaves for `id` at `commit`, with refs/main pointing at it.
fs::path place_in_hub_cache(const fs::path& cache, const std::string& id, const std::string& commit,
                            const std::string& ref = "main") {
  std::string repo = id;
  repo.replace(repo.find('/'), 1, "--");
  const fs::path model = cache / ("models--" + repo);
  fs::create_directories(model / "refs");
  write_bytes(model / "refs" / ref, commit);
  const fs::path snapshot = model / "snapshots" / commit;
  fs::create_directories(snapshot);
  return snapshot;
}

TEST(HubCache, IdsAndRevisionsResolveToTheirSnapshots) {
  TempDir tmp;
  const ScopedEnvironment cache("HF_HUB_CACHE", (tmp / "hub").string());
  const fs::path main = place_in_hub_cache(tmp / "hub", "org/name", "1111aaaa");
  const fs::path tagged = place_in_hub_cache(tmp / "hub", "org/name", "2222bbbb", "v2");
  EXPECT_EQ(find_in_hub_cache("org/name"), main);
  EXPECT_EQ(find_in_hub_cache("org/name@v2"), tagged);
  EXPECT_EQ(find_in_hub_cache("org/name@1111aaaa"), main);  // a commit, no ref of that name
  EXPECT_EQ(find_in_hub_cache("org/name@3333"), std::nullopt);
  EXPECT_EQ(find_in_hub_cache("org/other"), std::nullopt);
  EXPECT_EQ(find_in_hub_cache("org/name@../../x"), std::nullopt);
  EXPECT_FALSE(looks_like_hub_id("./org/name"));
  EXPECT_FALSE(looks_like_hub_id("/abs/path"));
  EXPECT_FALSE(looks_like_hub_id("a/b/c"));
  EXPECT_TRUE(looks_like_hub_id("gpt2"));
  EXPECT_TRUE(looks_like_hub_id("meta-llama/Llama-3.2-1B@main"));

  // A local path comes first; an id not in any cache is an input error that says where it
  // looked, and that amalgam does not download.
  fs::create_directories(tmp / "configs" / "org" / "name");
  EXPECT_EQ(resolve_model_path("org/name", tmp / "configs" / "merge.yaml"), tmp / "configs" / "org" / "name");
  EXPECT_EQ(resolve_model_path("org/name", tmp / "elsewhere.yaml"), main);
  write_bytes(tmp / "merge.yaml", "merge_method: linear\nmodels:\n  - model: org/missing\n  - model: org/name\n");
  const CliResult r = run_amalgam("merge " + (tmp / "merge.yaml").string() + " " + (tmp / "out").string());
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("models[0].model: 'org/missing' does not exist"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("hub cache, looked for in " + (tmp / "hub").string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("amalgam does not download"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

// A tiny Llama 2 of `layers` layers in F16 (as the 13B fine-tunes are published).
Json tiny_llama(int64_t layers) {
  Json c = tiny_config("llama");
  c["num_hidden_layers"] = layers;
  return c;
}

TEST(MergekitExamples, EveryExampleRunsUnchanged) {
  TempDir tmp;
  const ScopedEnvironment cache("HF_HUB_CACHE", (tmp / "hub").string());
  uint64_t seed = 1;
  std::map<std::string, fs::path> at;
  for (const char* id : {"psmathur/orca_mini_v3_13b", "garage-bAInd/Platypus2-13B", "WizardLM/WizardLM-13B-V1.2",
                         "WizardLM/WizardMath-13B-V1.0", "TheBloke/Llama-2-13B-fp16"}) {
    at[id] = place_in_hub_cache(tmp / "hub", id, "c0ffee" + std::to_string(seed));
    write_random_decoder(at[id], tiny_llama(40), DType::F16, seed++);
  }
  for (const char* id :
       {"mistralai/Mistral-7B-Instruct-v0.2", "BioMistral/BioMistral-7B", "mistralai/Mistral-7B-v0.1"}) {
    at[id] = place_in_hub_cache(tmp / "hub", id, "c0ffee" + std::to_string(seed));
    write_random_decoder(at[id], tiny_config("mistral"), DType::BF16, seed++);
  }
  // arcee_fusion.yml names local directories: beside the config.
  const fs::path configs = tmp / "examples";
  fs::create_directories(configs);
  for (const char* local : {"model_a", "model_b"})
    write_random_decoder(configs / local, tiny_config("llama"), DType::F32, seed++);

  const std::map<std::string, std::pair<DType, int64_t>> expected = {
      {"arcee_fusion", {DType::BF16, 2}},           {"bio-merge", {DType::F16, 2}},
      {"gradient-slerp", {DType::F16, 40}},         {"linear", {DType::F16, 40}},
      {"orcamini-platy-44layer", {DType::F16, 44}}, {"ties", {DType::F16, 40}}};
  for (const auto& [name, want] : expected) {
    const fs::path config = configs / (name + ".yml");
    fs::copy_file(fs::path(AMALGAM_SOURCE_DIR) / "tests" / "mergekit_examples" / (name + ".yml"), config);
    const fs::path out = tmp / "out" / name;
    const CliResult r = run_amalgam("merge " + config.string() + " " + out.string() + " -q");
    ASSERT_EQ(r.code, 0) << name << ": " << r.err;
    const Json written = read_json_file(out / "config.json");
    EXPECT_EQ(written["num_hidden_layers"], want.second) << name;
    const CheckpointReader merged(out);
    EXPECT_EQ(merged.info("model.layers.1.mlp.down_proj.weight").dtype, want.first) << name;
    std::set<int> layers;
    for (const auto& n : merged.names())
      if (n.starts_with("model.layers.")) layers.insert(std::stoi(n.substr(13)));
    EXPECT_EQ(static_cast<int64_t>(layers.size()), want.second) << name;
    EXPECT_EQ(*layers.rbegin(), want.second - 1) << name;
  }

  // The frankenmerge: orca's layers 0-23, then Platypus's 20-39 as layers 24-43; the
  // embeddings from the first slice's model, the final norm and lm_head from the last's.
  const fs::path franken = tmp / "out" / "orcamini-platy-44layer";
  const fs::path orca = at["psmathur/orca_mini_v3_13b"], platypus = at["garage-bAInd/Platypus2-13B"];
  const std::string down = ".mlp.down_proj.weight";
  EXPECT_EQ(tensor_floats(franken, "model.layers.0" + down), tensor_floats(orca, "model.layers.0" + down));
  EXPECT_EQ(tensor_floats(franken, "model.layers.23" + down), tensor_floats(orca, "model.layers.23" + down));
  EXPECT_EQ(tensor_floats(franken, "model.layers.24" + down), tensor_floats(platypus, "model.layers.20" + down));
  EXPECT_EQ(tensor_floats(franken, "model.layers.43" + down), tensor_floats(platypus, "model.layers.39" + down));
  EXPECT_EQ(tensor_floats(franken, "model.embed_tokens.weight"), tensor_floats(orca, "model.embed_tokens.weight"));
  EXPECT_EQ(tensor_floats(franken, "lm_head.weight"), tensor_floats(platypus, "lm_head.weight"));

  // linear.yml: (1.0 orca + 0.3 WizardLM + 0.5 Platypus) / 1.8, in double, rounded to F16.
  const fs::path wizard = at["WizardLM/WizardLM-13B-V1.2"];
  const std::string name = "model.layers.17.self_attn.q_proj.weight";
  const auto a = tensor_floats(orca, name), b = tensor_floats(wizard, name), c = tensor_floats(platypus, name);
  const auto got = tensor_floats(tmp / "out" / "linear", name);
  ASSERT_EQ(got.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const double want = (1.0 * a[i] + 0.3 * b[i] + 0.5 * c[i]) / 1.8;
    ASSERT_NEAR(got[i], want, 1e-3 * (1 + std::abs(want))) << i;
  }
}

// `amalgam methods --json` and `amalgam merge --json`, for scripts and front ends.
TEST(CliJson, MethodsAndMergeSummaries) {
  const CliResult methods = run_amalgam("methods --json");
  ASSERT_EQ(methods.code, 0) << methods.err;
  const Json list = Json::parse(methods.out);
  std::map<std::string, Json> by_name;
  for (const auto& m : list) by_name[m["name"]] = m;
  const std::vector<std::string> registered = MethodRegistry::instance().names();
  EXPECT_EQ(by_name.size(), registered.size());
  for (const auto& name : registered) EXPECT_TRUE(by_name.contains(name)) << name;
  auto param = [&](const std::string& method, const std::string& name) {
    for (const auto& p : by_name.at(method)["parameters"])
      if (p["name"] == name) return p;
    ADD_FAILURE() << method << " has no parameter " << name;
    return Json();
  };
  EXPECT_EQ(param("ties", "weight")["required"], true);
  EXPECT_EQ(param("ties", "weight")["scope"], "model");
  EXPECT_EQ(param("ties", "density")["default"], 1.0);
  EXPECT_EQ(param("karcher", "max_iter")["default"], 10.0);
  EXPECT_EQ(param("regmean", "embeddings")["values"], Json::array({"mean", "base"}));
  EXPECT_EQ(param("regmean", "embeddings")["default"], "mean");
  EXPECT_EQ(by_name.at("ties")["needs_base"], true);
  EXPECT_EQ(by_name.at("slerp")["max_models"], 1);  // besides its base
  EXPECT_EQ(by_name.at("linear")["max_models"], nullptr);
  EXPECT_EQ(by_name.at("regmean_plusplus")["data_aware"], true);

  TempDir tmp;
  write_random_decoder(tmp / "a", tiny_config("llama"), DType::F32, 1);
  write_random_decoder(tmp / "b", tiny_config("llama"), DType::F32, 2);
  write_bytes(tmp / "merge.yaml",
              "merge_method: linear\nparameters: {weight: 1}\nmodels:\n  - model: a\n  - model: b\n");
  const CliResult merge =
      run_amalgam("merge " + (tmp / "merge.yaml").string() + " " + (tmp / "out").string() + " --json");
  ASSERT_EQ(merge.code, 0) << merge.err;
  const Json summary = Json::parse(merge.out);
  EXPECT_EQ(summary["merge_method"], "linear");
  EXPECT_EQ(summary["output"], (tmp / "out").string());
  EXPECT_EQ(summary["tensors_merged"], CheckpointReader(tmp / "out").names().size());
  EXPECT_EQ(summary["shards"], 1);
  const CheckpointReader out(tmp / "out");
  uint64_t tensor_bytes = 0;  // the tensors' data, F32 here, without the file's header
  for (const auto& name : out.names()) tensor_bytes += 4 * static_cast<uint64_t>(shape_numel(out.info(name).shape));
  EXPECT_EQ(summary["bytes_written"], tensor_bytes);
  EXPECT_EQ(merge.err.find("merged "), std::string::npos);  // the text summary gives way to the JSON
}

// mergekit-yaml's output switches, by their names: the tokenizer's files and the model card
// stay out; the reference's other files (generation_config.json) still come along.
TEST(MergekitHabits, NoCopyTokenizerAndNoModelCard) {
  TempDir tmp;
  write_random_decoder(tmp / "a", tiny_config("llama"), DType::F32, 1);
  write_random_decoder(tmp / "b", tiny_config("llama"), DType::F32, 2);
  for (const char* file :
       {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"})
    write_bytes(tmp / "a" / file, "{}");
  write_bytes(tmp / "merge.yaml",
              "merge_method: linear\nparameters: {weight: 1}\nmodels:\n  - model: a\n  - model: b\n");
  const std::string merge = "merge " + (tmp / "merge.yaml").string() + " ";
  ASSERT_EQ(run_amalgam(merge + (tmp / "plain").string() + " -q").code, 0);
  for (const char* file :
       {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "README.md"})
    EXPECT_TRUE(fs::exists(tmp / "plain" / file)) << file;
  const CliResult r =
      run_amalgam(merge + (tmp / "bare").string() + " -q --no-copy-tokenizer --no-write-model-card --random-seed 3");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "README.md"})
    EXPECT_FALSE(fs::exists(tmp / "bare" / file)) << file;
  EXPECT_TRUE(fs::exists(tmp / "bare" / "generation_config.json"));
  EXPECT_NE(read_bytes(tmp / "bare" / "amalgam_config.yaml").find("seed: 3"), std::string::npos);
}

// A community model card's command line, unchanged: mergekit-yaml's flags are taken, those
// that change the output mapped (--out-shard-size in mergekit's K/M/B bytes, --copy-tokenizer,
// --num-threads), those that cannot apply here noted once each; the merge is the same bits.
TEST(MergekitHabits, MergekitYamlCommandLinesRunUnchanged) {
  TempDir tmp;
  write_random_decoder(tmp / "a", tiny_config("llama"), DType::F32, 1);
  write_random_decoder(tmp / "b", tiny_config("llama"), DType::F32, 2);
  write_bytes(tmp / "merge.yaml",
              "merge_method: linear\nparameters: {weight: 1}\nmodels:\n  - model: a\n  - model: b\n");
  const std::string merge = "merge " + (tmp / "merge.yaml").string() + " ";
  ASSERT_EQ(run_amalgam(merge + (tmp / "plain").string() + " -q").code, 0);
  const CliResult r = run_amalgam(merge + (tmp / "habits").string() +
                                  " --cuda --allow-crimes --lazy-unpickle --copy-tokenizer --out-shard-size 20K -vv "
                                  "--device cuda --num-threads 1 --write-threads 2 --safe-serialization");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("note: --cuda has no effect: amalgam computes on the CPU"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("note: --lazy-unpickle has no effect"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("note: --device has no effect"), std::string::npos) << r.err;
  // 20K = 20,000 bytes a shard: the 2-layer model's ~62 KB of F32 goes to several shards.
  const CheckpointReader plain(tmp / "plain"), habits(tmp / "habits");
  EXPECT_TRUE(fs::exists(tmp / "habits" / "model.safetensors.index.json"));
  size_t shards = 0;
  for (const auto& e : fs::directory_iterator(tmp / "habits")) shards += e.path().extension() == ".safetensors" ? 1 : 0;
  EXPECT_GT(shards, 2U);
  ASSERT_EQ(habits.names(), plain.names());
  for (const std::string& name : plain.names()) {
    const Tensor x = plain.tensor(name), y = habits.tensor(name);
    EXPECT_TRUE(std::equal(x.bytes().begin(), x.bytes().end(), y.bytes().begin(), y.bytes().end())) << name;
  }
  const CliResult pickles = run_amalgam(merge + (tmp / "pickled").string() + " --no-safe-serialization");
  EXPECT_EQ(pickles.code, 2);
  EXPECT_NE(pickles.err.find("--no-safe-serialization: amalgam writes safetensors only"), std::string::npos);
  EXPECT_EQ(run_amalgam(merge + (tmp / "bad").string() + " --out-shard-size 5G").code, 2);
}

}  // namespace
}  // namespace amalgam::testing
