// `amalgam lm eval MODEL --data F.jsonl`: a decoder language model's negative log-likelihood
// and perplexity on a text data set.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "eval/language_model.h"

namespace amalgam::cli {

void add_lm_command(CLI::App& app) {
  auto* lm = app.add_subcommand("lm", "Decoder language models (Llama, Mistral, Qwen 2 and 3)");
  lm->require_subcommand(1);
  auto* cmd = lm->add_subcommand("eval", "Mean negative log-likelihood and perplexity on a JSONL text data set");
  struct Args {
    std::string model, data;
    LmEvalOptions options;
    bool json = false, per_record = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("model", a->model, "checkpoint directory with config.json and tokenizer.json")->required();
  cmd->add_option("--data", a->data, "JSONL: {\"text\"} or {\"prompt\", \"completion\"} per line")->required();
  cmd->add_option("--max-length", a->options.max_length, "tokens per record at most (default 512)")
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--batch-size", a->options.batch_size, "records per forward (default 8)")
      ->check(CLI::Range(1, 65536));
  cmd->add_flag("--json", a->json, "JSON output");
  cmd->add_flag("--per-record", a->per_record, "also one line per record (its line, tokens, nll, perplexity)");
  cmd->add_flag("-q,--quiet", a->options.quiet, "no progress");
  cmd->callback([a] {
    const LmEvalResult r = evaluate_language_model(a->model, a->data, a->options);
    if (a->per_record)
      for (const auto& rec : r.records) {
        const double nll = rec.tokens > 0 ? rec.nll_sum / static_cast<double>(rec.tokens) : 0.0;
        if (a->json) {
          nlohmann::ordered_json line{{"line", rec.line}, {"tokens", rec.tokens}};
          line["nll"] = rec.tokens > 0 ? nlohmann::ordered_json(nll) : nlohmann::ordered_json();
          line["perplexity"] = rec.tokens > 0 ? nlohmann::ordered_json(std::exp(nll)) : nlohmann::ordered_json();
          std::cout << line.dump() << "\n";
        } else {
          std::printf("line %zu: %lld tokens, nll %.6f, perplexity %.4f\n", rec.line,
                      static_cast<long long>(rec.tokens), nll, std::exp(nll));
        }
      }
    if (a->json) {
      std::cout << nlohmann::ordered_json{{"tokens", r.tokens}, {"nll", r.nll}, {"perplexity", r.perplexity}}.dump()
                << "\n";
    } else {
      std::printf("%lld tokens, nll %.6f, perplexity %.4f\n", static_cast<long long>(r.tokens), r.nll, r.perplexity);
    }
  });
}

}  // namespace amalgam::cli
