#include "eval/language_model.h"

#include <cmath>

#include "core/error.h"
#include "core/progress.h"
#include "model/decoder.h"
#include "text/text_data.h"
#include "text/tokenizer.h"

namespace amalgam {

namespace {

struct TokenizedRecord {
  size_t line;
  std::vector<int32_t> ids;
  int64_t first_scored;  // the first position whose token is predicted (at least 1)
};

TokenizedRecord tokenize_record(const text::Tokenizer& tokenizer, const text::TextRecord& r, int64_t max_length) {
  TokenizedRecord t{r.line, tokenizer.encode(r.prompt + r.text), 1};
  if (!r.prompt.empty()) {
    const auto prompt = tokenizer.encode(r.prompt);
    t.first_scored = std::max<int64_t>(1, static_cast<int64_t>(prompt.size() - tokenizer.special_suffix_length()));
  }
  if (static_cast<int64_t>(t.ids.size()) > max_length) t.ids.resize(static_cast<size_t>(max_length));
  return t;
}

}  // namespace

LmEvalResult evaluate_language_model(const std::filesystem::path& model_dir, const std::filesystem::path& data,
                                     const LmEvalOptions& options) {
  const auto tokenizer = text::Tokenizer::load(model_dir);
  const DecoderModel model = DecoderModel::open(model_dir);
  std::vector<TokenizedRecord> records;
  for (const auto& r : text::read_text_records(data)) {
    try {
      records.push_back(tokenize_record(tokenizer, r, options.max_length));
    } catch (const InputError& e) {
      throw InputError(data, "line " + std::to_string(r.line) + ": " + e.what());
    }
  }
  if (records.empty()) throw InputError(data, "no records");

  LmEvalResult result;
  const auto batches = (records.size() + static_cast<size_t>(options.batch_size) - 1) / options.batch_size;
  Progress progress("lm eval", batches * static_cast<size_t>(model.config().num_hidden_layers), 0, options.quiet,
                    "blocks");
  DecoderBlockWeights block;  // each block converted into the previous one's buffers
  for (size_t first = 0; first < records.size(); first += static_cast<size_t>(options.batch_size)) {
    const size_t end = std::min(records.size(), first + static_cast<size_t>(options.batch_size));
    std::vector<std::vector<int32_t>> sequences;
    std::vector<int32_t> targets;  // per stream row: the next token where it is scored, else -1
    for (size_t i = first; i < end; ++i) {
      const auto& r = records[i];
      sequences.push_back(r.ids);
      for (size_t t = 0; t < r.ids.size(); ++t)
        targets.push_back(t + 1 < r.ids.size() && static_cast<int64_t>(t + 1) >= r.first_scored ? r.ids[t + 1] : -1);
    }
    Stream stream = model.embed(sequences);
    for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) {
      model.load_block(l, block);
      model.run_block(l, block, stream);
      progress.advance(1, 0);
    }
    const auto nll = model.negative_log_likelihood(stream, targets);
    for (size_t i = first; i < end; ++i) {
      LmRecordScore score{records[i].line, 0, 0.0};
      const auto offset = static_cast<size_t>(stream.offsets[i - first]);
      for (size_t t = 0; t < records[i].ids.size(); ++t)
        if (targets[offset + t] >= 0) {
          ++score.tokens;
          score.nll_sum += nll[offset + t];
        }
      result.tokens += score.tokens;
      result.nll += score.nll_sum;
      result.records.push_back(score);
    }
  }
  if (result.tokens == 0) throw InputError(data, "no token to predict: every record is shorter than two tokens");
  result.nll /= static_cast<double>(result.tokens);
  result.perplexity = std::exp(result.nll);
  return result;
}

}  // namespace amalgam
