// `amalgam lm eval`: how well a decoder language model predicts a text data set, as the mean
// negative log-likelihood per predicted token (natural log) and its perplexity.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace amalgam {

struct LmEvalOptions {
  int64_t max_length = 512;  // tokens per record, after its special tokens; longer ones are cut
  int64_t batch_size = 8;    // records per forward
  bool quiet = false;
};

struct LmRecordScore {
  size_t line = 0;     // the record's line in the data file
  int64_t tokens = 0;  // tokens predicted
  double nll_sum = 0;  // sum of -log p over them
};

struct LmEvalResult {
  int64_t tokens = 0;
  double nll = 0;         // mean per predicted token
  double perplexity = 0;  // exp(nll)
  std::vector<LmRecordScore> records;
};

// Each record is tokenized as the model's tokenizer says (special tokens included), cut to
// max_length tokens, and every token after the first is predicted from those before it; for
// a {"prompt", "completion"} record only the completion's tokens count (the prompt's tokens
// are those of the prompt tokenized alone, as lm-evaluation-harness splits them).
LmEvalResult evaluate_language_model(const std::filesystem::path& model_dir, const std::filesystem::path& data,
                                     const LmEvalOptions& options);

}  // namespace amalgam
