// `amalgam generate -o DIR`: a synthetic checkpoint family (base + fine-tunes) for demos and
// benchmarks.
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "data/synthetic.h"
#include "merge/config.h"

namespace amalgam::cli {

void add_generate_command(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("generate", "Write a synthetic base checkpoint and fine-tunes of it (demos, benchmarks)");
  struct Args {
    std::string output, dtype = "bfloat16", shard_size = "5GB";
    SyntheticFamily spec;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("-o,--output", a->output, "directory to create (base/, model_1/, ...)")->required();
  cmd->add_option("--models", a->spec.models, "number of fine-tunes")->check(CLI::Range(1, 1000));
  cmd->add_option("--layers", a->spec.layers, "transformer layers")->check(CLI::Range(1, 1000));
  cmd->add_option("--hidden", a->spec.hidden, "hidden size")->check(CLI::Range(1, 65536));
  cmd->add_option("--intermediate", a->spec.intermediate, "MLP size")->check(CLI::Range(1, 262144));
  cmd->add_option("--vocab", a->spec.vocab, "vocabulary size")->check(CLI::Range(1, 1000000));
  cmd->add_option("--dtype", a->dtype, "bfloat16 (default), float16, float32");
  cmd->add_option("--seed", a->spec.seed, "seed")->check(non_negative_number());
  cmd->add_option("--max-shard-size", a->shard_size, "largest shard (default 5GB)");
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->callback([a] {
    const auto dtype = parse_dtype_name(a->dtype);
    if (!dtype || !is_floating(*dtype)) throw InputError("--dtype: '" + a->dtype + "' is not a float dtype");
    a->spec.dtype = *dtype;
    a->spec.max_shard_bytes = parse_byte_size(a->shard_size);
    write_synthetic_family(a->output, a->spec, a->force);
    std::cerr << "amalgam: wrote a base and " << a->spec.models << " fine-tunes of "
              << human_bytes(static_cast<double>(synthetic_checkpoint_bytes(a->spec))) << " each to " << a->output
              << "\n";
  });
}

}  // namespace amalgam::cli
