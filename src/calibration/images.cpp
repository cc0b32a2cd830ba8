#include "calibration/images.h"

#include "core/error.h"
#include "core/random.h"
#include "data/task.h"

namespace amalgam {

namespace fs = std::filesystem;

CalibrationImages load_calibration_images(const std::vector<fs::path>& task_dirs,
                                          const ImageProcessorConfig& preprocess, const ImageInput& input,
                                          const CalibrationOptions& options) {
  if (task_dirs.empty()) throw InputError("calibration needs at least one task directory");
  if (options.examples < 1) throw InputError("calibration needs at least one example");
  preprocess.check_channels(input.channels);
  CalibrationImages out;
  const int64_t tasks = static_cast<int64_t>(task_dirs.size());
  for (int64_t t = 0; t < tasks; ++t) {
    const fs::path& dir = task_dirs[static_cast<size_t>(t)];
    const TaskInfo info = read_task_info(dir);
    const ImageShape shape = preprocessed_shape(preprocess, info.image, input.channels);
    if (shape.height != input.size || shape.width != input.size)
      throw InputError(dir, "preprocessing gives " + std::to_string(shape.height) + "x" + std::to_string(shape.width) +
                                " images, the model takes " + std::to_string(input.size) + "x" +
                                std::to_string(input.size));
    const TaskSplit split = load_split(dir, info, "train");
    const int64_t share = options.examples / tasks + (t < options.examples % tasks ? 1 : 0);
    if (share > split.size())
      throw InputError(dir, "calibration wants " + std::to_string(share) + " training examples, the task has " +
                                std::to_string(split.size()));
    const std::vector<int64_t> indices = sample_indices(split.size(), share, options.seed);
    const std::vector<float> pixels = preprocess_batch(split.images, indices, preprocess, input.channels);
    out.pixels.insert(out.pixels.end(), pixels.begin(), pixels.end());
    out.count += share;
    out.tasks.push_back(info.name);
  }
  return out;
}

}  // namespace amalgam
