// `amalgam stats MODEL --data TASK [...] -o STATS`: RegMean's measurement step, the Gram of
// every linear layer's input on seeded training examples.
// `amalgam stats --sum A B ... -o STATS`: pools statistics of runs over parts of the data.
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "io/atomic_output.h"
#include "merge/statistics.h"

namespace amalgam::cli {

void add_stats_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("stats", "Measure the Gram matrices RegMean needs (or pool several runs with --sum)");
  struct Args {
    std::string model, output;
    std::vector<std::string> data, sum;
    CalibrationOptions options;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "checkpoint directory (CLIP vision model)");
  cmd->add_option("--data", a->data, "task directory; repeat to draw the examples from several tasks in equal shares");
  cmd->add_option("--examples", a->options.examples, "calibration examples from the training split (default 256)")
      ->check(CLI::Range(1, 1 << 30));
  cmd->add_option("--batch-size", a->options.batch_size, "images per forward (default 32)")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--seed", a->options.seed, "seed of the example draw (default 0)")->check(non_negative_number());
  cmd->add_option("--sum", a->sum, "statistics files to pool (weighted by their row counts) instead of measuring")
      ->expected(2, 1 << 20);
  cmd->add_option("-o,--output", a->output, "statistics file to write (safetensors)")->required();
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->add_flag("-q,--quiet", a->options.quiet, "no progress bar");
  cmd->callback([a] {
    // Locked and checked before the work: the statistics are written at the end.
    const auto claim = claim_output(a->output, a->force, AtomicOutput::Kind::File);
    if (!a->sum.empty()) {
      if (!a->model.empty() || !a->data.empty()) throw InputError("stats: --sum takes no model or --data");
      std::vector<std::filesystem::path> files(a->sum.begin(), a->sum.end());
      pool_statistics(files, a->output, a->force);
      if (!a->options.quiet)
        std::fprintf(stderr, "amalgam: pooled %zu statistics files -> %s\n", files.size(), a->output.c_str());
      return;
    }
    if (a->model.empty() || a->data.empty())
      throw InputError("stats: give a MODEL and at least one --data TASK_DIR (or --sum)");
    const ClipVisionModel model = ClipVisionModel::load(a->model);
    std::vector<std::filesystem::path> tasks(a->data.begin(), a->data.end());
    const CalibrationImages images =
        load_calibration_images(tasks, load_image_processor_config(a->model), model.config(), a->options);
    const GramStatistics stats = measure_statistics(model, images, a->options, a->model);
    save_statistics(a->output, stats, a->force);
    if (!a->options.quiet)
      std::fprintf(stderr, "amalgam: %zu Grams over %lld rows of %lld examples -> %s\n", stats.grams.size(),
                   static_cast<long long>(stats.rows), static_cast<long long>(stats.examples), a->output.c_str());
  });
}

}  // namespace amalgam::cli
