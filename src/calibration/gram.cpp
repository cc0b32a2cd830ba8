#include "calibration/gram.h"

#include <stdexcept>

#include "core/parallel.h"
#include "linalg/linalg.h"

namespace amalgam {

GramAccumulator::GramAccumulator(int64_t dim) : dim_(dim), sum_(static_cast<size_t>(dim * dim), 0.0) {}

void GramAccumulator::add(const float* rows, int64_t count, int64_t ld) {
  if (count == 0) return;
  // One batch in float through SYRK (its error is that of a count-term float sum), then
  // added into the double total.
  thread_local std::vector<float> batch;
  batch.resize(static_cast<size_t>(dim_ * dim_));
  syrk_upper(count, dim_, 1.0f, rows, ld, 0.0f, batch.data(), dim_);
  const float* values = batch.data();
  parallel_chunks(static_cast<size_t>(dim_), 16, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      double* s = sum_.data() + i * static_cast<size_t>(dim_);
      const float* b = values + i * static_cast<size_t>(dim_);
      for (size_t j = i; j < static_cast<size_t>(dim_); ++j) s[j] += b[j];
    }
  });
  rows_ += count;
}

Tensor GramAccumulator::mean() const {
  Tensor out = Tensor::uninitialized(DType::F32, {dim_, dim_});
  float* g = out.mutable_data<float>().data();
  const double scale = rows_ > 0 ? 1.0 / static_cast<double>(rows_) : 0.0;
  for (int64_t i = 0; i < dim_; ++i)
    for (int64_t j = i; j < dim_; ++j)
      g[i * dim_ + j] = g[j * dim_ + i] = static_cast<float>(sum_[static_cast<size_t>(i * dim_ + j)] * scale);
  return out;
}

GramCollector::GramCollector(std::vector<LinearSiteSpec> sites) : sites_(std::move(sites)) {
  for (size_t i = 0; i < sites_.size(); ++i) {
    if (!index_.emplace(std::pair{sites_[i].layer, sites_[i].role}, i).second)
      throw std::logic_error("GramCollector: site listed twice: " + sites_[i].gram);
    accumulators_.emplace_back(sites_[i].width);
  }
}

void GramCollector::add(const SiteInput& in) {
  const auto it = index_.find({in.layer, in.role});
  if (it == index_.end()) throw std::logic_error("GramCollector: a tap from a site the table does not list");
  accumulators_[it->second].add(in.data, in.rows, in.width);
}

std::vector<std::pair<std::string, Tensor>> GramCollector::means() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < sites_.size(); ++i) out.emplace_back(sites_[i].gram, accumulators_[i].mean());
  return out;
}

}  // namespace amalgam
