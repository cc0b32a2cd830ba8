#include "merge/text_statistics.h"

#include <algorithm>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/progress.h"
#include "data/task.h"
#include "io/safetensors.h"
#include "linalg/linalg.h"
#include "merge/statistics.h"
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

void write_text_statistics(const DecoderModel& model, const CalibrationTexts& texts,
                           const TextCalibrationOptions& options, const fs::path& file, const std::string& model_name) {
  const int64_t layers = model.config().num_hidden_layers;
  GramStatistics header;  // everything but the Grams, which are written as they finish
  header.rows = texts.tokens;
  header.examples = static_cast<int64_t>(texts.sequences.size());
  header.tasks = texts.tasks;
  header.model = model_name;
  std::vector<TensorSpec> plan;
  for (int64_t l = 0; l < layers; ++l)
    for (const LinearSiteSpec& site : model.linear_sites(l)) {
      plan.push_back({site.gram, DType::F32, {site.width, site.width}});
      for (const auto& w : site.weights) header.weight_grams[w] = site.gram;
    }
  SafetensorsWriter writer(file, plan, statistics_metadata(header), WriteOrder::Plan);

  const auto batch_size = static_cast<size_t>(std::max<int64_t>(1, options.batch_size));
  std::vector<TokenStream> streams;
  for (size_t first = 0; first < texts.sequences.size(); first += batch_size) {
    const auto end =
        texts.sequences.begin() + static_cast<std::ptrdiff_t>(std::min(texts.sequences.size(), first + batch_size));
    streams.push_back(model.embed({texts.sequences.begin() + static_cast<std::ptrdiff_t>(first), end}));
  }
  Progress progress("stats", static_cast<uint64_t>(layers) * streams.size(), 0, options.quiet, "block batches");
  DecoderBlockWeights block;  // each block converted into the previous one's buffers
  for (int64_t l = 0; l < layers; ++l) {
    GramCollector grams(model.linear_sites(l));
    model.load_block(l, block);
    const DecoderTap tap = [&](const DecoderSiteInput& in) {
      grams.add(in.layer, static_cast<int>(in.site), in.data, in.rows, in.width);
    };
    for (auto& stream : streams) {
      check_interrupt();
      model.run_block(l, block, stream, tap);
      progress.advance(1, 0);
    }
    // A NaN weight or an overflowing activation reaches every later Gram; the first one in
    // model order names where it starts.
    for (const auto& [name, gram] : grams.finish(0, {}, {}).grams) {
      const auto values = gram.data<float>();
      if (!all_finite(values.data(), values.size()))
        throw InputError(model_name, name,
                         "not finite: the model's weights or its activations on the calibration texts hold NaN or Inf");
      writer.write(name, gram);
    }
  }
  writer.finish();
}

}  // namespace amalgam
