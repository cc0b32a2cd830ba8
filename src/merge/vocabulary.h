// mergekit's tokenizer options: the output's vocabulary, and each model's embedding rows
// mapped into it by token string (mergekit's BuildTokenizer and PermutedEmbeddings).
//
//   vocabulary   base: the base model's tokenizer, stripped of tokens at or past its config's
//                vocab_size; a model: that model's tokenizer; union: the base's, then every
//                other model's tokens it lacks (in model order), then every model's added
//                tokens (the first model's settings win), each new one an added token at the
//                next id; then the tokenizer: section's tokens
//   rows         per model, per embedding (embed_tokens, lm_head): a token the model has keeps
//                its own row; one it lacks takes its source's row: the one model that has it,
//                else the base's, else the mean over the models that have it (a token in no
//                model: zeros, warned), unless tokens: names a source (a model's row for the
//                token, a model's row of another token or id, zeros), which `force` applies
//                to every model; rows past the vocabulary (pad_to_multiple_of) take the mean
//                of the model's rows
//
// The permuted embeddings are written to a scratch checkpoint per model beside the output,
// and the merge reads them in place of the models' own.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/atomic_output.h"
#include "io/checkpoint.h"
#include "merge/config.h"

namespace amalgam {

// One model as the vocabulary step sees it: its directory, its tokenizer.json's vocabulary
// (token -> id, added tokens included, ids at or past config.json's vocab_size left out).
struct ModelTokens {
  std::filesystem::path dir;
  std::map<std::string, int64_t> ids;
  nlohmann::json added;    // tokenizer.json's added_tokens, as written (their settings)
  int64_t vocab_size = 0;  // config.json's, else the vocabulary's size
};

// Reads a model directory's tokenizer.json and config.json (InputError naming the file when
// the tokenizer is missing or not a Hugging Face tokenizer).
ModelTokens read_model_tokens(const std::filesystem::path& dir);

struct OutputVocabulary {
  nlohmann::json tokenizer;            // the output's tokenizer.json
  std::vector<nlohmann::json> added;   // the added tokens, for tokenizer_config.json
  std::map<std::string, int64_t> ids;  // token -> id in the output
  int64_t rows = 0;                    // embedding rows: the last id + 1, padded
  bool changed = false;                // differs from the files the output carries
  std::filesystem::path files_from;    // whose tokenizer_config.json and special_tokens_map.json
};

// The output vocabulary of `settings` over `models` (models[0] the base, or the first model
// without one).
OutputVocabulary build_output_vocabulary(const TokenizerSettings& settings, const std::vector<ModelTokens>& models);

// Writes tokenizer.json, and tokenizer_config.json and special_tokens_map.json (from
// `files_from`, with the added tokens) into `dir`.
void write_tokenizer_files(const OutputVocabulary& vocabulary, const std::filesystem::path& dir);

// Each model's embedding tensors in the output vocabulary: scratch checkpoints beside
// `output`, removed with this object. `models[i]` reads `tokens[i]`'s checkpoint; `token_models`
// maps a TokenEmbedding's config entry (its candidate, or nullopt for the base) to an index of
// `models`.
class PermutedEmbeddings {
 public:
  PermutedEmbeddings(const OutputVocabulary& vocabulary, const TokenizerSettings& settings,
                     const std::vector<const CheckpointReader*>& models, const std::vector<ModelTokens>& tokens,
                     const std::vector<std::string>& tensor_names,
                     const std::function<size_t(std::optional<size_t>)>& token_model,
                     const std::filesystem::path& output);
  // The checkpoint that holds model i's permuted tensors.
  const CheckpointReader& reader(size_t model) const { return *readers_.at(model); }

 private:
  std::vector<std::unique_ptr<AtomicOutput>> scratch_;
  std::vector<std::unique_ptr<CheckpointReader>> readers_;
};

// The tensors of a checkpoint whose rows are the vocabulary's: the embeddings and LM head
// (merge/plan.h's embedding_or_head) with config.json's vocab_size rows.
std::vector<std::string> vocabulary_tensors(const CheckpointReader& checkpoint, int64_t vocab_size);

}  // namespace amalgam
