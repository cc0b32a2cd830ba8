// `amalgam tokenize DIR (--text S | --file F.jsonl) [--json]`: the ids a model's tokenizer
// gives a text, as a language-model command will feed them to the model.
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "text/text_data.h"
#include "text/tokenizer.h"

namespace amalgam::cli {

void add_tokenize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "Tokenize text with a model's tokenizer.json");
  struct Args {
    std::string dir, text, file;
    bool json = false, no_special = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("dir", a->dir, "model directory holding tokenizer.json (and tokenizer_config.json)")->required();
  auto* text = cmd->add_option("--text", a->text, "the text to tokenize");
  cmd->add_option("--file", a->file, "JSONL file: one record per line, {\"text\"} or {\"prompt\", \"completion\"}")
      ->excludes(text);
  cmd->add_flag("--json", a->json, "JSON output: {\"ids\": [...], \"tokens\": [...]}, one line per record");
  cmd->add_flag("--no-special-tokens", a->no_special, "do not add the BOS/EOS the tokenizer adds around a text");
  cmd->callback([a, text] {
    // --text "" is a text (the empty one); only a missing --text is an error.
    if (a->file.empty() && text->count() == 0) throw InputError("tokenize: give --text or --file");
    const auto tokenizer = text::Tokenizer::load(a->dir);
    auto print = [&](const std::string& input) {
      const auto ids = tokenizer.encode(input, !a->no_special);
      if (a->json) {
        nlohmann::ordered_json line;
        line["ids"] = ids;
        line["tokens"] = tokenizer.tokens(ids);
        std::cout << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      } else {
        for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
        std::cout << "\n";
      }
    };
    if (a->file.empty()) {
      print(a->text);
      return;
    }
    for (const auto& record : text::read_text_records(a->file)) {
      try {
        print(record.prompt + record.text);
      } catch (const InputError& e) {
        throw InputError(a->file, "line " + std::to_string(record.line) + ": " + e.what());
      }
    }
  });
}

}  // namespace amalgam::cli
