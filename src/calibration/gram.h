// Gram accumulation: sum x^T x over a linear layer's input rows, and one such sum for every
// linear site of a model's site table.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "model/linear_sites.h"

namespace amalgam {

// Accumulates sum x^T x over batches of rows: each batch through ssyrk in float, the
// running sum in double, so a long run loses no precision.
class GramAccumulator {
 public:
  explicit GramAccumulator(int64_t dim);
  // rows: [count, dim] with leading dimension `ld`.
  void add(const float* rows, int64_t count, int64_t ld);
  int64_t dim() const { return dim_; }
  int64_t rows() const { return rows_; }
  // The mean (1/rows) sum x^T x as a full symmetric F32 [dim, dim] tensor.
  Tensor mean() const;

 private:
  int64_t dim_;
  int64_t rows_ = 0;
  std::vector<double> sum_;  // upper triangle valid
};

// Accumulates one Gram per linear site of a model's site table (any family) while the model
// runs: tap() is the model's tap.
class GramCollector {
 public:
  explicit GramCollector(std::vector<LinearSiteSpec> sites);
  void add(const SiteInput& input);
  SiteTap tap() {
    return [this](const SiteInput& in) { add(in); };
  }
  const std::vector<LinearSiteSpec>& sites() const { return sites_; }
  // Each site's mean Gram, in the table's order, under its Gram name.
  std::vector<std::pair<std::string, Tensor>> means() const;

 private:
  std::vector<LinearSiteSpec> sites_;
  std::map<std::pair<int64_t, SiteRole>, size_t> index_;  // (layer, role) -> position in sites_
  std::vector<GramAccumulator> accumulators_;
};

}  // namespace amalgam
