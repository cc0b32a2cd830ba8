// mergekit's newer methods (nearswap, passthrough, karcher, multislerp, nuslerp,
// model_stock, arcee_fusion, sce, ram, ramplus_tl, della, della_linear), each against a reference computed here in
// double straight from its definition in mergekit's code, and against the properties that define it: karcher and
// multislerp of two equal-norm models equal slerp at t = 0.5; model_stock of identical
// fine-tunes returns them; copies of one model return it.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"
#include "merge/task_arithmetic_family.h"
#include "merge_method_fixtures.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::run_amalgam;
using testing::TempDir;
using testing::write_bytes;
using Vec = std::vector<double>;

Vec random_vec(size_t n, uint64_t seed, double mean = 0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(mean, 1.0);
  Vec v(n);
  for (auto& x : v) x = static_cast<float>(normal(rng));  // representable in F32
  return v;
}

Tensor tensor(const Vec& v, Shape shape = {}) {
  return vec({v.begin(), v.end()}, std::move(shape));
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

void expect_close(const std::vector<float>& got, const Vec& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol * scale) << "entry " << i;
}

// slerp of two vectors as mergekit's nuslerp defines it (norms clamped at 1e-7, linear when
// sin(theta) < 1e-8).
Vec reference_slerp(double t, const Vec& a, const Vec& b) {
  const double na = std::max(std::sqrt(dot(a, a)), 1e-7), nb = std::max(std::sqrt(dot(b, b)), 1e-7);
  const double theta = std::acos(std::clamp(dot(a, b) / (na * nb), -1.0, 1.0));
  Vec out(a.size());
  for (size_t i = 0; i < a.size(); ++i)
    out[i] = std::abs(std::sin(theta)) < 1e-8
                 ? (1 - t) * a[i] + t * b[i]
                 : (std::sin((1 - t) * theta) * a[i] + std::sin(t * theta) * b[i]) / std::sin(theta);
  return out;
}

TEST(MergekitMethods, NearSwapHandWorked) {
  // |b - a| = 0.05, 1, 0, 4 with t = 0.1: weights 1, 0.1, 1, 0.025.
  const auto got = run("nearswap", {vec({0.05f, 1, 1, -2})}, vec({0, 0, 1, 2}), {{}}, {{"t", 0.1}});
  expect_near(got, {0.05f, 0.1f, 1.0f, 0.025f * -2 + 0.975f * 2});
}

TEST(MergekitMethods, PassthroughScalesAndRefusesABase) {
  expect_near(run("passthrough", {vec({1, -2, 3})}, std::nullopt, {{{"scale", 2.0}}}), {2, -4, 6});
  expect_near(run("passthrough", {vec({1, -2, 3})}, std::nullopt, {{}}), {1, -2, 3});
  EXPECT_THROW(run("passthrough", {vec({1, -2, 3})}, vec({0, 0, 0}), {{}}), InputError);
}

// mergekit's karcher_merge_tensors in double.
Vec reference_karcher(const std::vector<Vec>& x, int max_iter, double tol) {
  const size_t n = x[0].size();
  std::vector<double> norms;
  for (const auto& v : x) norms.push_back(std::sqrt(dot(v, v)));
  std::vector<Vec> units;
  std::vector<size_t> valid;
  for (size_t i = 0; i < x.size(); ++i) {
    Vec u(n, 0.0);
    if (norms[i] > 0)
      for (size_t k = 0; k < n; ++k) u[k] = x[i][k] / norms[i];
    units.push_back(u);
    if (norms[i] > tol) valid.push_back(i);
  }
  const double a = 1.0 / static_cast<double>(valid.size());
  Vec u(n, 0.0);
  for (size_t i : valid)
    for (size_t k = 0; k < n; ++k) u[k] += a * units[i][k];
  const double nu = std::sqrt(dot(u, u));
  for (auto& v : u) v /= nu;
  for (int it = 0; it < max_iter; ++it) {
    Vec t(n, 0.0);
    for (size_t i : valid) {
      const double c = std::clamp(dot(u, units[i]), -1.0, 1.0), theta = std::acos(c);
      if (theta < tol) continue;
      for (size_t k = 0; k < n; ++k) t[k] += a * theta / std::sin(theta) * (units[i][k] - c * u[k]);
    }
    const double nt = std::sqrt(dot(t, t));
    if (nt < tol) break;
    for (size_t k = 0; k < n; ++k) u[k] = std::cos(nt) * u[k] + std::sin(nt) * t[k] / nt;
    const double nn = std::sqrt(dot(u, u));
    for (auto& v : u) v /= nn;
  }
  double s = 0;
  for (double v : norms) s += v / static_cast<double>(x.size());
  for (auto& v : u) v *= s;
  return u;
}

TEST(MergekitMethods, KarcherMatchesTheReferenceAndTwoEqualNormsGiveSlerp) {
  const std::vector<Vec> x = {random_vec(300, 1, 0.3), random_vec(300, 2, 0.3), random_vec(300, 3, 0.3)};
  for (const int iters : {0, 1, 10}) {
    const auto got = run("karcher", {tensor(x[0]), tensor(x[1]), tensor(x[2])}, std::nullopt, {{}, {}, {}},
                         {{"max_iter", iters}, {"tol", 1e-5}});
    expect_close(got, reference_karcher(x, iters, 1e-5), 1e-5);
  }
  // Two vectors of the same norm: the geodesic midpoint, which slerp at t = 0.5 gives.
  Vec b = x[1];
  const double f = std::sqrt(dot(x[0], x[0]) / dot(b, b));
  for (auto& v : b) v = static_cast<float>(v * f);
  const auto karcher = run("karcher", {tensor(x[0]), tensor(b)}, std::nullopt, {{}, {}});
  expect_close(karcher, reference_slerp(0.5, x[0], b), 1e-5);
  expect_near(karcher, run("slerp", {tensor(b)}, tensor(x[0]), {{}}, {{"t", 0.5}}), 1e-4f);
  // Copies of one model return it.
  expect_close(run("karcher", {tensor(x[2]), tensor(x[2])}, std::nullopt, {{}, {}}), x[2], 1e-6);
}

// mergekit's multislerp in double.
Vec reference_multislerp(const std::vector<Vec>& models, Vec w, const Vec* base) {
  const size_t n = models[0].size();
  const double eps = 1e-8;
  double total = 0;
  for (double v : w) total += v;
  for (auto& v : w) v /= total;
  std::vector<Vec> x = models;
  if (base)
    for (auto& v : x)
      for (size_t k = 0; k < n; ++k) v[k] -= (*base)[k];
  std::vector<double> norms;
  std::vector<Vec> units;
  for (const auto& v : x) {
    norms.push_back(std::sqrt(dot(v, v)));
    Vec u(n);
    for (size_t k = 0; k < n; ++k) u[k] = v[k] / (norms.back() + eps);
    units.push_back(u);
  }
  Vec mean(n, 0.0);
  for (size_t i = 0; i < x.size(); ++i)
    for (size_t k = 0; k < n; ++k) mean[k] += w[i] * units[i][k];
  const double nm = std::sqrt(dot(mean, mean));
  for (auto& v : mean) v /= nm;
  Vec tangent(n, 0.0);
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = dot(units[i], mean);
    for (size_t k = 0; k < n; ++k) tangent[k] += w[i] * (units[i][k] - d * mean[k]);
  }
  const double tn = std::sqrt(dot(tangent, tangent)) + eps;
  double avg = 0;
  for (size_t i = 0; i < x.size(); ++i) avg += norms[i] * w[i];
  Vec out(n);
  for (size_t k = 0; k < n; ++k)
    out[k] = (mean[k] * std::cos(tn) + tangent[k] * std::sin(tn) / tn) * avg + (base ? (*base)[k] : 0.0);
  return out;
}

TEST(MergekitMethods, MultiSlerpMatchesTheReferenceAndTwoEqualNormsGiveSlerp) {
  const Vec a = random_vec(257, 4), b = random_vec(257, 5), c = random_vec(257, 6), base = random_vec(257, 7);
  const std::vector<Params> weights = {{{"weight", 1.0}}, {{"weight", 2.0}}, {{"weight", 0.5}}};
  expect_close(run("multislerp", {tensor(a), tensor(b), tensor(c)}, std::nullopt, weights),
               reference_multislerp({a, b, c}, {1.0, 2.0, 0.5}, nullptr), 1e-5);
  expect_close(run("multislerp", {tensor(a), tensor(b), tensor(c)}, tensor(base), weights),
               reference_multislerp({a, b, c}, {1.0, 2.0, 0.5}, &base), 1e-5);
  Vec b2 = b;
  const double f = std::sqrt(dot(a, a) / dot(b, b));
  for (auto& v : b2) v = static_cast<float>(v * f);
  expect_close(run("multislerp", {tensor(a), tensor(b2)}, std::nullopt, {{{"weight", 1.0}}, {{"weight", 1.0}}}),
               reference_slerp(0.5, a, b2), 1e-5);
  // Antipodal models with equal weights: two fall back to their weighted sum (here zero).
  Vec neg = a;
  for (auto& v : neg) v = -v;
  expect_close(run("multislerp", {tensor(a), tensor(neg)}, std::nullopt, {{{"weight", 1.0}}, {{"weight", 1.0}}}),
               Vec(a.size(), 0.0), 1e-6);
}

TEST(MergekitMethods, NuSlerpPerTensorPerRowAndPerColumnMatchTheReference) {
  const size_t rows = 6, cols = 40;
  const Vec a = random_vec(rows * cols, 8), b = random_vec(rows * cols, 9), base = random_vec(rows * cols, 10);
  const Shape shape = {static_cast<int64_t>(rows), static_cast<int64_t>(cols)};
  const std::vector<Params> w = {{{"weight", 1.0}}, {{"weight", 3.0}}};  // t = 0.75
  const double t = 0.75;
  // Flattened (the default): one slerp over the whole tensor; with a base, of the task vectors.
  expect_close(run("nuslerp", {tensor(a, shape), tensor(b, shape)}, std::nullopt, w), reference_slerp(t, a, b), 1e-5);
  Vec da = a, db = b;
  for (size_t k = 0; k < a.size(); ++k) da[k] -= base[k], db[k] -= base[k];
  Vec with_base = reference_slerp(t, da, db);
  for (size_t k = 0; k < a.size(); ++k) with_base[k] += base[k];
  expect_close(run("nuslerp", {tensor(a, shape), tensor(b, shape)}, tensor(base, shape), w), with_base, 1e-5);
  // Each row, then each column.
  Vec by_row(a.size()), by_column(a.size());
  for (size_t r = 0; r < rows; ++r) {
    const Vec ra(a.begin() + r * cols, a.begin() + (r + 1) * cols),
        rb(b.begin() + r * cols, b.begin() + (r + 1) * cols);
    const Vec s = reference_slerp(t, ra, rb);
    std::copy(s.begin(), s.end(), by_row.begin() + r * cols);
  }
  for (size_t c = 0; c < cols; ++c) {
    Vec ca(rows), cb(rows);
    for (size_t r = 0; r < rows; ++r) ca[r] = a[r * cols + c], cb[r] = b[r * cols + c];
    const Vec s = reference_slerp(t, ca, cb);
    for (size_t r = 0; r < rows; ++r) by_column[r * cols + c] = s[r];
  }
  expect_close(run("nuslerp", {tensor(a, shape), tensor(b, shape)}, std::nullopt, w, {{"nuslerp_flatten", 0}}), by_row,
               1e-5);
  expect_close(run("nuslerp", {tensor(a, shape), tensor(b, shape)}, std::nullopt, w,
                   {{"nuslerp_flatten", 0}, {"nuslerp_row_wise", 1}}),
               by_column, 1e-5);
  // Weights summing to zero take t = 0.5.
  expect_close(run("nuslerp", {tensor(a), tensor(b)}, std::nullopt, {{{"weight", 1.0}}, {{"weight", -1.0}}}),
               reference_slerp(0.5, a, b), 1e-5);
}

// mergekit's ModelStockMergeTask in double, over rows of `length`.
Vec reference_model_stock(const std::vector<Vec>& w, const Vec& w0, size_t length) {
  const size_t n = w0.size(), models = w.size();
  Vec out(n);
  for (size_t first = 0; first < n; first += length) {
    std::vector<Vec> d;
    for (const auto& m : w) {
      Vec v(length);
      for (size_t k = 0; k < length; ++k) v[k] = m[first + k] - w0[first + k];
      d.push_back(v);
    }
    double cos_sum = 0;
    int pairs = 0;
    for (size_t i = 0; i < models; ++i)
      for (size_t j = i + 1; j < models; ++j, ++pairs)
        cos_sum +=
            std::clamp(dot(d[i], d[j]) / std::max(std::sqrt(dot(d[i], d[i]) * dot(d[j], d[j])), 1e-6), -1.0, 1.0);
    const double c = cos_sum / pairs, N = static_cast<double>(models), t = N * c / (1 + (N - 1) * c);
    for (size_t k = 0; k < length; ++k) {
      double mean = 0;
      for (const auto& m : w) mean += m[first + k] / N;
      out[first + k] = t * mean + (1 - t) * w0[first + k];
    }
  }
  return out;
}

TEST(MergekitMethods, ModelStockMatchesTheReferenceAndIdenticalFineTunesReturnThem) {
  const size_t rows = 5, cols = 30;
  const Shape shape = {static_cast<int64_t>(rows), static_cast<int64_t>(cols)};
  const Vec w0 = random_vec(rows * cols, 11);
  std::vector<Vec> w;
  for (uint64_t s = 0; s < 3; ++s) {
    Vec v = random_vec(rows * cols, 20 + s, 0.0);
    const Vec shared = random_vec(rows * cols, 30);
    for (size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>(w0[k] + 0.1 * v[k] + 0.2 * shared[k]);
    w.push_back(v);
  }
  const std::vector<Tensor> models = {tensor(w[0], shape), tensor(w[1], shape), tensor(w[2], shape)};
  expect_close(run("model_stock", models, tensor(w0, shape), {{}, {}, {}}), reference_model_stock(w, w0, rows * cols),
               1e-6);
  expect_close(run("model_stock", models, tensor(w0, shape), {{}, {}, {}}, {{"filter_wise", 1}}),
               reference_model_stock(w, w0, cols), 1e-6);
  // Identical fine-tunes: cos = 1, t = 1, the fine-tune itself.
  expect_close(run("model_stock", {tensor(w[1], shape), tensor(w[1], shape)}, tensor(w0, shape), {{}, {}}), w[1], 1e-6);
}

// mergekit's ArceeFusionMergeTask in double (quantiles from every element, sorted).
Vec reference_arcee_fusion(const Vec& a, const Vec& b, size_t length) {
  const size_t n = a.size();
  Vec importance(n);
  for (size_t first = 0; first < n; first += length) {
    auto softmax = [&](const Vec& x) {
      double mx = -INFINITY, z = 0;
      for (size_t i = 0; i < length; ++i) mx = std::max(mx, x[first + i]);
      Vec p(length);
      for (size_t i = 0; i < length; ++i) z += p[i] = std::exp(x[first + i] - mx);
      for (auto& v : p) v = v / z + 1e-8;
      return p;
    };
    const Vec p = softmax(b), q = softmax(a);
    double kl = 0;
    for (size_t i = 0; i < length; ++i) kl += p[i] * std::log(p[i] / q[i]);
    for (size_t i = 0; i < length; ++i) importance[first + i] = std::abs(b[first + i] - a[first + i]) * kl;
  }
  Vec sorted = importance;
  std::sort(sorted.begin(), sorted.end());
  auto quantile = [&](double q) { return sorted[static_cast<size_t>(q * static_cast<double>(n - 1))]; };
  const double threshold = quantile(0.5) + 1.5 * (quantile(0.75) - quantile(0.25));
  Vec out(n);
  for (size_t k = 0; k < n; ++k) out[k] = importance[k] >= threshold ? b[k] : a[k];
  return out;
}

TEST(MergekitMethods, ArceeFusionKeepsTheOutlyingChangesOfTheReference) {
  const size_t rows = 8, cols = 50;
  const Shape shape = {static_cast<int64_t>(rows), static_cast<int64_t>(cols)};
  const Vec a = random_vec(rows * cols, 50);
  Vec b = a;
  const Vec change = random_vec(rows * cols, 51);
  for (size_t k = 0; k < b.size(); ++k) b[k] = static_cast<float>(b[k] + 0.05 * change[k] * (k % 7 == 0 ? 10 : 1));
  const auto got = run("arcee_fusion", {tensor(b, shape)}, tensor(a, shape), {{}});
  const Vec want = reference_arcee_fusion(a, b, cols);
  expect_close(got, want, 1e-7);
  size_t changed = 0;
  for (size_t k = 0; k < want.size(); ++k) changed += want[k] != a[k];
  EXPECT_GT(changed, 0u);               // some changes kept ...
  EXPECT_LT(changed, want.size() / 4);  // ... the outliers only
}

// mergekit's sce_merge in double.
Vec reference_sce(const std::vector<Vec>& w, const Vec& w0, double topk) {
  const size_t n = w0.size(), m = w.size();
  std::vector<Vec> d(m, Vec(n));
  for (size_t i = 0; i < m; ++i)
    for (size_t k = 0; k < n; ++k) d[i][k] = static_cast<float>(w[i][k] - w0[k]);
  if (topk < 1) {
    Vec var(n);
    size_t nonzero = 0;
    for (size_t k = 0; k < n; ++k) {
      double mean = 0, sq = 0;
      for (size_t i = 0; i < m; ++i) mean += d[i][k] / static_cast<double>(m);
      for (size_t i = 0; i < m; ++i) sq += (d[i][k] - mean) * (d[i][k] - mean);
      var[k] = sq / static_cast<double>(m);
      nonzero += var[k] != 0;
    }
    const auto keep = static_cast<size_t>(static_cast<double>(nonzero) * topk);
    std::vector<size_t> order(n);
    for (size_t k = 0; k < n; ++k) order[k] = k;
    std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return var[x] > var[y]; });
    std::vector<bool> kept(n, false);
    for (size_t r = 0; r < keep; ++r) kept[order[r]] = true;
    for (auto& v : d)
      for (size_t k = 0; k < n; ++k)
        if (!kept[k]) v[k] = 0;
  }
  Vec weight(m);
  double total = 0;
  for (size_t i = 0; i < m; ++i) total += weight[i] = dot(d[i], d[i]) / static_cast<double>(n);
  for (auto& v : weight) v = std::abs(total) < 1e-6 ? 1.0 / static_cast<double>(m) : v / total;
  Vec out(n);
  for (size_t k = 0; k < n; ++k) {
    double sum = 0;
    for (size_t i = 0; i < m; ++i) sum += d[i][k];
    const double elected = sum >= 0 ? 1 : -1;
    double merged = 0, ws = 0;
    for (size_t i = 0; i < m; ++i) {
      const double sign = d[i][k] > 0 ? 1 : d[i][k] < 0 ? -1 : 0;
      if (sign != elected) continue;
      merged += weight[i] * d[i][k];
      ws += weight[i];
    }
    out[k] = w0[k] + merged / std::max(ws, 1e-6);
  }
  return out;
}

TEST(MergekitMethods, SceMatchesTheReferenceWithAndWithoutSelection) {
  const Vec w0 = random_vec(500, 60);
  std::vector<Vec> w;
  for (uint64_t s = 0; s < 3; ++s) {
    Vec v = random_vec(500, 61 + s);
    for (size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>(w0[k] + (0.1 + 0.1 * s) * v[k]);
    w.push_back(v);
  }
  const std::vector<Tensor> models = {tensor(w[0]), tensor(w[1]), tensor(w[2])};
  for (const double topk : {1.0, 0.3, 0.01})
    expect_close(run("sce", models, tensor(w0), {{}, {}, {}}, {{"select_topk", topk}}), reference_sce(w, w0, topk),
                 1e-6);
  // Copies of one fine-tune: every entry elected, equal weights: the fine-tune.
  expect_close(run("sce", {tensor(w[1]), tensor(w[1])}, tensor(w0), {{}, {}}), w[1], 1e-6);
}

// mergekit's ram_merge and ramplus_tl_merge in double.
Vec reference_ram(const std::vector<Vec>& w, const Vec& w0, bool plus, double r, double alpha, double eps) {
  const size_t n = w0.size(), m = w.size();
  auto changed = [&](size_t i, size_t k) { return std::abs(w[i][k] - w0[k]) > eps; };
  std::vector<int> count(n, 0);
  for (size_t k = 0; k < n; ++k)
    for (size_t i = 0; i < m; ++i) count[k] += changed(i, k);
  Vec lambda(m, 1.0);
  if (plus)
    for (size_t i = 0; i < m; ++i) {
      double shared = 0, unique = 0;
      for (size_t k = 0; k < n; ++k)
        if (changed(i, k)) (count[k] > 1 ? shared : unique) += 1;
      lambda[i] = 1 + r * std::clamp(shared / std::max(unique, eps), 0.0, alpha);
    }
  Vec out = w0;
  for (size_t k = 0; k < n; ++k)
    for (size_t i = 0; i < m; ++i)
      if (changed(i, k)) out[k] += count[k] == 1 ? lambda[i] * (w[i][k] - w0[k]) : (w[i][k] - w0[k]) / count[k];
  return out;
}

TEST(MergekitMethods, RamAndRamPlusMatchTheReference) {
  // Sparse task vectors: each model changes a third of the entries, so entries are changed by
  // none, one or several models.
  const Vec w0 = random_vec(600, 70);
  std::vector<Vec> w;
  for (uint64_t s = 0; s < 3; ++s) {
    Vec v = w0;
    const Vec change = random_vec(600, 71 + s);
    for (size_t k = 0; k < v.size(); ++k)
      if ((k * (s + 3) + s) % 3 == 0) v[k] = static_cast<float>(v[k] + 0.1 * change[k]);
    w.push_back(v);
  }
  const std::vector<Tensor> models = {tensor(w[0]), tensor(w[1]), tensor(w[2])};
  expect_close(run("ram", models, tensor(w0), {{}, {}, {}}), reference_ram(w, w0, false, 0, 0, 1e-5), 1e-6);
  expect_close(run("ramplus_tl", models, tensor(w0), {{}, {}, {}}, {{"r", 0.5}, {"alpha", 0.8}}),
               reference_ram(w, w0, true, 0.5, 0.8, 1e-5), 1e-6);
  // One model: its task vector whole (RAM), boosted by nothing it shares (RAM+).
  expect_close(run("ramplus_tl", {tensor(w[0])}, tensor(w0), {{}}), w[0], 1e-6);
}

// mergekit's della_magprune, L1 rescale and (for della) TIES consensus, in double. The
// Bernoulli draws are amalgam's seeded ones (uniform01 at the job's per-model seed): mergekit
// draws from torch's unseeded generator, so only the draw's source is shared.
Vec reference_della(const std::vector<Vec>& w, const Vec& w0, size_t rows, size_t cols, double density, double epsilon,
                    const std::vector<double>& weight, bool consensus, bool normalize, const TensorJob& job) {
  const size_t n = w0.size(), m = w.size();
  std::vector<Vec> d(m, Vec(n, 0.0));
  for (size_t t = 0; t < m; ++t) {
    Vec delta(n);
    for (size_t k = 0; k < n; ++k)
      delta[k] = static_cast<float>(static_cast<float>(w[t][k]) - static_cast<float>(w0[k]));
    std::vector<bool> keep(n, false);
    for (size_t r = 0; r < rows; ++r) {
      std::vector<size_t> order(cols);
      for (size_t j = 0; j < cols; ++j) order[j] = j;
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t c) {
        return std::abs(delta[r * cols + a]) < std::abs(delta[r * cols + c]);
      });
      for (size_t rank = 0; rank < cols; ++rank) {
        const size_t k = r * cols + order[rank];
        const double p = density - epsilon + 2 * epsilon * static_cast<double>(rank) / static_cast<double>(cols - 1);
        keep[k] = uniform01(job.seed_for(t), k) < p;
      }
    }
    double l1 = 0, kept_l1 = 0;
    for (size_t k = 0; k < n; ++k) {
      l1 += std::abs(delta[k]);
      if (keep[k]) kept_l1 += std::abs(delta[k]);
    }
    for (size_t k = 0; k < n; ++k) d[t][k] = keep[k] ? weight[t] * delta[k] * l1 / kept_l1 : 0.0;
  }
  Vec out(n);
  for (size_t k = 0; k < n; ++k) {
    double vote = 0;
    for (size_t t = 0; t < m; ++t) vote += d[t][k];
    double mixed = 0, divisor = 0;
    for (size_t t = 0; t < m; ++t) {
      const bool agree = !consensus || d[t][k] * (vote >= 0 ? 1 : -1) > 0;
      if (!agree) continue;
      mixed += d[t][k];
      divisor += weight[t];
    }
    if (!consensus) divisor = weight[0] + weight[1];
    out[k] = w0[k] + (normalize && divisor != 0 ? mixed / divisor : mixed);
  }
  return out;
}

TEST(MergekitMethods, DellaAndDellaLinearMatchTheReference) {
  const size_t rows = 20, cols = 64, n = rows * cols;
  const Shape shape = {static_cast<int64_t>(rows), static_cast<int64_t>(cols)};
  const Vec w0 = random_vec(n, 80);
  std::vector<Vec> w;
  for (uint64_t s = 0; s < 2; ++s) {
    Vec v = random_vec(n, 81 + s);
    for (size_t k = 0; k < n; ++k) v[k] = static_cast<float>(w0[k] + 0.1 * v[k]);
    w.push_back(v);
  }
  const std::vector<Tensor> models = {tensor(w[0], shape), tensor(w[1], shape)};
  const std::vector<Params> p = {{{"weight", 1.0}, {"density", 0.4}, {"epsilon", 0.1}},
                                 {{"weight", 0.5}, {"density", 0.4}, {"epsilon", 0.1}}};
  const TensorJob job("layers.0.w", models, tensor(w0, shape), p, {}, 5);  // run()'s job: the same seeds
  expect_close(run("della", models, tensor(w0, shape), p, {}, 5),
               reference_della(w, w0, rows, cols, 0.4, 0.1, {1.0, 0.5}, true, true, job), 1e-5);
  expect_close(run("della_linear", models, tensor(w0, shape), p, {}, 5),
               reference_della(w, w0, rows, cols, 0.4, 0.1, {1.0, 0.5}, false, false, job), 1e-5);
  // The draw keeps about `density` of the entries, the larger ones more often.
  const auto one = run("della_linear", {models[0]}, tensor(w0, shape), {p[0]}, {}, 5);
  size_t kept = 0, kept_large = 0, large = 0;
  for (size_t r = 0; r < rows; ++r) {
    Vec row(w[0].begin() + r * cols, w[0].begin() + (r + 1) * cols);
    for (size_t j = 0; j < cols; ++j) row[j] = std::abs(row[j] - w0[r * cols + j]);
    Vec sorted = row;
    std::sort(sorted.begin(), sorted.end());
    for (size_t j = 0; j < cols; ++j) {
      const bool k = one[r * cols + j] != static_cast<float>(w0[r * cols + j]);
      kept += k;
      if (row[j] >= sorted[cols / 2]) large += 1, kept_large += k;
    }
  }
  EXPECT_NEAR(static_cast<double>(kept) / n, 0.4, 0.05);
  EXPECT_GT(static_cast<double>(kept_large) / large, static_cast<double>(kept) / n);
  // density +- epsilon outside (0, 1): an input error naming the tensor.
  EXPECT_THROW(run("della", models, tensor(w0, shape),
                   {{{"weight", 1.0}, {"density", 0.1}, {"epsilon", 0.2}}, {{"weight", 1.0}}}),
               InputError);
}

TEST(MergekitMethods, AreRegisteredWithMergekitsParameterNames) {
  for (const auto& [method, params] : std::map<std::string, std::vector<std::string>>{
           {"nearswap", {"t"}},
           {"passthrough", {"scale"}},
           {"karcher", {"max_iter", "tol"}},
           {"multislerp", {"weight", "normalize_weights", "eps"}},
           {"nuslerp", {"weight", "nuslerp_flatten", "nuslerp_row_wise"}},
           {"model_stock", {"filter_wise"}},
           {"arcee_fusion", {}},
           {"sce", {"select_topk"}},
           {"ram", {"epsilon"}},
           {"della", {"weight", "density", "epsilon", "lambda", "normalize", "rescale", "int8_mask"}},
           {"della_linear", {"weight", "density", "epsilon", "lambda", "normalize", "rescale", "int8_mask"}},
           {"ramplus_tl", {"r", "alpha", "epsilon"}}}) {
    const auto m = MethodRegistry::instance().create(method);
    std::vector<std::string> names;
    for (const auto& p : m->spec().params) names.push_back(p.name);
    EXPECT_EQ(names, params) << method;
  }
}

// As mergekit gathers it, a base_model not listed among the models is one more point of the
// Karcher mean: the merge equals karcher over the three checkpoints listed as models.
TEST(MergekitMethods, KarcherCountsAnUnlistedBaseAsAPoint) {
  TempDir tmp;
  const std::vector<Vec> x = {random_vec(64, 40, 0.2), random_vec(64, 41, 0.2), random_vec(64, 42, 0.2)};
  for (size_t i = 0; i < x.size(); ++i) {
    fs::create_directories(tmp / ("m" + std::to_string(i)));
    save_safetensors(tmp / ("m" + std::to_string(i)) / "model.safetensors", {{"layers.0.w", tensor(x[i])}});
  }
  write_bytes(tmp / "k.yaml", "merge_method: karcher\nbase_model: " + (tmp / "m2").string() +
                                  "\nmodels:\n  - model: " + (tmp / "m0").string() +
                                  "\n  - model: " + (tmp / "m1").string() + "\ndtype: float32\n");
  const auto r = run_amalgam("merge " + (tmp / "k.yaml").string() + " -o " + (tmp / "out").string() + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const Tensor merged = SafetensorsReader(tmp / "out" / "model.safetensors").tensor("layers.0.w").to(DType::F32);
  expect_close(values(merged), reference_karcher(x, 10, 1e-5), 1e-5);
}

}  // namespace
}  // namespace amalgam
