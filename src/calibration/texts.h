// Calibration texts for a language model: records of JSONL files (text/text_data.h; a
// {"prompt", "completion"} record counts as its whole text: every token is a linear
// layer's input), drawn as images are: `examples` seeded records split equally between the
// files, tokenized by the model directory's tokenizer. Padding never exists (sequences are
// packed), so every row a statistic counts is a real token.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

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

}  // namespace amalgam
