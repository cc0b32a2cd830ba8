// Calibration images: seeded training examples of image tasks, preprocessed for a vision
// model, the data RegMean's statistics and RegMean++'s streams are measured on.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/preprocess.h"
#include "model/model.h"

namespace amalgam {

// `examples` seeded training examples drawn from the tasks (split equally between them, the
// first ones taking the remainder), in batches of `batch_size` images. The same (task,
// count, seed) always draws the same examples, so RegMean and RegMean++ calibrate on the
// same images.
struct CalibrationOptions {
  int64_t examples = 256;
  int64_t batch_size = 32;
  uint64_t seed = 0;
  bool quiet = false;
};
struct CalibrationImages {
  std::vector<float> pixels;  // [count, C, H, W]
  int64_t count = 0;
  std::vector<std::string> tasks;
};
// Preprocessed as `preprocess` says for a model that takes `input` images; InputError
// naming the task when it has fewer training examples than its share or preprocesses to
// another size.
CalibrationImages load_calibration_images(const std::vector<std::filesystem::path>& task_dirs,
                                          const ImageProcessorConfig& preprocess, const ImageInput& input,
                                          const CalibrationOptions& options);

}  // namespace amalgam
