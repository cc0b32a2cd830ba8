// The statistics file: Gram matrices of every linear layer's input, as RegMean reads them.
//
// For a linear layer that sees input rows x (every token of every calibration image is a
// row), the statistic is G = (1/n) sum x^T x, [d_in, d_in]: the mean over rows, so tasks
// weigh the same whatever their token count. q, k and v read the same input and share one
// Gram. A statistics file is safetensors: one F32 Gram per input site, and metadata with
// the row count (so runs over parts of the data pool back into one), the tasks measured
// and which weight reads which Gram:
//
//   vision_model.encoder.layers.3.self_attn.qkv.gram   F32 [768, 768]
//   __metadata__: {"format": "amalgam-stats", "rows": "12800", "examples": "256",
//                  "tasks": "[\"mnist\"]", "weights": "{\"...q_proj.weight\": \"...qkv.gram\", ...}"}
//
// and, where a family stores weights [in, out] (GPT-2's Conv1D), "transposed": their names,
// so that RegMean solves on their transpose.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"

namespace amalgam {

// The Grams of one model, in memory, in the order they are written.
struct GramStatistics {
  std::vector<std::pair<std::string, Tensor>> grams;  // gram name -> F32 [d, d]
  std::map<std::string, std::string> weight_grams;    // linear weight name -> gram name
  int64_t rows = 0;
  int64_t examples = 0;
  std::vector<std::string> tasks;
  std::string model;                 // what was measured, for the record
  std::set<std::string> transposed;  // weights stored [in, out] (GPT-2's Conv1D)
};

// The metadata of a statistics file (everything in `stats` but its Grams), for writers that
// stream the Grams themselves.
Metadata statistics_metadata(const GramStatistics& stats);

// Writes statistics atomically (refusing an existing file unless `force`).
void save_statistics(const std::filesystem::path& path, const GramStatistics& stats, bool force);

// A statistics file, mapped: Grams are read on demand.
class StatisticsFile {
 public:
  // Validates the format, the metadata and every Gram's shape; errors name the file.
  explicit StatisticsFile(const std::filesystem::path& path);
  const std::filesystem::path& path() const { return reader_.path(); }
  int64_t rows() const { return rows_; }
  int64_t examples() const { return examples_; }
  const std::vector<std::string>& tasks() const { return tasks_; }
  const std::map<std::string, std::string>& weight_grams() const { return weight_grams_; }
  // Weights stored [in, out] (GPT-2's Conv1D): their Gram is of their first dimension.
  const std::set<std::string>& transposed() const { return transposed_; }
  const std::vector<std::string>& gram_names() const { return gram_names_; }
  // The Gram read by linear weight `weight_name`, or nullopt when it is not a linear weight
  // these statistics cover.
  std::optional<Tensor> gram_for_weight(const std::string& weight_name) const;
  // The Gram's values (checked finite) or only its shape (from the header, nothing read).
  Tensor gram(const std::string& gram_name) const;
  Shape gram_shape(const std::string& gram_name) const;

 private:
  SafetensorsReader reader_;
  int64_t rows_ = 0;
  int64_t examples_ = 0;
  std::vector<std::string> tasks_;
  std::map<std::string, std::string> weight_grams_;
  std::set<std::string> transposed_;
  std::vector<std::string> gram_names_;
};

// Writes sum_i a_i G_i / sum_i a_i for every Gram of `inputs` (which must cover the same
// Grams) into `file`, one Gram at a time, with a_i = factor(i, gram name). Rows and
// examples add up; the tasks are the union.
void write_combined_statistics(const std::filesystem::path& file, const std::vector<const StatisticsFile*>& inputs,
                               const std::function<double(size_t, const std::string&)>& factor);

// Pools runs over parts of the data: a_i = n_i, the row counts, which is exactly what one
// run over all their rows gives (`amalgam stats --sum`). Written atomically.
void pool_statistics(const std::vector<std::filesystem::path>& files, const std::filesystem::path& output, bool force);

}  // namespace amalgam
