// RegMean's measurement step for any model family: the Gram of every linear site's input
// over calibration examples (images or texts), written as a statistics file.
//
// The model runs block-major: every calibration batch is embedded, then block 0 runs over
// all of them and its Grams are written, then block 1, ... So memory holds one block's
// weights and accumulators beside the calibration stream (tokens x width floats), never
// every block's Grams: a Llama-3.1-8B's are about 30 GB in F32, one block's under 1 GB.
// Each accumulator sees the batches in order, so the file has the bits a batch-major run
// would give, on any thread count.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "calibration/images.h"
#include "calibration/statistics_file.h"
#include "calibration/texts.h"
#include "model/model.h"

namespace amalgam {

// A model's calibration examples as embed() batches: views into the images or texts, which
// must outlive them.
struct CalibrationBatches {
  std::vector<ModelInput> batches;
  int64_t examples = 0;
  std::vector<std::string> tasks;
};
CalibrationBatches calibration_batches(const CalibrationImages& images, int64_t batch_size);
CalibrationBatches calibration_batches(const CalibrationTexts& texts, int64_t batch_size);

// A model's calibration data as it reads it: task directories of images for a vision model
// (preprocessed as `model_dir`'s preprocessor_config.json says), JSONL texts for a language
// model (tokenized by `model_dir`'s tokenizer), and the batches that view them (so it is
// neither copied nor moved).
struct Calibration {
  CalibrationImages images;
  CalibrationTexts texts;
  CalibrationBatches batches;
};
std::unique_ptr<Calibration> load_calibration(const Model& model, const std::filesystem::path& model_dir,
                                              const std::vector<std::filesystem::path>& data,
                                              const CalibrationOptions& image_options,
                                              const TextCalibrationOptions& text_options);

// The plan of a statistics file for `model`'s sites (F32 [width, width] Grams in site order),
// filling `header`'s weight-to-Gram map and the weights stored transposed.
std::vector<TensorSpec> statistics_plan(const Model& model, GramStatistics& header);

struct MeasuredStatistics {
  int64_t grams = 0;
  int64_t rows = 0;  // every token of every example: the rows the block sites saw
  int64_t examples = 0;
};

// Measures every site of model.all_linear_sites() and writes the Grams (means over rows) to
// `file` in that order, with the statistics metadata (calibration/statistics_file.h). A Gram
// that is not finite is an InputError naming `model_name` and the Gram: the first in model
// order says where a NaN weight or an overflowing activation starts. The examples' hidden
// states stay in memory within half of `max_memory`, in a scratch file beside `file` past it.
MeasuredStatistics write_statistics(const Model& model, const CalibrationBatches& data, const std::string& model_name,
                                    const std::filesystem::path& file, bool quiet, uint64_t max_memory);

}  // namespace amalgam
