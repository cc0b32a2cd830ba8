#include "calibration/measure.h"

#include <algorithm>

#include "calibration/gram.h"
#include "calibration/hidden_states.h"
#include "calibration/statistics_file.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/progress.h"
#include "data/preprocess.h"
#include "io/safetensors.h"
#include "linalg/linalg.h"

namespace amalgam {

CalibrationBatches calibration_batches(const CalibrationImages& images, int64_t batch_size) {
  CalibrationBatches out{{}, images.count, images.tasks};
  if (images.count == 0) return out;
  const size_t image_floats = images.pixels.size() / static_cast<size_t>(images.count);
  const int64_t step = std::max<int64_t>(1, batch_size);
  for (int64_t first = 0; first < images.count; first += step) {
    const int64_t n = std::min(step, images.count - first);
    out.batches.push_back(
        {std::span(images.pixels)
             .subspan(static_cast<size_t>(first) * image_floats, static_cast<size_t>(n) * image_floats),
         n,
         {}});
  }
  return out;
}

CalibrationBatches calibration_batches(const CalibrationTexts& texts, int64_t batch_size) {
  CalibrationBatches out{{}, static_cast<int64_t>(texts.sequences.size()), texts.tasks};
  const auto step = static_cast<size_t>(std::max<int64_t>(1, batch_size));
  for (size_t first = 0; first < texts.sequences.size(); first += step)
    out.batches.push_back(
        {{}, 0, std::span(texts.sequences).subspan(first, std::min(step, texts.sequences.size() - first))});
  return out;
}

std::unique_ptr<Calibration> load_calibration(const Model& model, const std::filesystem::path& model_dir,
                                              const std::vector<std::filesystem::path>& data,
                                              const CalibrationOptions& image_options,
                                              const TextCalibrationOptions& text_options) {
  auto c = std::make_unique<Calibration>();
  if (const auto image = model.image_input()) {
    c->images = load_calibration_images(data, load_image_processor_config(model_dir), *image, image_options);
    c->batches = calibration_batches(c->images, image_options.batch_size);
  } else {
    c->texts = load_calibration_texts(model_dir, data, text_options);
    c->batches = calibration_batches(c->texts, text_options.batch_size);
  }
  return c;
}

std::vector<TensorSpec> statistics_plan(const Model& model, GramStatistics& header) {
  std::vector<TensorSpec> plan;
  for (const LinearSiteSpec& site : model.all_linear_sites()) {
    plan.push_back({site.gram, DType::F32, {site.width, site.width}});
    for (const auto& w : site.weights) {
      header.weight_grams[w] = site.gram;
      if (site.stored_transposed) header.transposed.insert(w);
    }
  }
  return plan;
}

namespace {

// Writes a block's (or the head's) Grams after checking that they are finite.
void write_grams(const GramCollector& grams, SafetensorsWriter& writer, const std::string& model_name) {
  for (const auto& [name, gram] : grams.means()) {
    const auto values = gram.data<float>();
    if (!all_finite(values.data(), values.size()))
      throw InputError(model_name, name,
                       "not finite: the model's weights or its activations on the calibration data hold NaN or Inf");
    writer.write(name, gram);
  }
}

}  // namespace

MeasuredStatistics write_statistics(const Model& model, const CalibrationBatches& data, const std::string& model_name,
                                    const std::filesystem::path& file, bool quiet, uint64_t max_memory) {
  // The examples' hidden states, embedded batch by batch: in memory within half of
  // `max_memory`, past it in a scratch file beside the output (the first batch's rows per
  // example give the whole set's; for texts an estimate).
  Stream first = model.embed(data.batches.front());
  const auto bytes = static_cast<uint64_t>(static_cast<double>(first.data.size()) * sizeof(float) *
                                           static_cast<double>(data.examples) / static_cast<double>(first.sequences()));
  const auto spill = spill_dir_for(bytes, max_memory, file.parent_path().empty() ? "." : file.parent_path());
  if (spill && !quiet)
    warn("stats: the hidden states (" + std::to_string(bytes >> 20) +
         " MiB) exceed half of --max-memory; they stay in a scratch file beside the output");
  HiddenStates hidden(spill);
  hidden.append(first);
  first = Stream();
  for (size_t b = 1; b < data.batches.size(); ++b) hidden.append(model.embed(data.batches[b]));

  GramStatistics header;  // everything but the Grams, which are written as they finish
  header.rows = hidden.rows();
  header.examples = data.examples;
  header.tasks = data.tasks;
  header.model = model_name;
  const std::vector<TensorSpec> plan = statistics_plan(model, header);
  SafetensorsWriter writer(file, plan, statistics_metadata(header), WriteOrder::Plan);

  const int64_t layers = model.num_layers();
  Progress progress("stats", static_cast<uint64_t>(layers) * hidden.batches(), 0, quiet, "block batches");
  for (int64_t l = 0; l < layers; ++l) {
    GramCollector grams(model.linear_sites(l));
    const auto block = model.read_block(l);
    hidden.for_each(/*write_back=*/true, [&](Stream& batch) {
      model.run_block(l, *block, batch, grams.tap());
      progress.advance(1, 0);
    });
    write_grams(grams, writer, model_name);
  }
  if (auto head_sites = model.linear_sites(-1); !head_sites.empty()) {
    GramCollector grams(std::move(head_sites));
    hidden.for_each(/*write_back=*/false, [&](Stream& batch) { (void)model.head(batch, grams.tap()); });
    write_grams(grams, writer, model_name);
  }
  writer.finish();
  return {static_cast<int64_t>(plan.size()), header.rows, header.examples};
}

}  // namespace amalgam
