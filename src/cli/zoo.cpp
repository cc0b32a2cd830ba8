// `amalgam zoo`: the embedded benchmark. `zoo data` writes its eight image tasks.
#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "data/zoo_tasks.h"
#include "eval/zoo_build.h"

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

void add_build_command(CLI::App& zoo) {
  auto* cmd =
      zoo.add_subcommand("build", "Build the zoo: tasks, a pretrained base, probe heads, one fine-tune per task");
  struct BuildArgs {
    std::string output, data_dir;
    bool small = false, force = false, quiet = false;
  };
  auto a = std::make_shared<BuildArgs>();
  cmd->add_option("-o,--output", a->output, "zoo directory (cached: rebuilt only when options change)")->required();
  cmd->add_flag("--small", a->small, "a reduced zoo (tests, quick runs)");
  cmd->add_option("--data-dir", a->data_dir, "where scripts/setup-deps.sh put the npm and scikit-learn sources");
  cmd->add_flag("--force", a->force, "replace a zoo built with other options");
  cmd->add_flag("-q,--quiet", a->quiet, "no progress");
  cmd->callback([a] {
    ZooBuildOptions options = ZooBuildOptions::preset(a->small);
    if (!a->data_dir.empty()) options.data.data_dir = a->data_dir;
    options.quiet = a->quiet;
    const auto zoo = build_zoo(a->output, options, a->force);
    std::printf("%-10s %12s %12s\n", "task", "base+probe", "fine-tuned");
    for (const auto& t : zoo["tasks"])
      std::printf("%-10s %12.4f %12.4f\n", t["task"].get<std::string>().c_str(), t["base_probe_test"].get<double>(),
                  t["finetuned_test"].get<double>());
    std::printf("%-10s %12.4f %12.4f\n", "average", zoo["average_test"]["base_probe"].get<double>(),
                zoo["average_test"]["finetuned"].get<double>());
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
