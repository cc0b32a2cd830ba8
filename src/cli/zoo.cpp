// `amalgam zoo`: the embedded benchmark. `zoo data` writes its eight image tasks.
#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "zoo/build.h"
#include "zoo/tasks.h"

namespace amalgam::cli {

namespace {

struct DataArgs {
  std::string output, data_dir;
  std::vector<std::string> tasks;
  uint64_t seed = kZooDefaultSeed;
  int64_t train = 0, val = 0, test = 0;
  bool small = false, force = false;
};

ZooDataOptions data_options(const DataArgs& a) {
  ZooDataOptions options = a.small ? ZooDataOptions::small() : ZooDataOptions{};
  options.seed = a.seed;
  if (!a.data_dir.empty()) options.data_dir = a.data_dir;
  if (a.train > 0) options.sizes.train = a.train;
  if (a.val > 0) options.sizes.val = a.val;
  if (a.test > 0) options.sizes.test = a.test;
  return options;
}

void print_report(const ZooTaskReport& r) {
  char line[160];
  std::snprintf(line, sizeof line, "amalgam: zoo task %-9s train %6lld  val %5lld  test %5lld  (%.2f s)\n",
                r.name.c_str(), static_cast<long long>(r.train), static_cast<long long>(r.val),
                static_cast<long long>(r.test), r.seconds);
  std::cerr << line << std::flush;
}

void add_data_command(CLI::App& zoo) {
  auto* cmd = zoo.add_subcommand("data", "Write the zoo's eight 28x28 image tasks (train, val, test) to DIR/<task>/");
  auto a = std::make_shared<DataArgs>();
  cmd->add_option("-o,--output", a->output, "directory to create")->required();
  cmd->add_flag("--small", a->small, "600/200/400 images per task (tests, quick runs)");
  cmd->add_option("--seed", a->seed, "seed of every generator and split")->check(non_negative_number());
  cmd->add_option("--tasks", a->tasks, "only these tasks (default: all)")->delimiter(',');
  cmd->add_option("--train", a->train, "train images per generated task")->check(CLI::Range(1, 10'000'000));
  cmd->add_option("--val", a->val, "val images per generated task")->check(CLI::Range(1, 10'000'000));
  cmd->add_option("--test", a->test, "test images per generated task")->check(CLI::Range(1, 10'000'000));
  cmd->add_option("--data-dir", a->data_dir,
                  "where scripts/setup-deps.sh put the npm and scikit-learn sources "
                  "(default: $AMALGAM_DATA_DIR, else .cache/zoo-data)");
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->callback([a] {
    const auto start = std::chrono::steady_clock::now();
    const auto reports = write_zoo_data(a->output, data_options(*a), a->force, a->tasks, print_report);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "amalgam: wrote %zu zoo tasks to %s in %.2f s\n", reports.size(), a->output.c_str(), seconds);
  });
}

// The recipe's levers, for studies of what puts a zoo in the papers' regime (README, "The
// zoo"). Each is an option of the result: a zoo built with other levers is another zoo.
struct Levers {
  int64_t width = 0, layers = 0, pretrain_epochs = 0, pool_per_task = -1, pool_extra = -1;
  int64_t finetune_epochs = 0, finetune_min_images = -1, finetune_examples = 0;
  double finetune_lr = 0, view_strength = 0, logit_scale = 0;
  int64_t finetune_seed = -1, domain_epochs = 0, prototype_per_class = 0;
  std::string heads;
};

void apply_levers(const Levers& l, ZooBuildOptions& o) {
  if (l.width > 0) {
    o.model["hidden_size"] = l.width;
    o.model["intermediate_size"] = 4 * l.width;
    o.model["num_attention_heads"] = l.width / 32;  // heads of 32 dimensions, as the full preset's
    o.model["projection_dim"] = l.width;
  }
  if (l.layers > 0) o.model["num_hidden_layers"] = l.layers;
  if (l.pretrain_epochs > 0) o.pretrain.epochs = l.pretrain_epochs;
  if (l.pool_per_task >= 0) o.pool.per_task = l.pool_per_task;
  if (l.pool_extra >= 0) o.pool.extra = l.pool_extra;
  if (l.view_strength > 0) {  // every augmentation of the contrastive views scaled
    auto& v = o.views;
    v.min_scale = 1 - (1 - v.min_scale) * l.view_strength;
    v.max_scale = 1 + (v.max_scale - 1) * l.view_strength;
    v.max_shift *= l.view_strength;
    v.contrast *= l.view_strength;
    v.brightness *= l.view_strength;
    v.noise *= l.view_strength;
    v.cutout = static_cast<int64_t>(static_cast<double>(v.cutout) * l.view_strength + 0.5);
  }
  if (l.domain_epochs > 0) o.domain.epochs = l.domain_epochs;
  if (l.finetune_epochs > 0) o.finetune.epochs = l.finetune_epochs;
  if (l.finetune_min_images >= 0) o.finetune_min_images = l.finetune_min_images;
  if (l.finetune_examples > 0) o.finetune_examples = l.finetune_examples;
  if (l.finetune_lr > 0) o.finetune.learning_rate = l.finetune_lr;
  if (l.finetune_seed >= 0) o.finetune.seed = static_cast<uint64_t>(l.finetune_seed);
  if (!l.heads.empty()) o.heads = l.heads == "prototype" ? ZooHeads::Prototype : ZooHeads::Probe;
  if (l.logit_scale > 0) o.prototype.logit_scale = l.logit_scale;
  if (l.prototype_per_class > 0) o.prototype.per_class = l.prototype_per_class;
}

void add_lever_options(CLI::App& cmd, Levers& l) {
  // A lever given twice takes its last value: a study's common options come first and each
  // lever's own after them (bench/zoo_levers.sh).
  cmd.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  const auto lever = [&cmd](const char* name, auto& value, const char* help) {
    return cmd.add_option(name, value, help)->group("Recipe levers (default: the preset's)");
  };
  lever("--heads", l.heads, "heads the fine-tunes train through: prototype (zero-shot-like) or probe")
      ->check(CLI::IsMember({"prototype", "probe"}));
  lever("--logit-scale", l.logit_scale, "prototype heads' logit scale (the base's accuracy is the same)")
      ->check(positive_number());
  lever("--prototype-per-class", l.prototype_per_class,
        "train images each prototype head's class mean is taken over (fewer: a weaker, zero-shot-like base)")
      ->check(CLI::Range(1, 100'000));
  lever("--width", l.width, "the ViT's width (MLP 4x, heads of 32)")->check(CLI::Range(32, 4096));
  lever("--layers", l.layers, "the ViT's blocks")->check(CLI::Range(1, 64));
  lever("--pretrain-epochs", l.pretrain_epochs, "contrastive pretraining's passes over its pool")
      ->check(CLI::Range(1, 10000));
  lever("--pool-per-task", l.pool_per_task, "pretraining images from each task's train split")
      ->check(CLI::Range(0, 10'000'000));
  lever("--pool-extra", l.pool_extra, "generated pretraining images")->check(CLI::Range(0, 10'000'000));
  lever("--view-strength", l.view_strength, "contrastive augmentation scaled by this (1: the preset's)")
      ->check(CLI::Range(0.01, 3.0));
  lever("--domain-epochs", l.domain_epochs,
        "supervised pretraining after the contrastive one: which task (or generator) each image came from")
      ->check(CLI::Range(1, 10000));
  lever("--finetune-lr", l.finetune_lr, "fine-tunes' peak learning rate")->check(positive_number());
  lever("--finetune-epochs", l.finetune_epochs, "fine-tunes' epochs at least")->check(CLI::Range(1, 10000));
  lever("--finetune-min-images", l.finetune_min_images, "images each fine-tune sees at least")
      ->check(CLI::Range(0, 100'000'000));
  lever("--finetune-examples", l.finetune_examples, "train images per task used (probes too)")
      ->check(CLI::Range(1, 100'000'000));
  lever("--finetune-seed", l.finetune_seed, "seed of the fine-tunes (task i uses seed + i)")
      ->check(non_negative_number());
}

void add_build_command(CLI::App& zoo) {
  auto* cmd = zoo.add_subcommand("build", "Build the zoo: tasks, a pretrained base, heads, one fine-tune per task");
  struct BuildArgs {
    std::string output, data_dir, base_from;
    bool small = false, force = false, quiet = false;
    Levers levers;
  };
  auto a = std::make_shared<BuildArgs>();
  cmd->add_option("-o,--output", a->output, "zoo directory (cached: rebuilt only when options change)")->required();
  cmd->add_flag("--small", a->small, "a reduced zoo (tests, quick runs)");
  cmd->add_option("--data-dir", a->data_dir, "where scripts/setup-deps.sh put the npm and scikit-learn sources");
  cmd->add_option("--base-from", a->base_from,
                  "copy the data and base of this zoo, built with the same data, model and pretraining options "
                  "(the same bits, without pretraining again)");
  cmd->add_flag("--force", a->force, "replace a zoo built with other options");
  cmd->add_flag("-q,--quiet", a->quiet, "no progress");
  add_lever_options(*cmd, a->levers);
  cmd->callback([a] {
    ZooBuildOptions options = ZooBuildOptions::preset(a->small);
    if (!a->data_dir.empty()) options.data.data_dir = a->data_dir;
    apply_levers(a->levers, options);
    if (a->levers.width % 32 != 0) throw InputError("--width must be a multiple of 32");
    options.reuse_base_from = a->base_from;
    options.quiet = a->quiet;
    const auto zoo = build_zoo(a->output, options, a->force);
    std::printf("%-10s %8s %12s %12s\n", "task", "base", "base+probe", "fine-tuned");
    for (const auto& t : zoo["tasks"])
      std::printf("%-10s %8.4f %12.4f %12.4f\n", t["task"].get<std::string>().c_str(), t["base_test"].get<double>(),
                  t["base_probe_test"].get<double>(), t["finetuned_test"].get<double>());
    const auto& avg = zoo["average_test"];
    std::printf("%-10s %8.4f %12.4f %12.4f\n", "average", avg["base"].get<double>(), avg["base_probe"].get<double>(),
                avg["finetuned"].get<double>());
    const auto& r = zoo["regime"];
    std::printf(
        "regime: simple average %.4f, task arithmetic (lambda %.1f) %.4f; gap %.4f (R1 >= 0.30), "
        "recovery %.3f (R2 >= 0.33); disentanglement error %.3f\n",
        r["mean"]["average"].get<double>(), r["task_arithmetic_lambda"].get<double>(),
        r["mean"]["task_arithmetic"].get<double>(), r["gap"].get<double>(), r["average_recovery"].get<double>(),
        r["disentanglement"]["mean_disagreement"].get<double>());
    std::printf("built in %.1f s\n", zoo["seconds"]["total"].get<double>());
  });
}

}  // namespace

void add_zoo_command(CLI::App& app) {
  auto* zoo = app.add_subcommand("zoo", "The embedded benchmark: its tasks (zoo data) and models (zoo build)");
  zoo->require_subcommand(1);
  add_data_command(*zoo);
  add_build_command(*zoo);
}

}  // namespace amalgam::cli
