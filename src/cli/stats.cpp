// `amalgam stats MODEL --data TASK [...] -o STATS`: RegMean's measurement step, the Gram of
// every linear layer's input on seeded training examples, for any model family (chosen by
// config.json's model_type): image task directories for a vision model, JSONL text files
// for a language model.
// `amalgam stats --sum A B ... -o STATS`: pools statistics of runs over parts of the data.
#include <cstdio>

#include "calibration/measure.h"
#include "calibration/statistics_file.h"
#include "cli/commands.h"
#include "core/error.h"
#include "io/atomic_output.h"
#include "merge/engine.h"  // default_max_memory
#include "model/model.h"

namespace amalgam::cli {

namespace {

struct StatsArgs {
  std::string model, output;
  std::vector<std::string> data, sum;
  CalibrationOptions options;
  int64_t max_length = 512;
  int64_t batch_size = 0;  // 0: the model kind's default
  std::string max_memory;  // empty: half of physical memory
  bool force = false;
};

// The model's calibration examples: image task directories for a vision model, JSONL text
// files for a language model, each kind with its own default batch size.
std::unique_ptr<Calibration> load_stats_calibration(const StatsArgs& a, const Model& model) {
  CalibrationOptions images = a.options;
  TextCalibrationOptions texts;
  texts.examples = a.options.examples;
  texts.max_length = a.max_length;
  texts.seed = a.options.seed;
  texts.quiet = a.options.quiet;
  if (a.batch_size > 0) images.batch_size = texts.batch_size = a.batch_size;
  return load_calibration(model, a.model, {a.data.begin(), a.data.end()}, images, texts);
}

}  // namespace

void add_stats_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("stats", "Measure the Gram matrices RegMean needs (or pool several runs with --sum)");
  using Args = StatsArgs;
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "checkpoint directory (CLIP vision model or decoder language model)");
  cmd->add_option("--data", a->data,
                  "task directory (images) or JSONL file (texts); repeat to draw the examples from several in equal "
                  "shares");
  cmd->add_option("--examples", a->options.examples, "calibration examples from the training split (default 256)")
      ->check(CLI::Range(1, 1 << 30));
  cmd->add_option("--max-length", a->max_length, "texts: tokens per record, longer ones are cut (default 512)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--batch-size", a->batch_size, "images per forward (default 32), or texts per block call (default 8)")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--seed", a->options.seed, "seed of the example draw (default 0)")->check(non_negative_number());
  cmd->add_option("--sum", a->sum, "statistics files to pool (weighted by their row counts) instead of measuring")
      ->expected(2, 1 << 20);
  cmd->add_option("-o,--output", a->output, "statistics file to write (safetensors)")->required();
  cmd->add_option("--max-memory", a->max_memory,
                  "memory the examples' hidden states may take, e.g. 8GB (default: half of physical memory); past "
                  "half of it they go to a scratch file beside the output");
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
      throw InputError("stats: give a MODEL and at least one --data TASK_DIR or TEXTS.jsonl (or --sum)");
    const std::unique_ptr<Model> model = open_model(a->model);
    const std::unique_ptr<Calibration> calibration = load_stats_calibration(*a, *model);
    AtomicOutput output(a->output, a->force, AtomicOutput::Kind::File);
    const uint64_t max_memory = a->max_memory.empty() ? default_max_memory() : parse_byte_size(a->max_memory);
    const MeasuredStatistics done =
        write_statistics(*model, calibration->batches, a->model, output.staging(), a->options.quiet, max_memory);
    output.commit();
    if (!a->options.quiet)
      std::fprintf(stderr, "amalgam: %lld Grams over %lld rows of %lld examples -> %s\n",
                   static_cast<long long>(done.grams), static_cast<long long>(done.rows),
                   static_cast<long long>(done.examples), a->output.c_str());
  });
}

}  // namespace amalgam::cli
