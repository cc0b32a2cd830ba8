#include "calibration/texts.h"

#include <algorithm>

#include "core/error.h"
#include "data/task.h"
#include "text/text_data.h"
#include "text/tokenizer.h"

namespace amalgam {

namespace fs = std::filesystem;

CalibrationTexts load_calibration_texts(const fs::path& model_dir, const std::vector<fs::path>& files,
                                        const TextCalibrationOptions& options) {
  if (files.empty()) throw InputError("calibration needs at least one text file");
  if (options.examples < 1) throw InputError("calibration needs at least one example");
  const auto tokenizer = text::Tokenizer::load(model_dir);
  CalibrationTexts out;
  const auto count = static_cast<int64_t>(files.size());
  for (int64_t f = 0; f < count; ++f) {
    const fs::path& file = files[static_cast<size_t>(f)];
    const auto records = text::read_text_records(file);
    const int64_t share = options.examples / count + (f < options.examples % count ? 1 : 0);
    if (share > static_cast<int64_t>(records.size()))
      throw InputError(file, "calibration wants " + std::to_string(share) + " records, the file has " +
                                 std::to_string(records.size()));
    for (const int64_t i : sample_indices(static_cast<int64_t>(records.size()), share, options.seed)) {
      const auto& r = records[static_cast<size_t>(i)];
      std::vector<int32_t> ids;
      try {
        ids = tokenizer.encode(r.prompt + r.text);
      } catch (const InputError& e) {
        throw InputError(file, "line " + std::to_string(r.line) + ": " + e.what());
      }
      if (static_cast<int64_t>(ids.size()) > options.max_length) ids.resize(static_cast<size_t>(options.max_length));
      out.tokens += static_cast<int64_t>(ids.size());
      out.sequences.push_back(std::move(ids));
    }
    out.tasks.push_back(file.stem().string());
  }
  if (out.tokens == 0) throw InputError(files.front(), "the calibration records hold no tokens");
  return out;
}

}  // namespace amalgam
