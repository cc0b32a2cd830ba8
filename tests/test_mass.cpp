// MASS against independent computations:
//  - factors: the rank rule by hand; a truncated SVD's error against the tail of singular
//    values from a one-sided Jacobi SVD in double written here; orthonormality and
//    reconstruction by explicit loops; TSV-M of one task, and of tasks with orthogonal
//    subspaces (whose polar factors are themselves), against naive sums;
//  - router: probabilities, threshold, at-most-k and fallback on residuals worked out by
//    hand; residuals against ||z - V^T V z|| by loops; inputs built inside one task's
//    subspace route to that task; the cache key ignores order; LRU eviction;
//  - config: values, defaults, relative paths, errors naming the key;
//  - bundle: files, ranks, factors against the checkpoints (Jacobi tail), the first-pass
//    model against `amalgam merge` with tsv, with T=1 the routed model against
//    W0 + U_k S_k V_k^T by a naive loop; the redundancy filter with two identical candidates
//    (the first pass is the first one's W0 + U_k S_k V_k^T); factors in the base's dtype;
//  - CLI: `mass build` + `mass eval` on tiny random CLIP models: with one full-rank task the
//    accuracy of `amalgam eval` of the fine-tune itself; with three tasks, the routing
//    accuracy, mean residuals and routing rank of a routing recomputed here by loops, the
//    first pass's accuracy against `amalgam eval` of its checkpoint; `mass predict` against
//    the fine-tune's own predictions (one full-rank task) and the route recomputed here;
//  - end to end on the small zoo: each task's rank-k model keeps the fine-tune's accuracy
//    and beats TSV-M (routing accuracy is reported: see the comment there).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "clip_fixtures.h"
#include "core/error.h"
#include "data/preprocess.h"
#include "data/task.h"
#include "eval/evaluate.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "linalg/linalg.h"
#include "mass/bundle.h"
#include "mass/config.h"
#include "mass/factors.h"
#include "mass/mass_eval.h"
#include "mass/routed_model.h"
#include "mass/router.h"
#include "merge/audit.h"
#include "merge/config.h"
#include "merge/engine.h"
#include "model/classifier_head.h"
#include "model/families/clip_vision.h"
#include "test_util.h"
#include "zoo/build.h"
#include "zoo_fixtures.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using namespace amalgam::mass;
using testing::TempDir;
using Doubles = std::vector<double>;

// ---------------------------------------------------------------------------------------
// Independent references

Doubles random_values(size_t n, uint64_t seed, double scale = 1.0) {
  SplitMix64 rng(seed);
  Doubles v(n);
  for (auto& x : v) x = scale * (static_cast<double>(rng.below(2000001)) / 1e6 - 1.0);
  return v;
}

// Singular values of A ([m, n], row-major) by one-sided Jacobi (Hestenes) in double:
// rotate pairs of columns until all are orthogonal; the column norms are the singular values.
Doubles jacobi_singular_values(const Doubles& a, int64_t m, int64_t n) {
  // Work on the taller orientation so there are min(m, n) columns.
  const bool transpose = n > m;
  const int64_t rows = transpose ? n : m, cols = transpose ? m : n;
  Doubles c(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[transpose ? j * cols + i : i * cols + j] = a[i * n + j];
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (int64_t p = 0; p < cols; ++p)
      for (int64_t q = p + 1; q < cols; ++q) {
        double alpha = 0, beta = 0, gamma = 0;
        for (int64_t i = 0; i < rows; ++i) {
          alpha += c[i * cols + p] * c[i * cols + p];
          beta += c[i * cols + q] * c[i * cols + q];
          gamma += c[i * cols + p] * c[i * cols + q];
        }
        if (gamma == 0 || std::abs(gamma) <= 1e-15 * std::sqrt(alpha * beta)) continue;
        off = std::max(off, std::abs(gamma) / std::sqrt(alpha * beta));
        const double zeta = (beta - alpha) / (2 * gamma);
        const double t = (zeta >= 0 ? 1.0 : -1.0) / (std::abs(zeta) + std::sqrt(1 + zeta * zeta));
        const double cs = 1 / std::sqrt(1 + t * t), sn = cs * t;
        for (int64_t i = 0; i < rows; ++i) {
          const double x = c[i * cols + p], y = c[i * cols + q];
          c[i * cols + p] = cs * x - sn * y;
          c[i * cols + q] = sn * x + cs * y;
        }
      }
    if (off < 1e-14) break;
  }
  Doubles s(static_cast<size_t>(cols), 0.0);
  for (int64_t j = 0; j < cols; ++j) {
    for (int64_t i = 0; i < rows; ++i) s[j] += c[i * cols + j] * c[i * cols + j];
    s[j] = std::sqrt(s[j]);
  }
  std::sort(s.begin(), s.end(), std::greater<>());
  return s;
}

// max |a - b| / max |b|
double relative_error(std::span<const float> a, std::span<const double> b) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return err / scale;
}

// Largest |M M^T - I| over a [rows, cols] row-major matrix's rows (orthonormal rows),
// or over its columns when `columns` is set.
double orthonormality_error(std::span<const float> m, int64_t rows, int64_t cols, bool columns) {
  const int64_t count = columns ? cols : rows, length = columns ? rows : cols;
  auto at = [&](int64_t vec, int64_t i) {
    return static_cast<double>(columns ? m[static_cast<size_t>(i * cols + vec)]
                                       : m[static_cast<size_t>(vec * cols + i)]);
  };
  double worst = 0;
  for (int64_t a = 0; a < count; ++a)
    for (int64_t b = 0; b < count; ++b) {
      double dot = 0;
      for (int64_t i = 0; i < length; ++i) dot += at(a, i) * at(b, i);
      worst = std::max(worst, std::abs(dot - (a == b ? 1.0 : 0.0)));
    }
  return worst;
}

// U diag(S) V^T by a naive loop, in double.
Doubles low_rank_product(std::span<const float> u, std::span<const float> s, std::span<const float> vt, int64_t m,
                         int64_t n) {
  const auto k = static_cast<int64_t>(s.size());
  Doubles out(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t r = 0; r < k; ++r)
        out[i * n + j] += static_cast<double>(u[i * k + r]) * s[r] * static_cast<double>(vt[r * n + j]);
  return out;
}

// ---------------------------------------------------------------------------------------
// Factors

TEST(MassFactors, RankRuleByHand) {
  EXPECT_EQ(factor_rank(20, 12, 3, 0), 4);  // floor(12 / 3)
  EXPECT_EQ(factor_rank(768, 3072, 8, 0), 96);
  EXPECT_EQ(factor_rank(20, 12, 20, 0), 1);   // floor(12 / 20) = 0, at least 1
  EXPECT_EQ(factor_rank(20, 12, 3, 0.5), 6);  // floor(0.5 * 12)
  EXPECT_EQ(factor_rank(20, 12, 3, 1.0), 12);
  EXPECT_EQ(factor_rank(0, 12, 3, 0), 0);
}

TEST(MassFactors, TruncationErrorIsTheTailOfTheSingularValues) {
  const int64_t m = 9, n = 7, k = 3;
  const Doubles a = random_values(static_cast<size_t>(m * n), 5);
  Matrix delta(m, n);
  for (size_t i = 0; i < a.size(); ++i) delta.data[i] = static_cast<float>(a[i]);
  const LowRankFactors f = truncated_svd(delta, k);
  ASSERT_EQ(f.u.rows, m);
  ASSERT_EQ(f.u.cols, k);
  ASSERT_EQ(f.rank(), k);
  ASSERT_EQ(f.vt.rows, k);
  ASSERT_EQ(f.vt.cols, n);

  Doubles exact(a.size());
  for (size_t i = 0; i < a.size(); ++i) exact[i] = static_cast<float>(a[i]);  // what the SVD saw
  const Doubles sigma = jacobi_singular_values(exact, m, n);
  for (int64_t r = 0; r < k; ++r) EXPECT_NEAR(f.s[r], sigma[r], 1e-5 * sigma[0]) << r;
  double tail = 0;
  for (size_t r = k; r < sigma.size(); ++r) tail += sigma[r] * sigma[r];
  const Doubles approx = low_rank_product(f.u.data, f.s, f.vt.data, m, n);
  double error = 0;
  for (size_t i = 0; i < exact.size(); ++i) error += (exact[i] - approx[i]) * (exact[i] - approx[i]);
  EXPECT_NEAR(std::sqrt(error), std::sqrt(tail), 1e-5 * sigma[0]);
  EXPECT_LT(orthonormality_error(f.vt.data, k, n, false), 1e-5);
  EXPECT_LT(orthonormality_error(f.u.data, m, k, true), 1e-5);
}

TEST(MassFactors, TsvMergeOfOneTaskIsW0PlusUSVt) {
  const int64_t m = 6, n = 5, k = 2;
  Matrix delta(m, n);
  const Doubles a = random_values(static_cast<size_t>(m * n), 8);
  for (size_t i = 0; i < a.size(); ++i) delta.data[i] = static_cast<float>(a[i]);
  const LowRankFactors f = truncated_svd(delta, k);
  const Doubles w0 = random_values(static_cast<size_t>(m * n), 9);
  std::vector<float> weight(w0.begin(), w0.end());
  const FactorView one = factor_view(f);
  add_tsv_merge(std::span(&one, 1), 1.0f, m, n, weight);
  Doubles expected = low_rank_product(f.u.data, f.s, f.vt.data, m, n);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += static_cast<float>(w0[i]);
  EXPECT_LT(relative_error(weight, expected), 1e-6);
}

// Tasks whose U and V span orthogonal coordinates: the concatenations are orthonormal, so
// TSV-M's polar factors leave them as they are and the merge is W0 + the sum of U_t S_t V_t^T.
TEST(MassFactors, TsvMergeOfOrthogonalTasksIsTheSumOfTheirLowRankParts) {
  const int64_t m = 4, n = 5;
  const float h = 1.0f / std::sqrt(2.0f);
  // Task 0: U columns e0, e1; V rows e0, e2. Task 1: U columns (e2 +- e3)/sqrt2; V rows e1, (e3 + e4)/sqrt2.
  LowRankFactors t0{Matrix(m, 2), {3.0f, 1.5f}, Matrix(2, n)}, t1{Matrix(m, 2), {2.0f, 0.5f}, Matrix(2, n)};
  t0.u(0, 0) = 1, t0.u(1, 1) = 1;
  t0.vt(0, 0) = 1, t0.vt(1, 2) = 1;
  t1.u(2, 0) = h, t1.u(3, 0) = h, t1.u(2, 1) = h, t1.u(3, 1) = -h;
  t1.vt(0, 1) = 1, t1.vt(1, 3) = h, t1.vt(1, 4) = h;
  std::vector<float> weight(static_cast<size_t>(m * n), 0.25f);
  const FactorView views[] = {factor_view(t0), factor_view(t1)};
  add_tsv_merge(views, 2.0f, m, n, weight);
  Doubles expected(static_cast<size_t>(m * n), 0.25);
  // By hand: 2 * (3 e0 e0^T + 1.5 e1 e2^T + 2 u1 e1^T + 0.5 u2 v2^T).
  expected[0 * n + 0] += 6;
  expected[1 * n + 2] += 3;
  expected[2 * n + 1] += 4 * h, expected[3 * n + 1] += 4 * h;
  for (int64_t col : {3, 4}) {
    expected[2 * n + col] += 1.0 * h * h;
    expected[3 * n + col] -= 1.0 * h * h;
  }
  EXPECT_LT(relative_error(weight, expected), 1e-6);
}

TEST(MassFactors, MeanDeltaIsAddedToTheBase) {
  std::vector<float> weight = {1, 2, 3};
  const std::vector<float> d0 = {0.5f, -1, 0}, d1 = {1.5f, 1, -3};
  const std::span<const float> deltas[] = {d0, d1};
  add_mean_delta(deltas, weight);
  EXPECT_EQ(weight, (std::vector<float>{2, 2, 1.5f}));
}

// ---------------------------------------------------------------------------------------
// Router

RouterConfig router(RouteMode mode = RouteMode::TopK, double threshold = 0.2, int64_t max_tasks = 3) {
  RouterConfig c;
  c.mode = mode;
  c.threshold = threshold;
  c.max_tasks = max_tasks;
  return c;
}

// residuals [1, 2, 3]: scores [-1, -2, -3], mean -2, std sqrt(2/3); standardized
// [1.2247, 0, -1.2247]; softmax [0.72455, 0.21290, 0.06256].
TEST(MassRouter, ThresholdSelectionByHand) {
  const Doubles r = {1, 2, 3};
  const RouteDecision d = route(r, router());
  ASSERT_EQ(d.probabilities.size(), 3u);
  EXPECT_NEAR(d.probabilities[0], 0.724548, 1e-6);
  EXPECT_NEAR(d.probabilities[1], 0.212896, 1e-6);
  EXPECT_NEAR(d.probabilities[2], 0.062556, 1e-6);
  EXPECT_EQ(d.tasks, (TaskSet{0, 1}));  // 0.72 and 0.21 pass 0.2
  EXPECT_EQ(d.top, 0);
  EXPECT_EQ(route(r, router(RouteMode::TopK, 0.25)).tasks, (TaskSet{0}));
  // Nothing passes 0.8: the most probable task alone.
  EXPECT_EQ(route(r, router(RouteMode::TopK, 0.8)).tasks, (TaskSet{0}));
  // A temperature of 2 halves the standardized scores: [0.6124, 0, -0.6124], softmax [0.5447, 0.2952, 0.1600].
  RouterConfig warm = router();
  warm.temperature = 2;
  const RouteDecision w = route(r, warm);
  EXPECT_NEAR(w.probabilities[0], 0.544693, 1e-6);
  EXPECT_NEAR(w.probabilities[2], 0.160049, 1e-6);
  EXPECT_EQ(w.tasks, (TaskSet{0, 1}));
}

// Residuals [1.15, 1.0, 10, 1.1, 1.05]: four tasks near 0.24-0.25, one at 0.02; at most 3,
// the most probable first: tasks 1 (1.0), 4 (1.05), 3 (1.1).
TEST(MassRouter, AtMostMaxTasksTheMostProbableFirst) {
  const Doubles r = {1.15, 1.0, 10, 1.1, 1.05};
  const RouteDecision d = route(r, router());
  EXPECT_NEAR(d.probabilities[0], 0.239851, 1e-6);
  EXPECT_NEAR(d.probabilities[1], 0.250142, 1e-6);
  EXPECT_NEAR(d.probabilities[2], 0.020111, 1e-6);
  EXPECT_EQ(d.tasks, (TaskSet{1, 3, 4}));
  EXPECT_EQ(d.top, 1);
  EXPECT_EQ(route(r, router(RouteMode::TopK, 0.2, 2)).tasks, (TaskSet{1, 4}));
  EXPECT_EQ(route(r, router(RouteMode::TopK, 0.2, 5)).tasks, (TaskSet{0, 1, 3, 4}));
}

TEST(MassRouter, EqualResidualsGiveEqualOddsAndFallBackToTheFirstTask) {
  const Doubles r = {2, 2, 2, 2, 2};  // std 0: every score 0, every probability 1/5, none above 0.2
  const RouteDecision d = route(r, router());
  for (double p : d.probabilities) EXPECT_DOUBLE_EQ(p, 0.2);
  EXPECT_EQ(d.tasks, (TaskSet{0}));
  const Doubles two = {2, 2};  // 1/2 each: both pass
  EXPECT_EQ(route(two, router()).tasks, (TaskSet{0, 1}));
  const Doubles one = {7};
  EXPECT_EQ(route(one, router()).tasks, (TaskSet{0}));
}

TEST(MassRouter, Top1TakesTheSmallestResidualAlone) {
  const Doubles r = {3, 1, 2};  // top-k would take {1, 2} (0.72, 0.21)
  EXPECT_EQ(route(r, router()).tasks, (TaskSet{1, 2}));
  const RouteDecision d = route(r, router(RouteMode::Top1));
  EXPECT_EQ(d.tasks, (TaskSet{1}));
  EXPECT_EQ(d.top, 1);
}

TEST(MassRouter, MeanResidualsAverageTheBatch) {
  const Doubles r = {1, 4, 3, 2, 5, 0};  // rows [1 4], [3 2], [5 0]
  EXPECT_EQ(mean_residuals(r, 2), (Doubles{3, 2}));
}

// Orthonormal rows by Gram-Schmidt, in double: the reference's subspaces.
Matrix orthonormal_rows(int64_t k, int64_t d, uint64_t seed) {
  Doubles v = random_values(static_cast<size_t>(k * d), seed);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < i; ++j) {
      double dot = 0;
      for (int64_t x = 0; x < d; ++x) dot += v[i * d + x] * v[j * d + x];
      for (int64_t x = 0; x < d; ++x) v[i * d + x] -= dot * v[j * d + x];
    }
    double norm = 0;
    for (int64_t x = 0; x < d; ++x) norm += v[i * d + x] * v[i * d + x];
    for (int64_t x = 0; x < d; ++x) v[i * d + x] /= std::sqrt(norm);
  }
  Matrix m(k, d);
  for (size_t i = 0; i < v.size(); ++i) m.data[i] = static_cast<float>(v[i]);
  return m;
}

TEST(MassRouter, InputsInsideOneTasksSubspaceRouteToThatTask) {
  const int64_t d = 16, k = 4, tasks = 3;
  std::vector<Matrix> vts;
  for (int64_t t = 0; t < tasks; ++t) vts.push_back(orthonormal_rows(k, d, 40 + t));
  // Six tokens: two inside each task's subspace (random combinations of its rows).
  Matrix z(2 * tasks, d);
  for (int64_t i = 0; i < z.rows; ++i) {
    const Doubles c = random_values(static_cast<size_t>(k), 70 + i);
    for (int64_t r = 0; r < k; ++r)
      for (int64_t x = 0; x < d; ++x) z(i, x) += static_cast<float>(c[r]) * vts[i / 2](r, x);
  }
  const Doubles res = subspace_residuals(z, vts);
  for (int64_t i = 0; i < z.rows; ++i) {
    for (int64_t t = 0; t < tasks; ++t) {  // ||z - V^T V z|| by loops
      Doubles proj(static_cast<size_t>(d), 0.0);
      for (int64_t r = 0; r < k; ++r) {
        double c = 0;
        for (int64_t x = 0; x < d; ++x) c += static_cast<double>(vts[t](r, x)) * z(i, x);
        for (int64_t x = 0; x < d; ++x) proj[x] += c * vts[t](r, x);
      }
      double norm = 0;
      for (int64_t x = 0; x < d; ++x) norm += (z(i, x) - proj[x]) * (z(i, x) - proj[x]);
      EXPECT_NEAR(res[i * tasks + t], std::sqrt(norm), 2e-3) << i << " " << t;
    }
    const RouteDecision dec = route(std::span<const double>(res).subspan(i * tasks, tasks), router());
    EXPECT_EQ(dec.tasks, (TaskSet{i / 2})) << "token " << i;
    EXPECT_EQ(dec.top, i / 2);
  }
}

TEST(MassRouter, RoutingTokensAreTheClsRowOrTheMeanOverTokens) {
  // Two images of three tokens, width 2.
  const std::vector<float> rows = {1, 2, 3, 4, 5, 6, /* image 1 */ -1, 0, 0, 1, 4, 8};
  const SiteInput in{1, SiteRole::MlpInput, rows.data(), 6, 2};
  const std::vector<int64_t> offsets = {0, 3, 6};
  const Matrix cls = routing_tokens(in, offsets, RouteToken::Cls);
  EXPECT_EQ(cls.data, (std::vector<float>{1, 2, -1, 0}));
  const Matrix mean = routing_tokens(in, offsets, RouteToken::Mean);
  EXPECT_EQ(mean.data, (std::vector<float>{3, 4, 1, 3}));
}

TEST(MassRouter, DefaultLayerIsFiveSixthsOfTheDepth) {
  EXPECT_EQ(default_routing_layer(12), 9);  // block 10 of 12, counting from 1
  EXPECT_EQ(default_routing_layer(6), 4);
  EXPECT_EQ(default_routing_layer(24), 19);  // block 20 of 24
  EXPECT_EQ(default_routing_layer(2), 1);
  EXPECT_EQ(default_routing_layer(1), 0);
}

TEST(MassCache, KeyIgnoresOrderAndTheLeastRecentlyUsedIsEvicted) {
  EXPECT_EQ(make_task_set({3, 1, 3}), (TaskSet{1, 3}));
  TaskSetCache<int> cache(2);
  int built = 0;
  auto get = [&](const TaskSet& key) { return *cache.get(key, [&] { return std::make_shared<const int>(++built); }); };
  EXPECT_EQ(get({2, 0}), 1);
  EXPECT_EQ(get({0, 2}), 1);  // the same set: no build
  EXPECT_EQ(get({1}), 2);
  EXPECT_EQ(get({2, 0}), 1);  // now the most recently used
  EXPECT_EQ(get({3}), 3);     // evicts {1}
  EXPECT_TRUE(cache.contains({0, 2}));
  EXPECT_FALSE(cache.contains({1}));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.builds(), 3u);
  EXPECT_EQ(cache.hits(), 2u);
  EXPECT_EQ(get({1}), 4);
  EXPECT_EQ(cache.hits(), 2u);
}

// ---------------------------------------------------------------------------------------
// Config

TEST(MassConfigTest, ParsesValuesDefaultsAndRelativePaths) {
  TempDir tmp;
  fs::create_directories(tmp / "models/a");
  testing::write_bytes(tmp / "h.safetensors", "");
  const std::string y =
      "base_model: models/a\nmodels:\n  - {model: models/a, head: h.safetensors, name: first}\n"
      "  - model: models/a\n    head: h.safetensors\nparameters: {token: mean, mode: top1, threshold: 0.3, "
      "max_tasks: 2, routing_layer: 1, routing_rank: 3, similarity_threshold: 0.8}\n";
  const MassConfig c = parse_mass_config(y, tmp / "mass.yaml");
  EXPECT_EQ(c.base_path, tmp / "models/a");  // not in the working directory: beside the config
  ASSERT_EQ(c.models.size(), 2u);
  EXPECT_EQ(c.models[0].head, tmp / "h.safetensors");
  EXPECT_EQ(c.models[0].name, "first");
  EXPECT_FALSE(c.models[1].name.has_value());
  EXPECT_EQ(c.parameters.token, RouteToken::Mean);
  EXPECT_EQ(c.parameters.mode, RouteMode::Top1);
  EXPECT_DOUBLE_EQ(c.parameters.threshold, 0.3);
  EXPECT_EQ(c.parameters.max_tasks, 2);
  EXPECT_EQ(c.parameters.routing_layer, 1);
  EXPECT_DOUBLE_EQ(c.parameters.temperature, 1.0);
  EXPECT_DOUBLE_EQ(c.parameters.rank_fraction, 0.0);
  EXPECT_EQ(c.parameters.routing_rank, 3);
  EXPECT_EQ(c.parameters.similarity_threshold, 0.8);
  const MassConfig d = parse_mass_config("base_model: b\nmodels: [{model: a, head: h}]\n", tmp / "mass.yaml");
  EXPECT_EQ(d.parameters.routing_rank, 0);
  EXPECT_FALSE(d.parameters.similarity_threshold.has_value());  // no filter by default
}

TEST(MassConfigTest, ErrorsNameTheKey) {
  auto error = [](const std::string& yaml) {
    try {
      parse_mass_config(yaml, "m.yaml");
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string models = "base_model: b\nmodels: [{model: a, head: h}]\n";
  EXPECT_EQ(error(models + "parameters: {tokn: cls}"),
            "m.yaml: parameters: unknown key 'tokn' (expected rank_fraction, routing_layer, token, mode, threshold, "
            "temperature, max_tasks, routing_rank, similarity_threshold)");
  EXPECT_EQ(error(models + "parameters: {similarity_threshold: 1.5}"),
            "m.yaml: parameters.similarity_threshold: must be a cosine in [0, 1]");
  EXPECT_EQ(error(models + "parameters: {routing_rank: -1}"),
            "m.yaml: parameters.routing_rank: must be >= 0 (0: every stored row of each task's subspace)");
  EXPECT_EQ(error(models + "parameters: {token: last}"),
            "m.yaml: parameters.token: expected 'cls' or 'mean', got 'last'");
  EXPECT_EQ(error(models + "parameters: {threshold: '0.2'}"),
            "m.yaml: parameters.threshold: expected a finite number, got '0.2'");
  EXPECT_EQ(error(models + "parameters: {max_tasks: 1.5}"),
            "m.yaml: parameters.max_tasks: expected an integer, got '1.5'");
  EXPECT_EQ(error(models + "parameters: {rank_fraction: 2}"),
            "m.yaml: parameters.rank_fraction: must be in [0, 1] (0: 1/T of the rank)");
  EXPECT_EQ(error("base_model: b\nmodels: [{model: a}]\n"),
            "m.yaml: models[0]: missing 'head' (the task's classifier head file)");
  EXPECT_EQ(error("base_model: b\nmodels: [{model: a, head: h, weight: 1}]\n"),
            "m.yaml: models[0]: unknown key 'weight' (expected model, head, name)");
  EXPECT_EQ(error("models: [{model: a, head: h}]\n"),
            "m.yaml: base_model: required: the pretrained checkpoint the fine-tunes start from");
  EXPECT_EQ(error(models + "merge_method: tsv\n"),
            "m.yaml: unknown key 'merge_method' (expected base_model, models, parameters)");
}

// ---------------------------------------------------------------------------------------
// Tiny CLIP models: a random base, fine-tunes that add a random perturbation to every
// tensor, heads, and tasks of random 8x8 images.

// "t0", "t1", ...: the tiny tasks' names. (Appending, because GCC 12 warns falsely about
// "t" + std::to_string(...) under -Wrestrict.)
std::string task_name(int64_t t) {
  std::string name = "t";
  name += std::to_string(t);
  return name;
}

constexpr int64_t kClasses = 4;
constexpr int64_t kTestImages = 21;

struct TinyFamily {
  TempDir tmp;
  ClipVisionConfig config = testing::tiny_clip_config();
  fs::path base = tmp / "base";
  std::vector<fs::path> models, heads, tasks;

  explicit TinyFamily(int tasks_count, DType dtype = DType::F32) {
    const ClipVisionWeights w0 = random_clip_vision_weights(config, 1, true);
    save_clip_vision(base, config, w0, dtype, false, testing::identity_preprocess().to_json());
    for (int t = 0; t < tasks_count; ++t) {
      const std::string name = task_name(t);
      ClipVisionWeights w = w0, noise = random_clip_vision_weights(config, 10 + t, true);
      const auto table = clip_parameters(config, w, true), noise_table = clip_parameters(config, noise, true);
      for (size_t p = 0; p < table.size(); ++p)
        for (int64_t i = 0; i < shape_numel(table[p].shape); ++i)
          table[p].data[i] +=
              0.3f * (noise_table[p].data[i] - (noise_table[p].kind == ClipParameter::Kind::LayerNormWeight));
      models.push_back(tmp / ("model_" + name));
      save_clip_vision(models.back(), config, w, dtype, false, testing::identity_preprocess().to_json());
      heads.push_back(tmp / (name + ".safetensors"));
      write_head(heads.back(), name, 20 + t);
      tasks.push_back(tmp / ("task_" + name));
      write_task_dir(tasks.back(), name, 30 + t);
    }
  }

  void write_head(const fs::path& path, const std::string& name, uint64_t seed) const {
    ClassifierHead head;
    head.weight = Matrix(kClasses, config.projection_dim);
    const Doubles v = random_values(head.weight.data.size(), seed);
    for (size_t i = 0; i < v.size(); ++i) head.weight.data[i] = static_cast<float>(v[i]);
    head.bias = {0.1f, -0.1f, 0.0f, 0.05f};
    head.normalize_features = true;
    head.task = name;
    head.save(path, false);
  }

  static void write_task_dir(const fs::path& dir, const std::string& name, uint64_t seed) {
    TaskInfo info;
    info.name = name;
    info.classes = {"a", "b", "c", "d"};
    info.image = {8, 8, 1};
    TaskSplit test;
    test.name = "test";
    test.images = Tensor::zeros(DType::U8, {kTestImages, 8, 8, 1});
    SplitMix64 rng(seed);
    for (auto& v : test.images.mutable_data<uint8_t>()) v = static_cast<uint8_t>(rng.below(256));
    for (int64_t i = 0; i < kTestImages; ++i) test.labels.push_back(static_cast<int64_t>(rng.below(kClasses)));
    write_task(dir, info, std::span<const TaskSplit>(&test, 1), false);
  }

  std::string yaml(const std::string& parameters = "") const {
    std::string y = "base_model: " + base.string() + "\nmodels:\n";
    for (size_t t = 0; t < models.size(); ++t)
      y += "  - {model: " + models[t].string() + ", head: " + heads[t].string() + "}\n";
    if (!parameters.empty()) y += "parameters: {" + parameters + "}\n";
    return y;
  }

  fs::path build(const std::string& name, const std::string& parameters = "") const {
    const fs::path cfg = tmp / (name + ".yaml");
    testing::write_bytes(cfg, yaml(parameters));
    const fs::path out = tmp / name;
    build_bundle(load_mass_config(cfg), {out, false, true});
    return out;
  }
};

// Every 2-D floating tensor of the tiny model, with its shape.
std::vector<std::pair<std::string, Shape>> matrices_of(const fs::path& checkpoint) {
  const CheckpointReader r(checkpoint);
  std::vector<std::pair<std::string, Shape>> out;
  for (const auto& name : r.names())
    if (r.info(name).shape.size() == 2) out.emplace_back(name, r.info(name).shape);
  return out;
}

TEST(MassBundle, FactorsAreTruncatedSvdsOfTheTaskVectors) {
  const TinyFamily fam(3);
  const fs::path bundle = fam.build("bundle");
  for (const char* f : {"bundle.json", "router.json", "first_pass/model.safetensors", "first_pass/config.json",
                        "first_pass/preprocessor_config.json", "factors/t0.safetensors", "factors/t2.safetensors",
                        "heads/t1.safetensors"})
    EXPECT_TRUE(fs::exists(bundle / f)) << f;
  const BundleInfo info = BundleInfo::read(bundle);
  EXPECT_EQ(info.tasks, (std::vector<std::string>{"t0", "t1", "t2"}));  // from the heads' metadata
  EXPECT_EQ(info.base, fs::absolute(fam.base).lexically_normal());
  EXPECT_EQ(info.router.layer, 1);
  EXPECT_EQ(info.router.tasks, info.tasks);
  EXPECT_EQ(info.sizes.base, CheckpointReader(fam.base).total_tensor_bytes());
  EXPECT_EQ(info.sizes.all_finetunes, 3 * info.sizes.base);
  uint64_t factor_files = 0;
  for (const char* t : {"t0", "t1", "t2"})
    factor_files += fs::file_size(bundle / "factors" / (std::string(t) + ".safetensors"));
  EXPECT_EQ(info.sizes.factors, factor_files);
  EXPECT_EQ(testing::read_bytes(bundle / "heads/t1.safetensors"), testing::read_bytes(fam.heads[1]));

  const std::string fc1 = clip_layer_prefix(0) + "mlp.fc1.weight";
  EXPECT_EQ(info.ranks.at(fc1), 4);                         // floor(min(20, 12) / 3)
  EXPECT_EQ(info.ranks.at("visual_projection.weight"), 1);  // floor(5 / 3)
  const SafetensorsReader t1(bundle / "factors/t1.safetensors");
  EXPECT_EQ(t1.find(fc1 + ".U")->shape, (Shape{20, 4}));
  EXPECT_EQ(t1.find(fc1 + ".Vt")->shape, (Shape{4, 12}));
  EXPECT_EQ(t1.find("vision_model.embeddings.patch_embedding.weight.delta")->shape, (Shape{12, 1, 4, 4}));
  EXPECT_TRUE(t1.contains("vision_model.pre_layrnorm.bias.delta"));

  for (const auto& [name, shape] : matrices_of(fam.base)) {
    const int64_t m = shape[0], n = shape[1], k = info.ranks.at(name);
    const auto u = testing::tensor_floats(bundle / "factors/t1.safetensors", name + ".U");
    const auto s = testing::tensor_floats(bundle / "factors/t1.safetensors", name + ".S");
    const auto vt = testing::tensor_floats(bundle / "factors/t1.safetensors", name + ".Vt");
    EXPECT_LT(orthonormality_error(vt, k, n, false), 1e-5) << name;
    EXPECT_LT(orthonormality_error(u, m, k, true), 1e-5) << name;
    const Doubles w0 = testing::tensor_values(fam.base, name), w1 = testing::tensor_values(fam.models[1], name);
    Doubles delta(w0.size());
    for (size_t i = 0; i < delta.size(); ++i) delta[i] = static_cast<float>(w1[i]) - static_cast<float>(w0[i]);
    const Doubles sigma = jacobi_singular_values(delta, m, n);
    double tail = 0, error = 0;
    for (size_t r = static_cast<size_t>(k); r < sigma.size(); ++r) tail += sigma[r] * sigma[r];
    const Doubles approx = low_rank_product(u, s, vt, m, n);
    for (size_t i = 0; i < delta.size(); ++i) error += (delta[i] - approx[i]) * (delta[i] - approx[i]);
    EXPECT_NEAR(std::sqrt(error), std::sqrt(tail), 1e-5 * sigma[0]) << name;
    for (int64_t r = 0; r < k; ++r) EXPECT_NEAR(s[r], sigma[r], 1e-5 * sigma[0]) << name;
  }
  // Non-2-D tensors: the whole delta.
  const std::string ln = "vision_model.pre_layrnorm.bias";
  const auto delta = testing::tensor_floats(bundle / "factors/t2.safetensors", ln + ".delta");
  const Doubles w0 = testing::tensor_values(fam.base, ln), w2 = testing::tensor_values(fam.models[2], ln);
  for (size_t i = 0; i < delta.size(); ++i) EXPECT_EQ(delta[i], static_cast<float>(w2[i]) - static_cast<float>(w0[i]));
}

TEST(MassBundle, FirstPassIsWhatMergeWithTsvWrites) {
  const TinyFamily fam(3);
  const fs::path bundle = fam.build("bundle");
  std::string y = "merge_method: tsv\nbase_model: " + fam.base.string() + "\nparameters: {alpha: 1}\nmodels:\n";
  for (const auto& m : fam.models) y += "  - model: " + m.string() + "\n";
  testing::write_bytes(fam.tmp / "tsv.yaml", y);
  MergeOptions o;
  o.output = fam.tmp / "tsv";
  o.quiet = true;
  run_merge(load_merge_config(fam.tmp / "tsv.yaml"), o);
  const CheckpointReader merged(o.output);
  for (const auto& name : merged.names()) {
    const Doubles expected = testing::tensor_values(o.output, name);
    EXPECT_LT(relative_error(testing::tensor_floats(bundle / "first_pass", name), expected), 1e-5) << name;
  }
}

TEST(MassBundle, OneTaskRoutedModelIsW0PlusUkSkVkT) {
  const TinyFamily fam(1);
  const fs::path bundle = fam.build("bundle", "rank_fraction: 0.5");
  MassRuntime runtime(bundle);
  EXPECT_EQ(runtime.info().ranks.at(clip_layer_prefix(1) + "mlp.fc1.weight"), 6);  // floor(0.5 * 12)
  const auto model = runtime.model_for({0});
  const std::vector<float> flat = model->parameters();
  const fs::path factors = bundle / "factors/t0.safetensors";
  ASSERT_EQ(model->parameter_layout().slots.size(), CheckpointReader(fam.base).names().size());
  for (const ParameterSlot& p : model->parameter_layout().slots) {
    const Doubles w0 = testing::tensor_values(fam.base, p.name);
    ASSERT_EQ(w0.size(), p.size) << p.name;
    const std::span<const float> routed = std::span(flat).subspan(p.offset, p.size);
    Doubles expected;
    if (p.shape.size() == 2) {
      expected = low_rank_product(testing::tensor_floats(factors, p.name + ".U"),
                                  testing::tensor_floats(factors, p.name + ".S"),
                                  testing::tensor_floats(factors, p.name + ".Vt"), p.shape[0], p.shape[1]);
      for (size_t i = 0; i < expected.size(); ++i) expected[i] += w0[i];
    } else {  // the whole delta: the fine-tune itself
      expected = testing::tensor_values(fam.models[0], p.name);
    }
    EXPECT_LT(relative_error(routed, expected), 1e-6) << p.name;
  }
  // One task: every input routes to it.
  const RouteDecision d = route(Doubles{0.7}, runtime.router());
  EXPECT_EQ(d.tasks, (TaskSet{0}));
}

TEST(MassBundle, SameInputsGiveTheSameBits) {
  const TinyFamily fam(3);
  const fs::path a = fam.build("a"), b = fam.build("b");
  for (const char* f : {"first_pass/model.safetensors", "factors/t0.safetensors", "factors/t1.safetensors",
                        "factors/t2.safetensors", "router.json", "bundle.json"})
    EXPECT_EQ(testing::read_bytes(a / f), testing::read_bytes(b / f)) << f;
}

TEST(MassCli, BuildWritesTheSameBitsOnOneTwoAndThreeThreads) {
  const TinyFamily fam(3);
  testing::write_bytes(fam.tmp / "m.yaml", fam.yaml());
  for (const int threads : {1, 2, 3}) {
    const fs::path bundle = fam.tmp / ("bundle" + std::to_string(threads));
    ASSERT_EQ(testing::run_amalgam("mass build " + (fam.tmp / "m.yaml").string() + " -o " + bundle.string() +
                                   " -q --threads " + std::to_string(threads))
                  .code,
              0);
    if (threads == 1) continue;
    for (const char* f : {"first_pass/model.safetensors", "factors/t0.safetensors", "factors/t1.safetensors",
                          "factors/t2.safetensors", "router.json", "bundle.json"})
      EXPECT_TRUE(testing::read_bytes(bundle / f) == testing::read_bytes(fam.tmp / "bundle1" / f))
          << f << " differs between 1 and " << threads << " threads";
  }
}

TEST(MassBundle, BadInputsAreErrorsNamingTheFileAndNothingIsWritten) {
  const TinyFamily fam(2);
  const fs::path cfg = fam.tmp / "bad.yaml";
  testing::write_bytes(cfg, fam.yaml("routing_layer: 2"));
  try {
    build_bundle(load_mass_config(cfg), {fam.tmp / "out", false, true});
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), cfg.string() + ": parameters.routing_layer: 2 is not a block (the model has 2)");
  }
  EXPECT_FALSE(fs::exists(fam.tmp / "out"));
  // A fine-tune with another shape.
  ClipVisionConfig wide = fam.config;
  wide.intermediate_size = 24;
  save_clip_vision(fam.models[1], wide, random_clip_vision_weights(wide, 3, true), DType::F32, true,
                   testing::identity_preprocess().to_json());
  testing::write_bytes(cfg, fam.yaml());
  try {
    build_bundle(load_mass_config(cfg), {fam.tmp / "out", false, true});
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'vision_model.encoder.layers.0.mlp.fc1.weight': has shape [24, 12]"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(fam.tmp / "out"));
}

// ---------------------------------------------------------------------------------------
// CLI

nlohmann::json run_json(const std::string& args) {
  const testing::CliResult r = testing::run_amalgam(args);
  EXPECT_EQ(r.code, 0) << r.err;
  return nlohmann::json::parse(r.out);
}

TEST(MassCli, OneFullRankTaskGivesTheFineTunesAccuracy) {
  const TinyFamily fam(1);
  testing::write_bytes(fam.tmp / "m.yaml", fam.yaml());
  const fs::path bundle = fam.tmp / "bundle";
  const testing::CliResult built =
      testing::run_amalgam("mass build " + (fam.tmp / "m.yaml").string() + " -o " + bundle.string());
  ASSERT_EQ(built.code, 0) << built.err;
  EXPECT_NE(built.err.find("1 tasks"), std::string::npos) << built.err;
  // k = min(d_out, d_in): the factors hold the whole task vector, so the routed model is the
  // fine-tune (to rounding) and so is its accuracy.
  const nlohmann::json j = run_json("mass eval " + bundle.string() + " --task " + fam.tasks[0].string() + " --json -q");
  const nlohmann::json& r = j["results"][0];
  const TaskInfo info = read_task_info(fam.tasks[0]);
  EvalOptions eo;
  eo.quiet = true;
  const EvalResult direct = evaluate(ClipVisionModel::load(fam.models[0]), testing::identity_preprocess(), info,
                                     load_split(fam.tasks[0], info, "test"), ClassifierHead::load(fam.heads[0]), eo);
  EXPECT_EQ(r["task"], "t0");
  EXPECT_EQ(r["examples"], kTestImages);
  EXPECT_EQ(r["correct"], direct.correct);
  EXPECT_DOUBLE_EQ(r["accuracy"].get<double>(), direct.accuracy);
  EXPECT_DOUBLE_EQ(r["routing_accuracy"].get<double>(), 1.0);
  EXPECT_EQ(r["set_sizes"], (nlohmann::json{{"1", kTestImages}}));
  EXPECT_EQ(j["sizes"]["all_finetunes"], j["sizes"]["base"]);
}

// Every test image's residual to every task's subspace, recomputed here: the first-pass
// checkpoint's fc1 input of the routing block (observed by a tap), its CLS row, and
// ||z - sum_r (v_r . z) v_r|| by loops over the first `rank` rows of each task's Vt (0: all).
std::vector<Doubles> reference_residuals(const fs::path& bundle, const fs::path& task_dir, int64_t tasks,
                                         int64_t rank = 0, const fs::path& token_model = {}) {
  const ClipVisionModel first = ClipVisionModel::load(token_model.empty() ? bundle / "first_pass" : token_model);
  const TaskInfo info = read_task_info(task_dir);
  const TaskSplit split = load_split(task_dir, info, "test");
  std::vector<int64_t> all(static_cast<size_t>(split.size()));
  std::iota(all.begin(), all.end(), 0);
  const auto pixels = preprocess_batch(split.images, all, testing::identity_preprocess(), 1);
  const int64_t layer = BundleInfo::read(bundle).router.layer, d = first.config().hidden_size;
  std::vector<float> tokens;
  first.features(pixels, split.size(), [&](const SiteInput& in) {
    if (in.layer != layer || in.role != SiteRole::MlpInput) return;
    const int64_t per_image = in.rows / split.size();
    for (int64_t b = 0; b < split.size(); ++b)
      tokens.insert(tokens.end(), in.data + b * per_image * d, in.data + (b * per_image + 1) * d);
  });
  const std::string fc1 = clip_layer_prefix(layer) + "mlp.fc1.weight.Vt";
  std::vector<Doubles> residuals(static_cast<size_t>(split.size()));
  for (int64_t t = 0; t < tasks; ++t) {
    const auto vt = testing::tensor_floats(bundle / "factors" / (task_name(t) + ".safetensors"), fc1);
    const int64_t k = rank > 0 ? rank : static_cast<int64_t>(vt.size()) / d;
    for (int64_t b = 0; b < split.size(); ++b) {
      Doubles rest(tokens.begin() + b * d, tokens.begin() + (b + 1) * d);
      for (int64_t r = 0; r < k; ++r) {
        double c = 0;
        for (int64_t x = 0; x < d; ++x) c += static_cast<double>(vt[r * d + x]) * tokens[b * d + x];
        for (int64_t x = 0; x < d; ++x) rest[x] -= c * vt[r * d + x];
      }
      double norm = 0;
      for (double v : rest) norm += v * v;
      residuals[static_cast<size_t>(b)].push_back(std::sqrt(norm));
    }
  }
  return residuals;
}

// The most probable route of every test image: the smallest reference residual.
std::vector<int64_t> reference_top_routes(const fs::path& bundle, const fs::path& task_dir, int64_t tasks) {
  std::vector<int64_t> top;
  for (const Doubles& r : reference_residuals(bundle, task_dir, tasks))
    top.push_back(std::min_element(r.begin(), r.end()) - r.begin());
  return top;
}

TEST(MassCli, ThreeTasksReportRoutingAsRecomputedAndRefuseToOverwrite) {
  const TinyFamily fam(3);
  testing::write_bytes(fam.tmp / "m.yaml", fam.yaml());
  const fs::path bundle = fam.tmp / "bundle";
  const std::string build = "mass build " + (fam.tmp / "m.yaml").string() + " -o " + bundle.string() + " -q";
  ASSERT_EQ(testing::run_amalgam(build).code, 0);
  const testing::CliResult again = testing::run_amalgam(build);
  EXPECT_EQ(again.code, 2);
  EXPECT_NE(again.err.find("--force"), std::string::npos) << again.err;
  EXPECT_EQ(testing::run_amalgam(build + " --force").code, 0);

  std::string tasks;
  for (const auto& t : fam.tasks) tasks += " --task " + t.string();
  for (const std::string route : {"sample", "batch"}) {
    const nlohmann::json j =
        run_json("mass eval " + bundle.string() + tasks + " --route " + route + " --batch-size 8 --json -q");
    ASSERT_EQ(j["results"].size(), 3u);
    for (int64_t t = 0; t < 3; ++t) {
      const nlohmann::json& r = j["results"][t];
      EXPECT_EQ(r["task"], task_name(t));
      EXPECT_EQ(r["examples"], kTestImages);
      int64_t selected = 0;
      for (const auto& [size, count] : r["set_sizes"].items()) {
        EXPECT_LE(std::stoi(size), 3);
        selected += count.get<int64_t>();
      }
      EXPECT_EQ(selected, kTestImages);
      // The first pass whole, with the task's own head: `amalgam eval` of the first-pass checkpoint.
      const TaskInfo info = read_task_info(fam.tasks[t]);
      EvalOptions eo;
      eo.quiet = true;
      eo.batch_size = 8;
      const EvalResult tsv =
          evaluate(ClipVisionModel::load(bundle / "first_pass"), testing::identity_preprocess(), info,
                   load_split(fam.tasks[t], info, "test"), ClassifierHead::load(fam.heads[t]), eo);
      EXPECT_DOUBLE_EQ(r["first_pass_accuracy"].get<double>(), tsv.accuracy) << t;
      const nlohmann::json& l = r["latency"];
      EXPECT_EQ(l["images"], kTestImages);
      EXPECT_EQ(l["cache_hits"].get<int64_t>() + l["cache_misses"].get<int64_t>(), l["forwards"].get<int64_t>());
      EXPECT_GE(l["forwards"].get<int64_t>(), 3);  // at least one per batch of 8
      EXPECT_GT(l["merged_seconds"].get<double>(), 0.0);
      EXPECT_NEAR(l["ratio"].get<double>(),
                  (l["first_pass_seconds"].get<double>() + l["build_seconds"].get<double>() +
                   l["second_pass_seconds"].get<double>()) /
                      l["merged_seconds"].get<double>(),
                  1e-9);
      if (route != "sample") continue;
      const auto top = reference_top_routes(bundle, fam.tasks[t], 3);
      const auto own = std::count(top.begin(), top.end(), t);
      EXPECT_DOUBLE_EQ(r["routing_accuracy"].get<double>(), static_cast<double>(own) / kTestImages) << t;
      for (int64_t u = 0; u < 3; ++u)
        EXPECT_EQ(r["top_routes"][task_name(u)], std::count(top.begin(), top.end(), u)) << t << " " << u;
      const auto residuals = reference_residuals(bundle, fam.tasks[t], 3);
      for (int64_t u = 0; u < 3; ++u) {
        double mean = 0;
        for (const Doubles& image : residuals) mean += image[static_cast<size_t>(u)] / kTestImages;
        EXPECT_NEAR(r["mean_residuals"][task_name(u)].get<double>(), mean, 1e-5 * mean) << t << " " << u;
      }
    }
    const nlohmann::json& total = j["latency"];
    EXPECT_EQ(total["images"], 3 * kTestImages);
    EXPECT_EQ(total["cache_misses"], j["models_built"]);
  }
  for (const std::string rule : {"max-logit", "router"}) {
    const nlohmann::json j = run_json("mass eval " + bundle.string() + tasks + " --head-rule " + rule + " --json -q");
    EXPECT_EQ(j["results"][1]["head_rule"], rule);
    EXPECT_GE(j["results"][1]["accuracy"].get<double>(), 0.0);
  }
  // A task the bundle does not know: no true head.
  TinyFamily::write_task_dir(fam.tmp / "other", "other", 99);
  const testing::CliResult unknown =
      testing::run_amalgam("mass eval " + bundle.string() + " --task " + (fam.tmp / "other").string() + " -q");
  EXPECT_EQ(unknown.code, 2);
  EXPECT_NE(unknown.err.find("task 'other' is not one of the bundle's tasks (t0, t1, t2)"), std::string::npos)
      << unknown.err;
  const testing::CliResult human =
      testing::run_amalgam("mass eval " + bundle.string() + tasks + " -q --residual-table");
  EXPECT_EQ(human.code, 0);
  EXPECT_NE(human.out.find("t2 (test, 21 examples, route sample, head true): accuracy"), std::string::npos)
      << human.out;
  EXPECT_NE(human.out.find("latency (batch 32): MASS "), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("mean residual r_t to each task's subspace"), std::string::npos) << human.out;
}

TEST(MassCli, ConfigErrorsExitWithTwoAndNameTheKey) {
  TempDir tmp;
  testing::write_bytes(tmp / "m.yaml", "base_model: b\nmodels: [{model: a, head: h}]\nparameters: {mode: all}\n");
  const testing::CliResult r =
      testing::run_amalgam("mass build " + (tmp / "m.yaml").string() + " -o " + (tmp / "out").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("parameters.mode: expected 'topk' or 'top1', got 'all'"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(MassCli, RoutingRankRoutesOnTheFirstRowsOfEachSubspace) {
  const TinyFamily fam(3);
  const fs::path bundle = fam.build("bundle", "routing_rank: 2");  // of the 4 stored per task
  EXPECT_EQ(BundleInfo::read(bundle).router.rank, 2);
  std::string tasks;
  for (const auto& t : fam.tasks) tasks += " --task " + t.string();
  const nlohmann::json j = run_json("mass eval " + bundle.string() + tasks + " --json -q");
  EXPECT_EQ(j["router"]["rank"], 2);
  for (int64_t t = 0; t < 3; ++t) {
    std::vector<int64_t> top;
    for (const Doubles& r : reference_residuals(bundle, fam.tasks[t], 3, 2))
      top.push_back(std::min_element(r.begin(), r.end()) - r.begin());
    for (int64_t u = 0; u < 3; ++u)
      EXPECT_EQ(j["results"][t]["top_routes"][task_name(u)], std::count(top.begin(), top.end(), u)) << t << u;
  }
  // Overrides on the command line; a rank beyond the stored one is an error, at build and at eval.
  const nlohmann::json o =
      run_json("mass eval " + bundle.string() + tasks + " --routing-layer 0 --token mean --routing-rank 0 --json -q");
  EXPECT_EQ(o["router"]["layer"], 0);
  EXPECT_EQ(o["router"]["token"], "mean");
  EXPECT_EQ(o["router"]["rank"], 0);
  // Routing on a fine-tune's own tokens (the diagnostic): the residuals of its fc1 inputs.
  const nlohmann::json own = run_json("mass eval " + bundle.string() + " --task " + fam.tasks[2].string() +
                                      " --route-with " + fam.models[2].string() + " --json -q");
  std::vector<int64_t> top;
  for (const Doubles& r : reference_residuals(bundle, fam.tasks[2], 3, 2, fam.models[2]))
    top.push_back(std::min_element(r.begin(), r.end()) - r.begin());
  for (int64_t u = 0; u < 3; ++u)
    EXPECT_EQ(own["results"][0]["top_routes"][task_name(u)], std::count(top.begin(), top.end(), u)) << u;
  const testing::CliResult too_many =
      testing::run_amalgam("mass eval " + bundle.string() + tasks + " --routing-rank 5");
  EXPECT_EQ(too_many.code, 2);
  EXPECT_NE(too_many.err.find("command line: rank: 5 exceeds the rank stored per task of "
                              "'vision_model.encoder.layers.1.mlp.fc1.weight.Vt' (4)"),
            std::string::npos)
      << too_many.err;
  try {
    fam.build("bad", "routing_rank: 5");
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("parameters.routing_rank: 5 exceeds the rank kept per task of "
                                         "'vision_model.encoder.layers.1.mlp.fc1.weight' (4)"),
              std::string::npos)
        << e.what();
  }
}

std::vector<nlohmann::json> json_lines(const std::string& text) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

int64_t argmax_row(const Matrix& m, int64_t row) {
  int64_t best = 0;
  for (int64_t j = 1; j < m.cols; ++j)
    if (m(row, j) > m(row, best)) best = j;
  return best;
}

// One image's preprocessed pixels from a tiny task's test split.
std::vector<float> tiny_image(const fs::path& task_dir, int64_t index) {
  const TaskInfo info = read_task_info(task_dir);
  const TaskSplit split = load_split(task_dir, info, "test");
  const int64_t one[] = {index};
  return preprocess_batch(split.images, one, testing::identity_preprocess(), 1);
}

TEST(MassCli, PredictOfOneFullRankTaskIsTheFineTunesPrediction) {
  const TinyFamily fam(1);
  testing::write_bytes(fam.tmp / "m.yaml", fam.yaml());
  const fs::path bundle = fam.tmp / "bundle";
  ASSERT_EQ(testing::run_amalgam("mass build " + (fam.tmp / "m.yaml").string() + " -o " + bundle.string() + " -q").code,
            0);
  const testing::CliResult r =
      testing::run_amalgam("mass predict " + bundle.string() + " --task " + fam.tasks[0].string() + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(static_cast<int64_t>(lines.size()), kTestImages);
  const ClipVisionModel tuned = ClipVisionModel::load(fam.models[0]);
  const ClassifierHead head = ClassifierHead::load(fam.heads[0]);
  const TaskSplit split = load_split(fam.tasks[0], read_task_info(fam.tasks[0]), "test");
  for (int64_t b = 0; b < kTestImages; ++b) {
    const nlohmann::json& p = lines[static_cast<size_t>(b)];
    EXPECT_EQ(p["index"], b);
    EXPECT_EQ(p["tasks"], nlohmann::json::array({"t0"}));
    EXPECT_EQ(p["head"], "t0");
    EXPECT_DOUBLE_EQ(p["probabilities"]["t0"].get<double>(), 1.0);
    const Matrix logits = head.logits(tuned.features(tiny_image(fam.tasks[0], b), 1));
    EXPECT_EQ(p["class"], argmax_row(logits, 0)) << b;
    EXPECT_EQ(p["class_name"], std::string(1, static_cast<char>('a' + argmax_row(logits, 0))));
    EXPECT_EQ(p["label"], split.labels[static_cast<size_t>(b)]);
  }
}

TEST(MassCli, PredictWritesTheRouteAndTheHeadRulesPrediction) {
  const TinyFamily fam(3);
  const fs::path bundle = fam.build("bundle");
  const fs::path out = fam.tmp / "predictions.jsonl";
  const std::string predict = "mass predict " + bundle.string() + " --head-rule router --batch-size 5 -q";
  const testing::CliResult r =
      testing::run_amalgam(predict + " --task " + fam.tasks[1].string() + " -o " + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out.empty());
  const auto lines = json_lines(testing::read_bytes(out));
  ASSERT_EQ(static_cast<int64_t>(lines.size()), kTestImages);
  MassRuntime runtime(bundle);
  const auto residuals = reference_residuals(bundle, fam.tasks[1], 3);
  const TaskSplit split = load_split(fam.tasks[1], read_task_info(fam.tasks[1]), "test");
  for (int64_t b = 0; b < kTestImages; ++b) {
    const nlohmann::json& p = lines[static_cast<size_t>(b)];
    const RouteDecision d = route(residuals[static_cast<size_t>(b)], runtime.router());
    bool near_threshold = false;
    for (int64_t t = 0; t < 3; ++t) {
      const double prob = d.probabilities[static_cast<size_t>(t)];
      EXPECT_NEAR(p["probabilities"][task_name(t)].get<double>(), prob, 1e-4) << b;
      near_threshold |= std::abs(prob - runtime.router().threshold) < 1e-3;
    }
    EXPECT_EQ(p["top"], task_name(d.top)) << b;
    if (!near_threshold) {
      nlohmann::json expected = nlohmann::json::array();
      for (int64_t t : d.tasks) expected.push_back(task_name(t));
      EXPECT_EQ(p["tasks"], expected) << b;
    }
    // The router rule: the top route's head on the selected set's model.
    EXPECT_EQ(p["head"], p["top"]);
    TaskSet set;
    for (const auto& name : p["tasks"]) set.push_back(*runtime.task_index(name.get<std::string>()));
    const int64_t head = *runtime.task_index(p["head"].get<std::string>());
    const Matrix logits = runtime.head(head).logits(
        runtime.build_model(set)->forward(ModelInput::of_images(tiny_image(fam.tasks[1], b), 1)));
    EXPECT_EQ(p["class"], argmax_row(logits, 0)) << b;
    EXPECT_EQ(p.contains("class_name"), head == 1) << b;  // class names: the task directory's own head only
    EXPECT_EQ(p["label"], split.labels[static_cast<size_t>(b)]);
  }
  // The same images from a safetensors file: the same routes and classes, no class names.
  const testing::CliResult file =
      testing::run_amalgam(predict + " --images " + (fam.tasks[1] / "test.safetensors").string());
  ASSERT_EQ(file.code, 0) << file.err;
  const auto from_file = json_lines(file.out);
  ASSERT_EQ(from_file.size(), lines.size());
  for (size_t b = 0; b < lines.size(); ++b) {
    EXPECT_EQ(from_file[b]["tasks"], lines[b]["tasks"]);
    EXPECT_EQ(from_file[b]["class"], lines[b]["class"]);
    EXPECT_EQ(from_file[b]["label"], lines[b]["label"]);
    EXPECT_FALSE(from_file[b].contains("class_name"));
  }
  // Errors: an existing output, no input, the true rule without a task of the bundle.
  EXPECT_EQ(testing::run_amalgam(predict + " --task " + fam.tasks[1].string() + " -o " + out.string()).code, 2);
  const testing::CliResult none = testing::run_amalgam("mass predict " + bundle.string());
  EXPECT_EQ(none.code, 2);
  EXPECT_NE(none.err.find("give --task DIR or --images FILE"), std::string::npos) << none.err;
  const testing::CliResult rule = testing::run_amalgam(
      "mass predict " + bundle.string() + " --head-rule true --images " + (fam.tasks[1] / "test.safetensors").string());
  EXPECT_EQ(rule.code, 2);
  EXPECT_NE(rule.err.find("--head-rule true needs a --task that is one of the bundle's tasks"), std::string::npos)
      << rule.err;
}

// merge_report.json of a bundle, recomputed with plain loops from the stored factors, the
// checkpoints and the first pass.
TEST(MassBundle, AuditReportsRanksEnergyAndInterferenceOfTheStoredFactors) {
  const TinyFamily fam(3);
  const fs::path bundle = fam.build("bundle");
  const BundleInfo info = BundleInfo::read(bundle);
  const nlohmann::json report = read_merge_report(bundle);
  EXPECT_EQ(report["method"], "mass");
  ASSERT_EQ(report["candidates"].size(), 3u);
  EXPECT_EQ(fs::path(report["candidates"][1].get<std::string>()), fam.models[1]);
  std::map<std::string, nlohmann::json> entries;
  for (const auto& t : report["tensors"]) entries[t["name"].get<std::string>()] = t;
  EXPECT_EQ(entries.size(), CheckpointReader(fam.base).names().size());

  for (const auto& [name, shape] : matrices_of(fam.base)) {
    const nlohmann::json& e = entries.at(name);
    const int64_t m = shape[0], k = info.ranks.at(name);
    EXPECT_EQ(e["rank"].get<int64_t>(), k) << name;
    const Doubles w0 = testing::tensor_values(fam.base, name);
    const Doubles first = testing::tensor_values(bundle / "first_pass", name);
    std::vector<Doubles> deltas, us;
    for (size_t t = 0; t < 3; ++t) {
      const Doubles w = testing::tensor_values(fam.models[t], name);
      Doubles d(w.size());
      for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<float>(w[i]) - static_cast<float>(w0[i]);
      deltas.push_back(d);
      const fs::path factors = bundle / "factors" / (info.tasks[t] + ".safetensors");
      const auto u = testing::tensor_floats(factors, name + ".U");
      us.emplace_back(u.begin(), u.end());
      double kept = 0, total = 0;
      for (float s : testing::tensor_floats(factors, name + ".S")) kept += static_cast<double>(s) * s;
      for (double x : d) total += x * x;
      EXPECT_NEAR(e["energy_kept"][t].get<double>(), kept / total, 1e-5) << name;
      EXPECT_NEAR(e["task_vector_norms"][t].get<double>(), std::sqrt(total), 1e-5 * std::sqrt(total)) << name;
    }
    for (size_t i = 0; i < 3; ++i)
      for (size_t j = 0; j < 3; ++j) {
        double sum = 0;  // ||U_i^T U_j||_F^2
        for (int64_t a = 0; a < k; ++a)
          for (int64_t b = 0; b < k; ++b) {
            double dot = 0;
            for (int64_t r = 0; r < m; ++r) dot += us[i][r * k + a] * us[j][r * k + b];
            sum += dot * dot;
          }
        EXPECT_NEAR(e["subspace_interference"][i][j].get<double>(), std::sqrt(sum), 1e-4) << name;
      }
    EXPECT_NEAR(e["subspace_interference"][0][0].get<double>(), std::sqrt(static_cast<double>(k)), 1e-4);
    double merged = 0, mean = 0;  // ||first pass - W0|| against ||mean task vector||
    for (size_t i = 0; i < w0.size(); ++i) {
      merged += (first[i] - w0[i]) * (first[i] - w0[i]);
      const double avg = (deltas[0][i] + deltas[1][i] + deltas[2][i]) / 3;
      mean += avg * avg;
    }
    EXPECT_NEAR(e["merged_over_mean"].get<double>(), std::sqrt(merged / mean), 1e-4) << name;
  }
  // Other tensors have the norms and cosines, not the factor fields.
  const nlohmann::json& bias = entries.at("vision_model.pre_layrnorm.bias");
  EXPECT_FALSE(bias.contains("rank"));
  EXPECT_EQ(bias["cosines"].size(), 3u);

  // --no-audit writes no report, and the bundle's bits do not change.
  testing::write_bytes(fam.tmp / "quiet.yaml", fam.yaml());
  build_bundle(load_mass_config(fam.tmp / "quiet.yaml"), {fam.tmp / "quiet", false, true, false});
  EXPECT_FALSE(fs::exists(fam.tmp / "quiet" / kMergeReportFile));
  for (const char* f : {"first_pass/model.safetensors", "factors/t0.safetensors", "factors/t2.safetensors"})
    EXPECT_EQ(testing::read_bytes(bundle / f), testing::read_bytes(fam.tmp / "quiet" / f)) << f;
}

TEST(MassBundle, RedundancyFilterLeavesAnIdenticalCandidateOutOfTheFirstPass) {
  const TinyFamily fam(2);
  const std::string models = "base_model: " + fam.base.string() + "\nmodels:\n  - {model: " + fam.models[0].string() +
                             ", head: " + fam.heads[0].string() + ", name: a}\n  - {model: " + fam.models[0].string() +
                             ", head: " + fam.heads[1].string() + ", name: b}\n";
  testing::write_bytes(fam.tmp / "same.yaml", models + "parameters: {similarity_threshold: 0.99}\n");
  const fs::path bundle = fam.tmp / "same";
  build_bundle(load_mass_config(fam.tmp / "same.yaml"), {bundle, false, true});
  const BundleInfo info = BundleInfo::read(bundle);
  EXPECT_EQ(info.similarity_threshold, 0.99);
  const CheckpointReader base(fam.base);
  ASSERT_EQ(info.filtered.size(), base.names().size());  // every tensor of the tiny model is floating
  for (const FilteredDelta& f : info.filtered) {
    EXPECT_EQ(f.task, "b");
    EXPECT_EQ(f.like, "a");
    EXPECT_NEAR(f.cosine, 1.0, 1e-9) << f.tensor;
  }
  // The first pass is task a's alone: W0 + U_k S_k V_k^T (k = min / 2), and the whole delta elsewhere.
  const fs::path factors = bundle / "factors/a.safetensors";
  for (const auto& name : base.names()) {
    const Shape& shape = base.info(name).shape;
    const Doubles w0 = testing::tensor_values(fam.base, name);
    Doubles expected;
    if (shape.size() == 2) {
      expected =
          low_rank_product(testing::tensor_floats(factors, name + ".U"), testing::tensor_floats(factors, name + ".S"),
                           testing::tensor_floats(factors, name + ".Vt"), shape[0], shape[1]);
      for (size_t i = 0; i < expected.size(); ++i) expected[i] += w0[i];
    } else {
      expected = testing::tensor_values(fam.models[0], name);
    }
    EXPECT_LT(relative_error(testing::tensor_floats(bundle / "first_pass", name), expected), 1e-5) << name;
  }
  // Unrelated tasks pass the filter: the same bits as without it.
  const fs::path plain = fam.build("plain"), filtered = fam.build("filtered", "similarity_threshold: 0.99");
  EXPECT_TRUE(BundleInfo::read(filtered).filtered.empty());
  EXPECT_FALSE(BundleInfo::read(plain).similarity_threshold.has_value());
  EXPECT_EQ(testing::read_bytes(plain / "first_pass/model.safetensors"),
            testing::read_bytes(filtered / "first_pass/model.safetensors"));
}

TEST(MassBundle, FactorsAreStoredInTheBasesDtype) {
  const TinyFamily half(2, DType::BF16), full(2);
  const fs::path bf16 = half.build("bundle"), f32 = full.build("bundle");
  const SafetensorsReader h(bf16 / "factors/t0.safetensors"), f(f32 / "factors/t0.safetensors");
  uint64_t half_bytes = 0, full_bytes = 0;
  for (const TensorInfo& t : h.tensors()) {
    EXPECT_EQ(t.dtype, DType::BF16) << t.name;
    half_bytes += t.nbytes();
  }
  for (const TensorInfo& t : f.tensors()) full_bytes += t.nbytes();
  EXPECT_EQ(2 * half_bytes, full_bytes);
  // The routed model reads them back: W0 + U S V^T from the stored BF16 values.
  MassRuntime runtime(bf16);
  const auto model = runtime.model_for({0});
  const std::vector<float> flat = model->parameters();
  const std::string fc1 = clip_layer_prefix(0) + "mlp.fc1.weight";
  {
    const ParameterSlot& p = model->parameter_layout().at(fc1);
    const fs::path factors = bf16 / "factors/t0.safetensors";
    Doubles expected =
        low_rank_product(testing::tensor_floats(factors, fc1 + ".U"), testing::tensor_floats(factors, fc1 + ".S"),
                         testing::tensor_floats(factors, fc1 + ".Vt"), p.shape[0], p.shape[1]);
    const Doubles w0 = testing::tensor_values(half.base, fc1);
    for (size_t i = 0; i < expected.size(); ++i) expected[i] += w0[i];
    EXPECT_LT(relative_error(std::span(flat).subspan(p.offset, p.size), expected), 1e-5);
  }
}

// ---------------------------------------------------------------------------------------
// End to end on the small zoo (trains a zoo: Release builds only)
//
// What the papers claim, asserted on the small zoo: the data-free route picks the image's own
// task well above chance, and MASS beats TSV-M, its own first pass. Also: the second pass
// (W0 + the task's stored rank-k factors, what MASS runs when the route is right) keeps
// nearly all of each fine-tune's accuracy and is far above TSV-M; `mass eval`'s first-pass
// accuracy is TSV-M's; the selected set holds the own task at least as often as the top
// route is it; and the same residual rule on each fine-tune's own tokens routes better than
// on the first pass's (the gap MASS pays for routing without the fine-tunes).

using testing::kSanitized;

TEST(MassZoo, RoutesAboveChanceAndBeatsTsvOnTheSmallZoo) {
  if (kSanitized) GTEST_SKIP() << "trains a zoo: Release builds only";
  TempDir tmp;
  const fs::path zoo = testing::shared_small_zoo();
  const auto& names = zoo_task_names();

  std::string mass_yaml = "base_model: " + (zoo / "base").string() + "\nmodels:\n";
  std::string tsv_yaml =
      "merge_method: tsv\nbase_model: " + (zoo / "base").string() + "\nparameters: {alpha: 1}\nmodels:\n";
  for (const auto& task : names) {
    mass_yaml += "  - {model: " + (zoo / "finetuned" / task).string() +
                 ", head: " + (zoo / "heads" / (task + ".safetensors")).string() + ", name: " + task + "}\n";
    tsv_yaml += "  - model: " + (zoo / "finetuned" / task).string() + "\n";
  }
  testing::write_bytes(tmp / "mass.yaml", mass_yaml);
  const BuildSummary built = build_bundle(load_mass_config(tmp / "mass.yaml"), {tmp / "bundle", false, true});
  testing::write_bytes(tmp / "tsv.yaml", tsv_yaml);
  MergeOptions mo;
  mo.output = tmp / "tsv";
  mo.quiet = true;
  run_merge(load_merge_config(tmp / "tsv.yaml"), mo);

  MassRuntime runtime(tmp / "bundle");
  const ClipVisionModel tsv = ClipVisionModel::load(mo.output);
  const ImageProcessorConfig pre = load_image_processor_config(mo.output);
  const auto count = static_cast<double>(names.size());
  double routed = 0, routed_batch = 0, routing = 0, own_task = 0, tsv_accuracy = 0, finetuned = 0, first_pass = 0;
  for (size_t t = 0; t < names.size(); ++t) {
    const fs::path dir = zoo / "data" / names[t];
    const TaskInfo info = read_task_info(dir);
    const TaskSplit split = load_split(dir, info, "test");
    const ClassifierHead head = ClassifierHead::load(zoo / "heads" / (names[t] + ".safetensors"));
    MassEvalOptions sample;
    sample.quiet = true;
    sample.batch_size = 100;
    MassEvalOptions batch = sample;
    batch.scope = RouteScope::Batch;
    const MassEvalResult r = evaluate_mass(runtime, info, split, sample);
    routed += r.accuracy / count;
    routing += *r.routing_accuracy / count;
    first_pass += *r.first_pass_accuracy / count;
    EXPECT_GE(*r.own_task_selected, *r.routing_accuracy) << names[t];
    routed_batch += evaluate_mass(runtime, info, split, batch).accuracy / count;
    EvalOptions eo;
    eo.quiet = true;
    eo.batch_size = 200;
    own_task += evaluate(*runtime.build_model({static_cast<int64_t>(t)}), pre, info, split, head, eo).accuracy / count;
    tsv_accuracy += evaluate(tsv, pre, info, split, head, eo).accuracy / count;
    finetuned +=
        evaluate(ClipVisionModel::load(zoo / "finetuned" / names[t]), pre, info, split, head, eo).accuracy / count;
  }
  // The diagnostic: the same router on each fine-tune's own tokens.
  double own_tokens = 0;
  for (size_t t = 0; t < names.size(); ++t) {
    const fs::path dir = zoo / "data" / names[t];
    const TaskInfo info = read_task_info(dir);
    MassEvalOptions sample;
    sample.quiet = true;
    sample.batch_size = 100;
    runtime.set_routing_model(zoo / "finetuned" / names[t]);
    own_tokens += *evaluate_mass(runtime, info, load_split(dir, info, "test"), sample).routing_accuracy / count;
  }
  const auto& sizes = built.info.sizes;
  std::cerr << "small zoo: routing accuracy on the fine-tunes' own tokens " << own_tokens << "\n";
  std::cerr << "small zoo average test accuracy: fine-tuned " << finetuned << ", own task's rank-k model " << own_task
            << ", MASS routed per sample " << routed << " (routing accuracy " << routing << "), per batch "
            << routed_batch << ", TSV-M " << tsv_accuracy << "; factors / base "
            << static_cast<double>(sizes.factors) / static_cast<double>(sizes.base) << ", bundle / base "
            << static_cast<double>(sizes.bundle()) / static_cast<double>(sizes.base) << "\n";
  EXPECT_GT(own_task, 0.9 * finetuned);
  EXPECT_GT(own_task, tsv_accuracy + 0.05);
  // The first pass is the tsv merge (to float rounding), so its accuracy is TSV-M's.
  EXPECT_NEAR(first_pass, tsv_accuracy, 0.005);
  // The stored subspaces separate the tasks, for the first pass's tokens (at 2.6x chance
  // when written) and better still for the fine-tunes' own (5.8x).
  EXPECT_GT(routing, 2.0 / count);
  EXPECT_GT(own_tokens, routing);
  // Routing per batch pools the batch's tokens and keeps a margin over TSV-M. Per sample it
  // sits close on this tiny zoo, and how close depends on the zoo's bits: 0.339 against
  // 0.284 with the earlier training arithmetic, 0.289 against 0.280 since q, k and v train
  // as one GEMM (the same recipe).
  EXPECT_GT(routed, tsv_accuracy);
  EXPECT_GT(routed_batch, tsv_accuracy + 0.02);
}

}  // namespace
}  // namespace amalgam
