// `amalgam extract-lora FINETUNE --base BASE --rank R -o ADAPTER/`: a PEFT LoRA adapter from a
// fine-tune's difference to its base, with mergekit-extract-lora's options (lora/extract.h).
#include <cstdio>

#include "cli/commands.h"
#include "lora/extract.h"

namespace amalgam::cli {

void add_extract_lora_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("extract-lora", "Extract a PEFT LoRA adapter from a fine-tune and its base");
  struct Args {
    std::string finetune, base, output;
    LoraExtractOptions options;
    bool no_distribute_scale = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("finetune", a->finetune, "fine-tuned checkpoint directory")->required();
  cmd->add_option("--base", a->base, "base checkpoint directory")->required();
  cmd->add_option("--rank,--max-rank", a->options.max_rank, "largest rank of a module (default 128)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_flag("--no-distribute-scale", a->no_distribute_scale,
                "lora_A carries the singular values, lora_B is U (default: sqrt of them in each)");
  cmd->add_flag("--embed-lora", a->options.embed_lora,
                "decompose the embeddings too (default: saved at full rank in modules_to_save)");
  cmd->add_option("--save-module", a->options.save_modules, "a module to save at full rank (repeat)");
  cmd->add_option("-i,--include-regex", a->options.include_regexes, "decompose only modules matching one (repeat)");
  cmd->add_option("-e,--exclude-regex", a->options.exclude_regexes, "leave out modules matching one (repeat)");
  cmd->add_option("--sv-epsilon", a->options.sv_epsilon, "drop singular values at most this (default 0)")
      ->check(non_negative_number());
  cmd->add_flag("--skip-undecomposable", a->options.skip_undecomposable,
                "leave out modules that are no linear layer (default: saved at full rank)");
  cmd->add_option("-o,--output", a->output, "adapter directory to write")->required();
  cmd->add_flag("--force", a->options.force, "replace an existing output amalgam wrote");
  cmd->add_flag("-q,--quiet", a->options.quiet, "no progress bar");
  cmd->callback([a] {
    a->options.distribute_scale = !a->no_distribute_scale;
    const LoraExtractSummary s = extract_lora(a->finetune, a->base, a->output, a->options);
    if (!a->options.quiet)
      std::fprintf(stderr,
                   "amalgam: %lld modules as rank <= %lld LoRA (discarded singular values: %.6g in norm), %lld tensors "
                   "at full rank -> %s\n",
                   static_cast<long long>(s.decomposed), static_cast<long long>(s.rank), s.discarded_norm,
                   static_cast<long long>(s.saved), a->output.c_str());
  });
}

}  // namespace amalgam::cli
