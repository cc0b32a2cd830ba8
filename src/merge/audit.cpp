#include "merge/audit.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "core/parallel.h"
#include "io/json_file.h"
#include "linalg/linalg.h"
#include "merge/method.h"

namespace amalgam {

namespace fs = std::filesystem;
using nlohmann::json;

TensorAudit::TensorAudit(size_t candidates, size_t numel)
    : candidates_(candidates),
      chunks_(std::max<size_t>(1, (numel + kStreamChunk - 1) / kStreamChunk)),
      partial_(chunks_ * (candidates + 1) * (candidates + 1), 0.0),
      filled_(chunks_, 0) {}

size_t TensorAudit::rows_given() const {
  return coefficient_.empty() ? candidates_ + 1 : candidates_;  // the merged delta's row, or not
}

void TensorAudit::add_deltas(size_t begin, const float* rows, size_t stride, size_t len) {
  const size_t chunk = check_rows(begin, len);
  add_row_gram(static_cast<int64_t>(rows_given()), static_cast<int64_t>(len), rows, static_cast<int64_t>(stride),
               chunk_gram(chunk), static_cast<int64_t>(candidates_ + 1));
  filled_[chunk] = 1;
}

void TensorAudit::add_bf16_deltas(size_t begin, std::span<const uint16_t* const> rows, size_t len) {
  const size_t chunk = check_rows(begin, len);
  if (rows.size() != rows_given()) throw std::logic_error("TensorAudit: wrong number of rows");
  add_row_gram_bf16(rows, static_cast<int64_t>(len), chunk_gram(chunk), static_cast<int64_t>(candidates_ + 1));
  filled_[chunk] = 1;
}

size_t TensorAudit::check_rows(size_t begin, size_t len) const {
  const size_t chunk = begin / kStreamChunk;
  if (len == 0 || chunk >= chunks_ || (begin + len - 1) / kStreamChunk != chunk)
    throw std::logic_error("TensorAudit: rows across chunks");
  return chunk;
}

double* TensorAudit::chunk_gram(size_t chunk) {
  const size_t n = candidates_ + 1;
  return partial_.data() + chunk * n * n;
}

void TensorAudit::set_merged_combination(std::vector<double> row_scale, std::vector<double> coefficient) {
  if (row_scale.size() != candidates_ || coefficient.size() != candidates_ || has_deltas() ||
      std::any_of(row_scale.begin(), row_scale.end(), [](double s) { return s == 0; }))
    throw std::logic_error("TensorAudit::set_merged_combination: bad combination");
  row_scale_ = std::move(row_scale);
  coefficient_ = std::move(coefficient);
}

bool TensorAudit::has_deltas() const {
  return std::any_of(filled_.begin(), filled_.end(), [](unsigned char f) { return f != 0; });
}

void TensorAudit::set(const std::string& key, json value) {
  std::lock_guard lock(mutex_);
  fields_[key] = std::move(value);
}

nlohmann::json TensorAudit::fields() const {
  std::lock_guard lock(mutex_);
  return fields_;
}

namespace {

double safe_ratio(double a, double b) {
  return b > 0 ? a / b : 0.0;
}

}  // namespace

json TensorAudit::to_json() const {
  const size_t t_count = candidates_, n = t_count + 1;
  std::vector<double> gram(n * n, 0.0);
  for (size_t c = 0; c < chunks_; ++c)  // chunk order: the same sums for any thread count
    for (size_t k = 0; k < n * n; ++k) gram[k] += partial_[c * n * n + k];
  auto g = [&](size_t i, size_t j) { return i <= j ? gram[i * n + j] : gram[j * n + i]; };
  if (!coefficient_.empty()) {
    // The rows were scale_t * D_t: their Gram scaled back, then the merged delta
    // M = sum_t a_t D_t with a_t = coefficient_t * scale_t: <M, D_j> = sum_t a_t <D_t, D_j>,
    // <M, M> = sum_t a_t <M, D_t>.
    for (size_t i = 0; i < t_count; ++i)
      for (size_t j = i; j < t_count; ++j) gram[i * n + j] /= row_scale_[i] * row_scale_[j];
    double merged_sq = 0;
    for (size_t j = 0; j < t_count; ++j) {
      double dot = 0;
      for (size_t t = 0; t < t_count; ++t) dot += coefficient_[t] * row_scale_[t] * g(t, j);
      gram[j * n + t_count] = dot;
      merged_sq += coefficient_[j] * row_scale_[j] * dot;
    }
    gram[t_count * n + t_count] = merged_sq;
  }

  json out = json::object();
  std::vector<double> norms(n);
  for (size_t i = 0; i < n; ++i) norms[i] = std::sqrt(std::max(0.0, g(i, i)));
  json cosines = json::array(), merged_cosines = json::array();
  double mean_sq = 0;
  for (size_t i = 0; i < t_count; ++i) {
    json row = json::array();
    for (size_t j = 0; j < t_count; ++j) {
      row.push_back(safe_ratio(g(i, j), norms[i] * norms[j]));
      mean_sq += g(i, j);
    }
    cosines.push_back(std::move(row));
    merged_cosines.push_back(safe_ratio(g(i, t_count), norms[i] * norms[t_count]));
  }
  const double mean_norm = std::sqrt(std::max(0.0, mean_sq)) / static_cast<double>(std::max<size_t>(t_count, 1));
  out["task_vector_norms"] = std::vector<double>(norms.begin(), norms.begin() + static_cast<std::ptrdiff_t>(t_count));
  out["cosines"] = std::move(cosines);
  out["merged_delta_norm"] = norms[t_count];
  out["mean_task_vector_norm"] = mean_norm;
  out["merged_over_mean"] = safe_ratio(norms[t_count], mean_norm);
  out["merged_cosines"] = std::move(merged_cosines);
  std::lock_guard lock(mutex_);
  out.update(fields_);
  return out;
}

void audit_by_reading(const TensorJob& job, const Tensor& merged, TensorAudit& audit) {
  const size_t models = job.model_count();
  const float* result = merged.data<float>().data();
  parallel_chunks(job.numel(), kStreamChunk, [&](size_t chunk_begin, size_t chunk_end) {
    thread_local StoredChunk chunk;
    thread_local std::vector<float> scratch;
    chunk.load(job, chunk_begin, chunk_end, job.has_base());
    scratch.resize((models + 2) * kStreamPiece);
    float* rows = scratch.data();
    float* base = rows + (models + 1) * kStreamPiece;
    for (size_t b = chunk_begin; b < chunk_end; b += kStreamPiece) {
      const size_t len = std::min(kStreamPiece, chunk_end - b);
      if (job.has_base())
        chunk.to_f32(models, b - chunk_begin, len, base);
      else
        std::fill(base, base + len, 0.0f);
      for (size_t t = 0; t < models; ++t) {
        float* row = rows + t * kStreamPiece;
        chunk.to_f32(t, b - chunk_begin, len, row);
        for (size_t i = 0; i < len; ++i) row[i] -= base[i];
      }
      float* merged_row = rows + models * kStreamPiece;
      for (size_t i = 0; i < len; ++i) merged_row[i] = result[b + i] - base[i];
      audit.add_deltas(b, rows, kStreamPiece, len);
    }
  });
}

void audit_deltas(std::span<const std::span<const float>> deltas, std::span<const float> merged_delta,
                  TensorAudit& audit) {
  const size_t rows = deltas.size() + 1;
  parallel_chunks(merged_delta.size(), kStreamChunk, [&](size_t b, size_t e) {
    thread_local std::vector<float> scratch;
    scratch.resize(rows * kStreamChunk);
    for (size_t t = 0; t < rows; ++t) {
      const std::span<const float> row = t < deltas.size() ? deltas[t] : merged_delta;
      std::copy(row.begin() + static_cast<std::ptrdiff_t>(b), row.begin() + static_cast<std::ptrdiff_t>(e),
                scratch.begin() + static_cast<std::ptrdiff_t>(t * kStreamChunk));
    }
    audit.add_deltas(b, scratch.data(), kStreamChunk, e - b);
  });
}

MergeReport::MergeReport(std::string method, std::vector<fs::path> candidates, std::optional<fs::path> base)
    : method_(std::move(method)), candidates_(std::move(candidates)), base_(std::move(base)) {}

void MergeReport::add(const std::string& tensor, const Shape& shape, const TensorAudit& audit) {
  json entry = {{"name", tensor}, {"shape", shape}};
  entry.update(audit.to_json());
  tensors_.push_back(std::move(entry));
}

json MergeReport::to_json() const {
  json candidates = json::array();
  for (const auto& c : candidates_) candidates.push_back(c.string());
  return {{"format", "amalgam-merge-report"},
          {"version", 1},
          {"method", method_},
          {"reference", base_ ? "base" : "zero"},
          {"base", base_ ? json(base_->string()) : json(nullptr)},
          {"candidates", std::move(candidates)},
          {"tensors", tensors_}};
}

json read_merge_report(const fs::path& path) {
  const fs::path file = fs::is_directory(path) ? path / kMergeReportFile : path;
  if (!fs::exists(file)) throw InputError(file, "no merge report here (merged with --no-audit, or not a merge output)");
  json report = read_json_file(file);
  if (!report.is_object() || report.value("format", "") != "amalgam-merge-report" || !report.contains("tensors") ||
      !report["tensors"].is_array() || !report.contains("candidates"))
    throw InputError(file, "not an amalgam merge report");
  return report;
}

// ---- Text: summary lines and tables -------------------------------------------------------

namespace {

std::string fmt_line(const char* fmt, auto... args) {
  char buffer[512];
  std::snprintf(buffer, sizeof buffer, fmt, args...);
  return buffer;
}

// A candidate's short name: its directory's name.
std::vector<std::string> candidate_names(const json& report) {
  std::vector<std::string> names;
  for (const auto& c : report["candidates"]) {
    fs::path p(c.get<std::string>());
    if (!p.has_filename()) p = p.parent_path();
    names.push_back(p.filename().string());
  }
  return names;
}

// The most opposed pair of task vectors of one tensor: (cosine, i, j); cosine 1 when fewer
// than two candidates.
struct Pair {
  double value = 1;
  size_t i = 0, j = 0;
};
Pair min_cosine(const json& tensor) {
  Pair p;
  const auto& c = tensor["cosines"];
  for (size_t i = 0; i < c.size(); ++i)
    for (size_t j = i + 1; j < c.size(); ++j)
      if (c[i][j].get<double>() < p.value) p = {c[i][j].get<double>(), i, j};
  return p;
}
double mean_cosine(const json& tensor) {
  const auto& c = tensor["cosines"];
  double sum = 0;
  size_t pairs = 0;
  for (size_t i = 0; i < c.size(); ++i)
    for (size_t j = i + 1; j < c.size(); ++j, ++pairs) sum += c[i][j].get<double>();
  return pairs ? sum / static_cast<double>(pairs) : 1.0;
}

// The largest off-diagonal subspace interference, normalised by sqrt(rank) (1 = the same
// subspace, 0 = orthogonal).
Pair max_interference(const json& tensor) {
  Pair p{-1, 0, 0};
  const auto& m = tensor["subspace_interference"];
  const double scale = std::sqrt(std::max(1.0, tensor.value("rank", 1.0)));
  for (size_t i = 0; i < m.size(); ++i)
    for (size_t j = i + 1; j < m.size(); ++j)
      if (m[i][j].get<double>() / scale > p.value) p = {m[i][j].get<double>() / scale, i, j};
  return p;
}

struct Worst {
  double value = 0;
  size_t index = 0;
};
Worst max_of(const json& values) {
  Worst w{-1, 0};
  for (size_t i = 0; i < values.size(); ++i)
    if (values[i].get<double>() > w.value) w = {values[i].get<double>(), i};
  return w;
}
double mean_of(const json& values) {
  double s = 0;
  for (const auto& v : values) s += v.get<double>();
  return values.empty() ? 0.0 : s / static_cast<double>(values.size());
}

// The weight matrices (tensors of two or more dimensions), or every tensor when there are
// none: biases and norms are small and noisy, and their cosines would crowd out the layers.
std::vector<const json*> matrices(const json& report) {
  std::vector<const json*> out, all;
  for (const auto& t : report["tensors"]) {
    all.push_back(&t);
    if (t["shape"].size() >= 2) out.push_back(&t);
  }
  return out.empty() ? all : out;
}

std::vector<const json*> tensors_with(const json& report, const char* key) {
  std::vector<const json*> out;
  for (const auto& t : report["tensors"])
    if (t.contains(key)) out.push_back(&t);
  return out;
}

std::string pair_names(const std::vector<std::string>& names, size_t i, size_t j) {
  return (i < names.size() ? names[i] : "?") + "/" + (j < names.size() ? names[j] : "?");
}

}  // namespace

std::vector<std::string> audit_summary(const json& report) {
  const auto names = candidate_names(report);
  const auto& tensors = report["tensors"];
  std::vector<std::string> lines;
  if (tensors.empty()) return lines;
  const bool against_base = report.value("reference", "base") == "base";

  const auto layers = matrices(report);
  double cos_sum = 0;
  const json* most_opposed = nullptr;
  Pair opposed;
  std::vector<double> ratios;
  for (const json* t : layers) {
    cos_sum += mean_cosine(*t);
    const Pair p = min_cosine(*t);
    if (!most_opposed || p.value < opposed.value) most_opposed = t, opposed = p;
    ratios.push_back((*t)["merged_over_mean"].get<double>());
  }
  std::nth_element(ratios.begin(), ratios.begin() + static_cast<std::ptrdiff_t>(ratios.size() / 2), ratios.end());
  std::string line =
      fmt_line("audit: %zu tensors, %zu candidates (%s); over the %zu weight matrices: mean pairwise cosine %.3f",
               tensors.size(), names.size(), against_base ? "task vectors against the base" : "raw weights, no base",
               layers.size(), cos_sum / static_cast<double>(layers.size()));
  if (names.size() > 1)
    line += fmt_line("; most opposed %s in %s (%.3f)", pair_names(names, opposed.i, opposed.j).c_str(),
                     (*most_opposed)["name"].get<std::string>().c_str(), opposed.value);
  line += fmt_line("; merged delta / mean task vector norm: median %.2f", ratios[ratios.size() / 2]);
  lines.push_back(line);

  if (const auto signed_ = tensors_with(report, "sign_conflict_share"); !signed_.empty()) {
    double sum = 0;
    const json* worst = signed_.front();
    for (const json* t : signed_) {
      sum += (*t)["sign_conflict_share"].get<double>();
      if ((*t)["sign_conflict_share"].get<double>() > (*worst)["sign_conflict_share"].get<double>()) worst = t;
    }
    lines.push_back(fmt_line("audit: signs conflict in %.1f%% of entries on average, most in %s (%.1f%%)",
                             100 * sum / static_cast<double>(signed_.size()),
                             (*worst)["name"].get<std::string>().c_str(),
                             100 * (*worst)["sign_conflict_share"].get<double>()));
  }
  if (const auto tsv = tensors_with(report, "energy_kept"); !tsv.empty()) {
    double energy = 0;
    const json* worst = tsv.front();
    Pair worst_pair{-1, 0, 0};
    for (const json* t : tsv) {
      energy += mean_of((*t)["energy_kept"]);
      const Pair p = max_interference(*t);
      if (p.value > worst_pair.value) worst_pair = p, worst = t;
    }
    line = fmt_line("audit: the kept ranks hold %.1f%% of the task vectors' energy on average",
                    100 * energy / static_cast<double>(tsv.size()));
    if (worst_pair.value >= 0)
      line +=
          fmt_line("; largest subspace interference %.3f (of 1) between %s in %s", worst_pair.value,
                   pair_names(names, worst_pair.i, worst_pair.j).c_str(), (*worst)["name"].get<std::string>().c_str());
    lines.push_back(line);
  }
  if (const auto solved = tensors_with(report, "relative_residuals"); !solved.empty()) {
    const json* worst = solved.front();
    Worst worst_task;
    size_t fallbacks = 0;
    const json* worst_condition = solved.front();
    for (const json* t : solved) {
      const Worst w = max_of((*t)["relative_residuals"]);
      if (w.value > worst_task.value) worst_task = w, worst = t;
      fallbacks += (*t).value("fallback", false);
      if ((*t)["condition"].get<double>() > (*worst_condition)["condition"].get<double>()) worst_condition = t;
    }
    lines.push_back(fmt_line(
        "audit: %zu linear layers solved; worst relative residual %.4f (%s, %s); %zu fallback "
        "solve(s); largest condition number %.3g (%s)",
        solved.size(), worst_task.value, worst_task.index < names.size() ? names[worst_task.index].c_str() : "?",
        (*worst)["name"].get<std::string>().c_str(), fallbacks, (*worst_condition)["condition"].get<double>(),
        (*worst_condition)["name"].get<std::string>().c_str()));
  }
  return lines;
}

namespace {

// Rows sorted by `key` (descending), the first `top` of them.
std::vector<const json*> worst_first(std::vector<const json*> rows, size_t top, auto key) {
  std::stable_sort(rows.begin(), rows.end(), [&](const json* a, const json* b) { return key(*a) > key(*b); });
  if (rows.size() > top) rows.resize(top);
  return rows;
}

size_t name_width(const std::vector<const json*>& rows) {
  size_t w = 6;
  for (const json* t : rows) w = std::max(w, (*t)["name"].get<std::string>().size());
  return w;
}

std::string task_vector_table(const json& report, const std::vector<std::string>& names, size_t top) {
  const auto rows = worst_first(matrices(report), top, [](const json& t) { return -min_cosine(t).value; });
  const int w = static_cast<int>(name_width(rows));
  std::ostringstream s;
  s << "Task vectors of the weight matrices, most opposed first (cosines between candidates' task vectors)\n";
  s << fmt_line("%-*s  %10s  %10s  %8s  %8s  %-24s  %13s\n", w, "tensor", "min |tv|", "max |tv|", "mean cos", "min cos",
                "most opposed", "merged/mean");
  for (const json* t : rows) {
    const auto& norms = (*t)["task_vector_norms"];
    double lo = INFINITY, hi = 0;
    for (const auto& v : norms) lo = std::min(lo, v.get<double>()), hi = std::max(hi, v.get<double>());
    const Pair p = min_cosine(*t);
    s << fmt_line("%-*s  %10.4g  %10.4g  %8.3f  %8.3f  %-24s  %13.3f\n", w, (*t)["name"].get<std::string>().c_str(),
                  norms.empty() ? 0.0 : lo, hi, mean_cosine(*t), p.value,
                  names.size() > 1 ? pair_names(names, p.i, p.j).c_str() : "-", (*t)["merged_over_mean"].get<double>());
  }
  return s.str();
}

// How much each candidate shaped the merge: the mean, over tensors, of its task vector's
// cosine with the merged delta, and its share of the summed task vector norms.
std::string contribution_table(const json& report, const std::vector<std::string>& names) {
  std::vector<double> cosine(names.size(), 0.0), share(names.size(), 0.0);
  size_t count = 0;
  for (const json* tensor : matrices(report)) {
    const json& t = *tensor;
    const auto& norms = t["task_vector_norms"];
    double total = 0;
    for (const auto& v : norms) total += v.get<double>();
    for (size_t i = 0; i < names.size() && i < norms.size(); ++i) {
      cosine[i] += t["merged_cosines"][i].get<double>();
      share[i] += safe_ratio(norms[i].get<double>(), total);
    }
    ++count;
  }
  std::ostringstream s;
  s << "Candidates, over the weight matrices: mean cosine of each task vector with the merged delta, and its share "
       "of the task vector norms\n";
  s << fmt_line("%-24s  %12s  %10s\n", "candidate", "cos(merged)", "norm share");
  for (size_t i = 0; i < names.size(); ++i)
    s << fmt_line("%-24s  %12.3f  %10.3f\n", names[i].c_str(), count ? cosine[i] / static_cast<double>(count) : 0.0,
                  count ? share[i] / static_cast<double>(count) : 0.0);
  return s.str();
}

std::string sign_table(const json& report, size_t top) {
  const auto rows = worst_first(tensors_with(report, "sign_conflict_share"), top,
                                [](const json& t) { return t["sign_conflict_share"].get<double>(); });
  if (rows.empty()) return "";
  const int w = static_cast<int>(name_width(rows));
  std::ostringstream s;
  s << "Sparsification and signs, most conflicted first\n";
  s << fmt_line("%-*s  %10s  %10s  %12s\n", w, "tensor", "conflicts", "kept", "sign-elected");
  for (const json* t : rows)
    s << fmt_line("%-*s  %9.2f%%  %9.2f%%  %11.2f%%\n", w, (*t)["name"].get<std::string>().c_str(),
                  100 * (*t)["sign_conflict_share"].get<double>(), 100 * mean_of((*t)["kept_fraction"]),
                  100 * mean_of((*t).value("elected_fraction", (*t)["kept_fraction"])));
  return s.str();
}

std::string tsv_table(const json& report, const std::vector<std::string>& names, size_t top) {
  const auto rows =
      worst_first(tensors_with(report, "energy_kept"), top, [](const json& t) { return max_interference(t).value; });
  if (rows.empty()) return "";
  const int w = static_cast<int>(name_width(rows));
  std::ostringstream s;
  s << "Low-rank task vectors, most interfering subspaces first (||U_i^T U_j||_F / sqrt(rank))\n";
  s << fmt_line("%-*s  %6s  %11s  %11s  %12s  %-24s\n", w, "tensor", "rank", "min energy", "mean energy",
                "interference", "pair");
  for (const json* t : rows) {
    double lo = INFINITY;
    for (const auto& v : (*t)["energy_kept"]) lo = std::min(lo, v.get<double>());
    const Pair p = max_interference(*t);
    s << fmt_line("%-*s  %6lld  %10.1f%%  %10.1f%%  %12.3f  %-24s\n", w, (*t)["name"].get<std::string>().c_str(),
                  static_cast<long long>((*t).value("rank", 0)), 100 * lo, 100 * mean_of((*t)["energy_kept"]),
                  std::max(0.0, p.value), p.value >= 0 ? pair_names(names, p.i, p.j).c_str() : "-");
  }
  return s.str();
}

std::string regmean_table(const json& report, const std::vector<std::string>& names, size_t top) {
  const auto rows = worst_first(tensors_with(report, "relative_residuals"), top,
                                [](const json& t) { return max_of(t["relative_residuals"]).value; });
  if (rows.empty()) return "";
  const int w = static_cast<int>(name_width(rows));
  std::ostringstream s;
  s << "Closed-form layers, worst regression residual first (tr((W-W_t) G_t (W-W_t)^T) / tr(W_t G_t W_t^T))\n";
  s << fmt_line("%-*s  %10s  %-16s  %10s  %10s  %8s  %-16s\n", w, "tensor", "worst", "task", "mean", "condition",
                "fallback", "largest Gram");
  for (const json* t : rows) {
    const Worst r = max_of((*t)["relative_residuals"]);
    const Worst g = max_of((*t)["gram_trace_share"]);
    const std::string gram =
        (g.index < names.size() ? names[g.index] : "?") + fmt_line(" %.0f%%", 100 * std::max(0.0, g.value));
    s << fmt_line("%-*s  %10.4f  %-16s  %10.4f  %10.3g  %8s  %-16s\n", w, (*t)["name"].get<std::string>().c_str(),
                  r.value, r.index < names.size() ? names[r.index].c_str() : "?", mean_of((*t)["relative_residuals"]),
                  (*t)["condition"].get<double>(), (*t).value("fallback", false) ? "yes" : "no", gram.c_str());
  }
  return s.str();
}

}  // namespace

std::string audit_tables(const json& report, size_t top) {
  const auto names = candidate_names(report);
  std::ostringstream s;
  s << "merge_method: " << report.value("method", "?") << ", " << names.size() << " candidate(s), "
    << report["tensors"].size() << " tensors\n";
  for (const auto& line : audit_summary(report)) s << line << "\n";
  for (const std::string& table :
       {regmean_table(report, names, top), tsv_table(report, names, top), sign_table(report, top),
        task_vector_table(report, names, top), contribution_table(report, names)})
    if (!table.empty()) s << "\n" << table;
  return s.str();
}

}  // namespace amalgam
