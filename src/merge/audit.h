// The merge audit: what every merge writes to merge_report.json, tensor by tensor, so that
// a merged model can be explained (which layers the tasks fight over, how much each
// candidate shaped each layer, whether a solve was ill-conditioned).
//
// For every merged tensor the engine records each candidate's task vector norm
// ||W_t - W0|| (W0 the base; zero for a merge without one), the cosines between the task
// vectors, the merged delta's norm against the norm of the mean task vector, and each task
// vector's cosine with the merged delta. Methods add their own fields with
// TensorAudit::set: kept fractions and sign conflicts (TIES, DARE, breadcrumbs), ranks,
// energy kept and subspace interference (TSV-M), regression residuals, condition numbers
// and Gram trace shares (RegMean, RegMean++).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace amalgam {

class TensorJob;

class TensorAudit {
 public:
  TensorAudit(size_t candidates, size_t numel);

  size_t candidates() const { return candidates_; }

  // Rows 0..T-1: the candidates' task vectors over elements [begin, begin + len); row T: the
  // merged delta over the same elements; rows `stride` floats apart. The elements lie in one
  // kStreamChunk chunk, whole or in pieces added in order by one thread. Thread-safe across
  // chunks; the chunks' sums are added in chunk order, so the report has the same bits
  // whatever the thread count.
  void add_deltas(size_t begin, const float* rows, size_t stride, size_t len);
  // The same rows as BF16 values (raw bits, one pointer a row), as a merge without a base
  // reads them from BF16 checkpoints: the products are exact either way.
  void add_bf16_deltas(size_t begin, std::span<const uint16_t* const> rows, size_t len);
  bool has_deltas() const;

  // For a method whose merged delta is a fixed combination of the task vectors (linear,
  // task arithmetic), set before the first add_deltas: the rows passed are then only T,
  // row t being row_scale[t] * D_t (row_scale nonzero), and the merged delta is
  // sum_t coefficient[t] * row t. Its inner products follow from the rows' in the report,
  // which saves the method writing the rows twice and the kernel one row of nine.
  void set_merged_combination(std::vector<double> row_scale, std::vector<double> coefficient);

  // A method's own field for this tensor (thread-safe).
  void set(const std::string& key, nlohmann::json value);

  // The method's fields only, and everything (norms, cosines and the method's fields).
  nlohmann::json fields() const;
  nlohmann::json to_json() const;

 private:
  size_t rows_given() const;
  size_t check_rows(size_t begin, size_t len) const;  // the rows' chunk
  double* chunk_gram(size_t chunk);

  size_t candidates_;
  size_t chunks_;
  std::vector<double> partial_;  // [chunks, (T+1)^2]: each chunk's Gram of the rows
  std::vector<unsigned char> filled_;
  std::vector<double> row_scale_, coefficient_;  // empty unless set_merged_combination
  nlohmann::json fields_ = nlohmann::json::object();
  mutable std::mutex mutex_;
};

// Fills `audit` for a method that did not record the deltas while merging: reads every
// candidate (and the base) again, chunk by chunk, beside the merged tensor.
void audit_by_reading(const TensorJob& job, const Tensor& merged, TensorAudit& audit);
// The same from task vectors and the merged delta already in memory (MASS's bundle build).
void audit_deltas(std::span<const std::span<const float>> deltas, std::span<const float> merged_delta,
                  TensorAudit& audit);

// The whole report: one entry per merged tensor, in the order they were merged.
class MergeReport {
 public:
  MergeReport(std::string method, std::vector<std::filesystem::path> candidates,
              std::optional<std::filesystem::path> base);
  void add(const std::string& tensor, const Shape& shape, const TensorAudit& audit);
  nlohmann::json to_json() const;

 private:
  std::string method_;
  std::vector<std::filesystem::path> candidates_;
  std::optional<std::filesystem::path> base_;
  nlohmann::json tensors_ = nlohmann::json::array();
};

inline constexpr const char* kMergeReportFile = "merge_report.json";

// Reads OUT/merge_report.json (or the file itself); InputError when it is not a report.
nlohmann::json read_merge_report(const std::filesystem::path& path);

// The report as text: a few summary lines (printed after every merge), and the tables of
// `amalgam audit` (the `top` worst tensors of each kind first).
std::vector<std::string> audit_summary(const nlohmann::json& report);
std::string audit_tables(const nlohmann::json& report, size_t top);

}  // namespace amalgam
