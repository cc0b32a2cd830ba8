// `amalgam merge CONFIG.yaml -o OUT/`: every registered method, from a mergekit-style config.
// `amalgam methods`: the methods and their parameters.
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "merge/config.h"
#include "merge/engine.h"
#include "merge/method.h"

namespace amalgam::cli {

uint64_t parse_byte_size(const std::string& text) {
  size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (const std::exception&) {
    throw InputError("size '" + text + "' is not a number with an optional unit (KB, MB, GB, KiB, ...)");
  }
  std::string unit = text.substr(pos);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::pair<const char*, double> units[] = {
      {"", 1},     {"B", 1},    {"K", 1e3},   {"KB", 1e3},     {"M", 1e6},         {"MB", 1e6},          {"G", 1e9},
      {"GB", 1e9}, {"T", 1e12}, {"TB", 1e12}, {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}};
  for (const auto& [name, factor] : units)
    if (unit == name && value > 0) return static_cast<uint64_t>(value * factor);
  throw InputError("size '" + text + "' is not a positive number with an optional unit (KB, MB, GB, KiB, ...)");
}

namespace {

// `amalgam methods --json`: what a front end needs to offer a method and check a config.
nlohmann::ordered_json methods_json() {
  auto& registry = MethodRegistry::instance();
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& name : registry.names()) {
    const auto method = registry.create(name);
    const MethodSpec& spec = method->spec();
    nlohmann::ordered_json params = nlohmann::ordered_json::array();
    for (const auto& p : spec.params) {
      nlohmann::ordered_json j = {{"name", p.name}, {"scope", p.scope == ParamSpec::Scope::Model ? "model" : "global"}};
      const WordParameter* words = word_parameter(p.name);
      if (words) {
        j["values"] = nlohmann::ordered_json::array();
        for (const auto w : words->words) j["values"].push_back(std::string(w));
        if (p.default_value) j["default"] = std::string(words->words.at(static_cast<size_t>(*p.default_value)));
      } else {
        j["default"] = p.default_value ? nlohmann::ordered_json(*p.default_value) : nlohmann::ordered_json(nullptr);
        if (std::isfinite(p.min)) j["min"] = p.min;
        if (std::isfinite(p.max)) j["max"] = p.max;
      }
      j["required"] = !p.default_value.has_value();
      j["help"] = p.help;
      params.push_back(std::move(j));
    }
    nlohmann::ordered_json m = {{"name", name},
                                {"description", spec.description},
                                {"needs_base", spec.needs_base},
                                {"min_models", spec.min_models}};
    m["max_models"] = spec.max_models == std::numeric_limits<size_t>::max() ? nlohmann::ordered_json(nullptr)
                                                                            : nlohmann::ordered_json(spec.max_models);
    m["data_aware"] = spec.data_aware;
    m["parameters"] = std::move(params);
    out.push_back(std::move(m));
  }
  return out;
}

// `amalgam merge --json`: the summary on stdout, for scripts.
nlohmann::ordered_json merge_summary_json(const MergeConfig& config, const MergeSummary& s, const std::string& output) {
  return {{"output", output},
          {"merge_method", config.merge_method},
          {"tensors_merged", s.tensors_merged},
          {"tensors_copied", s.tensors_copied},
          {"bytes_read", s.bytes_read},
          {"bytes_written", s.bytes_written},
          {"shards", s.shards},
          {"seconds", s.seconds},
          {"nonfinite_written", s.nonfinite_written},
          {"audit", s.audit_summary}};
}

// mergekit's "5B", "500M", "100K" or a plain count. mergekit's help calls it parameters, but
// its writer compares each shard's bytes with it, so it is bytes here too.
uint64_t parse_mergekit_size(const std::string& text) {
  static constexpr std::pair<char, uint64_t> kScales[] = {{'k', 1000}, {'m', 1000'000}, {'b', 1000'000'000}};
  uint64_t scale = 1;
  std::string digits = text;
  for (const auto& [suffix, s] : kScales)
    if (!text.empty() && std::tolower(static_cast<unsigned char>(text.back())) == suffix) {
      scale = s;
      digits.pop_back();
    }
  if (digits.empty() || digits.size() > 12 || digits.find_first_not_of("0123456789") != std::string::npos)
    throw InputError("--out-shard-size: expected a count with an optional K, M or B, as mergekit's, got '" + text +
                     "'");
  return std::stoull(digits) * scale;
}

// mergekit-yaml's options, so that its command lines run unchanged. Those that change what is
// written map to amalgam's (--out-shard-size, --copy-tokenizer, --write-model-card,
// --transformers-cache, --random-seed, --num-threads); the rest change nothing here, each for
// the reason given, said once on stderr when used.
struct MergekitOptions {
  std::string out_shard_size, transformers_cache;
  bool safe_serialization = true;
  std::vector<std::pair<CLI::Option*, std::string>> without_effect;  // and why
};

void add_mergekit_options(CLI::App& cmd, MergekitOptions& m, CLI::Option* max_shard_size) {
  const std::string group = "mergekit-yaml's options";
  cmd.add_option("--out-shard-size", m.out_shard_size, "mergekit's shard size: 5B, 500M (bytes)")
      ->excludes(max_shard_size)
      ->group(group);
  cmd.add_option("--transformers-cache", m.transformers_cache, "the Hugging Face hub cache to find model ids in")
      ->group(group);
  cmd.add_flag("--safe-serialization,!--no-safe-serialization", m.safe_serialization,
               "safetensors (amalgam writes nothing else)")
      ->group(group);
  constexpr const char* kCpu = "amalgam computes on the CPU (BLAS)";
  constexpr const char* kWriter = "a second thread writes each tensor while the next merges already";
  struct WithoutEffect {
    const char* name;
    bool takes_value;
    const char* why;
  };
  const WithoutEffect flags[] = {
      {"--allow-crimes", false, "amalgam merges any architectures tensor by tensor, by name and shape"},
      {"--lazy-unpickle", false, "amalgam reads safetensors only: unpickling a checkpoint runs its code"},
      {"--trust-remote-code", false, "amalgam runs no model code"},
      {"--clone-tensors", false, "every output tensor is written on its own already"},
      {"--async-write", false, kWriter},
      {"--write-threads", true, kWriter},
      {"--cuda", false, kCpu},
      {"--low-cpu-memory", false, kCpu},
      {"--read-to-gpu", false, kCpu},
      {"--multi-gpu", false, kCpu},
      {"--gpu-rich", false, kCpu},
      {"--device", true, kCpu},
      {"-v,--verbose", false, "amalgam's progress says what it does (--progress lines for a line per step)"},
      {"--lora-merge-cache", true,
       "an adapter is applied into a hidden sibling of the output for the run, then removed"},
      {"--lora-merge-dtype", true, "a LoRA is applied in float32 and stored in its base's dtype"},
  };
  for (const auto& [name, takes_value, why] : flags) {
    CLI::Option* option = takes_value ? cmd.add_option(name) : cmd.add_flag(name);
    m.without_effect.emplace_back(option->description(std::string("no effect: ") + why)->group(group), why);
  }
}

// Applies what maps to amalgam's own options; notes the rest.
void apply_mergekit_options(const MergekitOptions& m, MergeOptions& options) {
  if (!m.safe_serialization)
    throw InputError(
        "--no-safe-serialization: amalgam writes safetensors only (a pickled checkpoint runs code when "
        "loaded)");
  if (!m.out_shard_size.empty()) options.max_shard_bytes = parse_mergekit_size(m.out_shard_size);
  if (!m.transformers_cache.empty()) ::setenv("HF_HUB_CACHE", m.transformers_cache.c_str(), 1);
  if (options.quiet) return;
  for (const auto& [option, why] : m.without_effect)
    if (option->count() > 0) std::cerr << "amalgam: note: " << option->get_name() << " has no effect: " << why << "\n";
}

}  // namespace

void add_merge_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("merge", "Merge checkpoints as a mergekit-style YAML config says");
  struct Args {
    std::string config, output, positional_output, shard_size = "5GB", max_memory;
    MergeOptions options;
    uint64_t seed = 0;
    bool no_check_finite = false;
    bool no_audit = false;
    bool json = false;
    MergekitOptions mergekit;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("config", a->config, "merge config (YAML)")->required();
  // mergekit's order (mergekit-yaml CONFIG OUT) works too.
  auto* positional_output = cmd->add_option("output", a->positional_output, "output checkpoint directory (or -o)");
  cmd->add_option("-o,--output", a->output, "output checkpoint directory")->excludes(positional_output);
  cmd->add_flag("--force", a->options.force, "replace an existing output");
  auto* max_shard_size =
      cmd->add_option("--max-shard-size", a->shard_size, "largest output shard, e.g. 5GB, 500MB (default 5GB)");
  cmd->add_option("--max-memory", a->max_memory,
                  "memory a data-aware method may hold, e.g. 8GB (default: half of physical memory); RegMean++'s "
                  "hidden states go to a scratch file beyond half of it");
  cmd->add_flag("--allow-missing", a->options.allow_missing,
                "take the base's tensor where a model lacks one, instead of failing");
  cmd->add_flag("--no-check-finite", a->no_check_finite, "merge NaN or Inf in the inputs instead of failing");
  cmd->add_flag("--no-audit", a->no_audit, "do not write merge_report.json (see amalgam audit)");
  auto* seed =
      cmd->add_option("--seed,--random-seed", a->seed, "seed of the random methods (DARE); overrides the config's")
          ->check(non_negative_number());
  cmd->add_flag("-q,--quiet", a->options.quiet, "no progress or summary");
  cmd->add_flag("--copy-tokenizer,!--no-copy-tokenizer", a->options.copy_tokenizer,
                "carry the base's tokenizer files into the output (default), or not (mergekit's flags)");
  cmd->add_flag("--write-model-card,!--no-write-model-card", a->options.model_card,
                "write a README.md model card (default), or not (mergekit's flags)");
  cmd->add_flag("--json", a->json, "print the summary as one JSON object on stdout (progress still on stderr)");
  add_mergekit_options(*cmd, a->mergekit, max_shard_size);
  cmd->callback([a, seed] {
    if (a->output.empty()) a->output = a->positional_output;
    if (a->output.empty())
      throw InputError("merge: no output directory; give one: amalgam merge " + a->config + " -o OUT (or " + a->config +
                       " OUT, mergekit's order)");
    a->options.output = a->output;
    a->options.max_shard_bytes = parse_byte_size(a->shard_size);
    a->options.check_finite = !a->no_check_finite;
    a->options.audit = !a->no_audit;
    if (!a->max_memory.empty()) a->options.max_memory = parse_byte_size(a->max_memory);
    if (seed->count() > 0) a->options.seed = a->seed;
    apply_mergekit_options(a->mergekit, a->options);
    const MergeConfig config = load_merge_config(a->config);
    const MergeSummary s = run_merge(config, a->options);
    if (a->json) std::cout << merge_summary_json(config, s, a->output).dump(2) << "\n";
    if (!a->options.quiet && !a->json) {
      std::fprintf(stderr,
                   "amalgam: %s: merged %zu tensors (%zu copied from the base) in %.2f s, read %s, wrote %s in %zu "
                   "shard(s) -> %s\n",
                   config.merge_method.c_str(), s.tensors_merged, s.tensors_copied, s.seconds,
                   human_bytes(static_cast<double>(s.bytes_read)).c_str(),
                   human_bytes(static_cast<double>(s.bytes_written)).c_str(), s.shards, a->output.c_str());
      for (const auto& line : s.audit_summary) std::fprintf(stderr, "amalgam: %s\n", line.c_str());
    }
    if (s.nonfinite_written > 0)
      warn("--no-check-finite: the output holds " + std::to_string(s.nonfinite_written) + " NaN or Inf values");
  });

  auto* methods = app.add_subcommand("methods", "List the merge methods and their parameters");
  auto json = std::make_shared<bool>(false);
  methods->add_flag("--json", *json, "one JSON document: every method, its needs and its parameters");
  methods->callback([json] {
    auto& registry = MethodRegistry::instance();
    if (*json) {
      std::cout << methods_json().dump(2) << "\n";
      return;
    }
    for (const auto& name : registry.names()) {
      const auto method = registry.create(name);
      const MethodSpec& spec = method->spec();
      std::cout << name << ": " << spec.description << "\n";
      for (const auto& p : spec.params) {
        std::cout << "    " << p.name << (p.scope == ParamSpec::Scope::Model ? " (per model)" : " (global)");
        const WordParameter* words = word_parameter(p.name);
        if (p.default_value && words)
          std::cout << ", default " << words->words.at(static_cast<size_t>(*p.default_value));
        else if (p.default_value)
          std::cout << ", default " << *p.default_value;
        else
          std::cout << ", required";
        std::cout << ": " << p.help << "\n";
      }
    }
  });
}

}  // namespace amalgam::cli
