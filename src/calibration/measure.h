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
#include <string>
#include <vector>

#include "calibration/images.h"
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

struct MeasuredStatistics {
  int64_t grams = 0;
  int64_t rows = 0;  // every token of every example: the rows the block sites saw
  int64_t examples = 0;
};

// Measures every site of model.all_linear_sites() and writes the Grams (means over rows) to
// `file` in that order, with the statistics metadata (calibration/statistics_file.h). A Gram
// that is not finite is an InputError naming `model_name` and the Gram: the first in model
// order says where a NaN weight or an overflowing activation starts.
MeasuredStatistics write_statistics(const Model& model, const CalibrationBatches& data, const std::string& model_name,
                                    const std::filesystem::path& file, bool quiet);

}  // namespace amalgam
