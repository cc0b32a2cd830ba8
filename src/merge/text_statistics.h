// RegMean's measurement step for language models: the Gram of every linear site's input
// over calibration texts, for any decoder family (model/decoder.h).
//
// Texts come from JSONL files (text/text_data.h; a {"prompt", "completion"} record counts as
// its whole text: every token is a linear layer's input), drawn as images are: `examples`
// seeded records split equally between the files. Padding never exists (sequences are
// packed), so every row counted is a real token.
//
// The model runs block-major: every calibration sequence is embedded, then block 0 runs over
// all of them, its Grams are written, then block 1, ... So memory holds one block's weights
// and accumulators beside the calibration stream (tokens x hidden floats), never every
// block's Grams: a Llama-3.1-8B's are about 30 GB in F32, one block's under 1 GB.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "model/decoder.h"

namespace amalgam {

struct TextCalibrationOptions {
  int64_t examples = 256;    // records drawn in all
  int64_t max_length = 512;  // tokens per record (special tokens included); longer ones are cut
  int64_t batch_size = 8;    // sequences per block call
  uint64_t seed = 0;
  bool quiet = false;
};

struct CalibrationTexts {
  std::vector<std::vector<int32_t>> sequences;  // token ids, one sequence per record
  std::vector<std::string> tasks;               // each file's stem
  int64_t tokens = 0;
};

// Tokenizes the drawn records with the model directory's tokenizer. InputError naming the
// file when it has fewer records than its share, or a line that is not a text record.
CalibrationTexts load_calibration_texts(const std::filesystem::path& model_dir,
                                        const std::vector<std::filesystem::path>& files,
                                        const TextCalibrationOptions& options);

// Measures every site's Gram (the mean of x^T x over the texts' tokens) block by block and
// writes them to `file` as a statistics file (merge/statistics.h), in the model's site
// order. A Gram that is not finite is an InputError naming `model_name` and the Gram.
void write_text_statistics(const DecoderModel& model, const CalibrationTexts& texts,
                           const TextCalibrationOptions& options, const std::filesystem::path& file,
                           const std::string& model_name);

}  // namespace amalgam
