// `amalgam generate -o DIR`: a synthetic checkpoint family (base + fine-tunes) for demos and
// benchmarks.
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "data/synthetic.h"
#include "merge/config.h"
#include "model/decoder.h"

namespace amalgam::cli {

void add_generate_command(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("generate", "Write a synthetic base checkpoint and fine-tunes of it (demos, benchmarks)");
  struct Args {
    std::string output, dtype = "bfloat16", shard_size = "5GB", tokenizer;
    SyntheticFamily spec;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("-o,--output", a->output, "directory to create (base/, model_1/, ...)")->required();
  std::string shapes;
  for (const auto& name : decoder_shape_names()) shapes += (shapes.empty() ? "" : ", ") + name;
  auto* architecture = cmd->add_option("--architecture", a->spec.architecture,
                                       "a real model's shape and tensors (" + shapes + "), random weights");
  cmd->add_option("--tokenizer", a->tokenizer, "copy this directory's tokenizer files into every checkpoint");
  cmd->add_option("--models", a->spec.models, "number of fine-tunes (0: the base alone)")->check(CLI::Range(0, 1000));
  auto* layers = cmd->add_option("--layers", a->spec.layers, "transformer layers (with --architecture: its count)")
                     ->check(CLI::Range(1, 1000));
  // The plain layout's sizes; an architecture fixes its own.
  cmd->add_option("--hidden", a->spec.hidden, "hidden size")->check(CLI::Range(1, 65536))->excludes(architecture);
  cmd->add_option("--intermediate", a->spec.intermediate, "MLP size")
      ->check(CLI::Range(1, 262144))
      ->excludes(architecture);
  cmd->add_option("--vocab", a->spec.vocab, "vocabulary size")->check(CLI::Range(1, 1000000))->excludes(architecture);
  cmd->add_option("--dtype", a->dtype, "bfloat16 (default), float16, float32");
  cmd->add_option("--seed", a->spec.seed, "seed")->check(non_negative_number());
  cmd->add_option("--max-shard-size", a->shard_size, "largest shard (default 5GB)");
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->callback([a, layers] {
    const auto dtype = parse_dtype_name(a->dtype);
    if (!dtype || !is_floating(*dtype)) throw InputError("--dtype: '" + a->dtype + "' is not a float dtype");
    a->spec.dtype = *dtype;
    a->spec.max_shard_bytes = parse_byte_size(a->shard_size);
    a->spec.tokenizer = a->tokenizer;
    if (!a->spec.architecture.empty() && layers->count() == 0) a->spec.layers = 0;
    write_synthetic_family(a->output, a->spec, a->force);
    std::cerr << "amalgam: wrote a base and " << a->spec.models << " fine-tunes of "
              << human_bytes(static_cast<double>(synthetic_checkpoint_bytes(a->spec))) << " each to " << a->output
              << "\n";
  });
}

}  // namespace amalgam::cli
