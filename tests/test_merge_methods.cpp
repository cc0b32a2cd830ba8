// Each merge method on one tensor, against values worked out by hand or by a naive loop.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "linalg/linalg.h"
#include "merge/method.h"
#include "merge/task_arithmetic_family.h"
#include "merge_method_fixtures.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;

// StoredChunk, which the streaming methods read through: each input's bytes as stored,
// converted piece by piece to the same values as a whole-tensor conversion; a NaN is noted
// for its input once its piece is converted; a read that fails (a file shrunk after it was
// opened) is recorded and rethrown after the loop, as reads inside parallel loops must be.
TEST(TensorJobs, StoredChunksConvertPiecesAndNoteNonFiniteInputsAndReadErrors) {
  const size_t n = 40000;
  std::vector<float> a(n), b(n), base(n);
  for (size_t i = 0; i < n; ++i) {
    a[i] = std::sin(0.001f * static_cast<float>(i));
    b[i] = 3.0f - 0.0001f * static_cast<float>(i);
    base[i] = 0.5f * static_cast<float>(i % 7);
  }
  b[35000] = std::nanf("");
  const std::vector<Tensor> models = {vec(a).to(DType::BF16), vec(b).to(DType::F16)};
  const TensorJob job("w", models, vec(base), {{}, {}}, {}, 0);
  StoredChunk chunk;
  chunk.load(job, 32768, n, /*with_base=*/true);
  std::vector<float> piece(500);
  for (size_t t = 0; t < 3; ++t) {
    chunk.to_f32(t, 1000, piece.size(), piece.data());
    const std::vector<float> whole = values(t < 2 ? models[t].to(DType::F32) : vec(base));
    for (size_t i = 0; i < piece.size(); ++i) ASSERT_EQ(piece[i], whole[32768 + 1000 + i]) << t << " " << i;
  }
  EXPECT_FALSE(job.first_nonfinite_input()) << "the NaN's piece is not converted yet";
  chunk.to_f32(1, 35000 - 32768 - 10, 20, piece.data());
  EXPECT_EQ(job.first_nonfinite_input(), std::optional<size_t>(1));
  EXPECT_NO_THROW(job.rethrow_read_error());

  testing::TempDir tmp;
  const fs::path file = tmp / "m.safetensors";
  save_safetensors(file, {{"w", vec(a)}});
  const SafetensorsReader reader(file);
  const TensorJob shrunk("w", {reader.tensor("w")}, std::nullopt, {{}}, {}, 0);
  ASSERT_EQ(::truncate(file.c_str(), static_cast<off_t>(fs::file_size(file) - 4 * 1000)), 0);
  chunk.load(shrunk, 32768, n, false);
  chunk.to_f32(0, n - 32768 - 10, 10, piece.data());
  EXPECT_EQ(piece[0], 0.0f) << "a failed read reads as zeros";
  EXPECT_THROW(shrunk.rethrow_read_error(), InputError);
}

TEST(MergeMethods, AllNineAreRegistered) {
  const auto names = MethodRegistry::instance().names();
  for (const char* n : {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                        "breadcrumbs_ties", "slerp", "tsv"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
}

TEST(MergeMethods, LinearWeightedMean) {
  const auto a = vec({1, 2}), b = vec({3, -2}), c = vec({0, 8});
  // (1*[1,2] + 2*[3,-2] + 1*[0,8]) / 4 = [7/4, 6/4]
  expect_near(run("linear", {a, b, c}, std::nullopt, {{{"weight", 1}}, {{"weight", 2}}, {{"weight", 1}}}),
              {1.75f, 1.5f});
  // Without normalisation: the plain weighted sum [7, 6].
  expect_near(
      run("linear", {a, b, c}, std::nullopt, {{{"weight", 1}}, {{"weight", 2}}, {{"weight", 1}}}, {{"normalize", 0}}),
      {7, 6});
}

TEST(MergeMethods, TaskArithmetic) {
  const auto base = vec({1, 1, 1});
  const auto a = vec({2, 1, 0}), b = vec({1, 3, 1});
  // D_a = [1, 0, -1], D_b = [0, 2, 0]; 1 + 0.5 * (1 * D_a + 2 * D_b) = [1.5, 3, 0.5]
  expect_near(run("task_arithmetic", {a, b}, base, {{{"weight", 1}}, {{"weight", 2}}}, {{"lambda", 0.5}}),
              {1.5f, 3.0f, 0.5f});
}

// The TIES example worked by hand (base 0, so task vectors are the models):
//   m1 = [ 3, -1,  2, 0, -5,  1]   top 3 by magnitude: 5 (i4), 3 (i0), 2 (i2)
//   m2 = [-2,  4,  1, 1, -1, -3]   top 3: 4 (i1), 3 (i5), 2 (i0)
//   m3 = [ 1, -3, -4, 2,  2, -1]   top 3: 4 (i2), 3 (i1), then 2 at i3 and i4 tie: i3 wins
// trimmed: t1 = [3,0,2,0,-5,0], t2 = [-2,4,0,0,0,-3], t3 = [0,-3,-4,2,0,0]
// sums [1, 1, -2, 2, -5, -3] elect + + - + - -; means of the agreeing entries:
//   [3, 4, -4, 2, -5, -3]
TEST(MergeMethods, TiesTrimElectDisjointMean) {
  const auto base = vec({0, 0, 0, 0, 0, 0});
  const auto m1 = vec({3, -1, 2, 0, -5, 1}), m2 = vec({-2, 4, 1, 1, -1, -3}), m3 = vec({1, -3, -4, 2, 2, -1});
  const std::vector<Params> p(3, {{"weight", 1}, {"density", 0.5}});
  expect_near(run("ties", {m1, m2, m3}, base, p), {3, 4, -4, 2, -5, -3});
  // Density 1 keeps everything: sums [2, 0, -1, 3, -4, -3] elect + + - + - - (0 counts as +);
  // agreeing means: [(3+1)/2, 4, -4, (1+2)/2, (-5-1)/2, (-3-1)/2]
  const std::vector<Params> all(3, {{"weight", 1}, {"density", 1}});
  expect_near(run("ties", {m1, m2, m3}, base, all), {2, 4, -4, 1.5f, -3, -2});
  // Without normalize the agreeing entries are summed: [4, 4, -4, 3, -6, -4]
  expect_near(run("ties", {m1, m2, m3}, base, all, {{"normalize", 0}}), {4, 4, -4, 3, -6, -4});
}

TEST(MergeMethods, TiesWeightsEnterTheElectionAndTheDivisor) {
  const auto base = vec({0});
  // Weighted deltas: 1*2 = 2 and 3*(-1) = -3: the sum is -1, so '-' wins; the mean over
  // agreeing weights is -3 / 3 = -1.
  expect_near(run("ties", {vec({2}), vec({-1})}, base, {{{"weight", 1}}, {{"weight", 3}}}), {-1});
}

TEST(MergeMethods, MagnitudeBandBreaksTiesByIndex) {
  const std::vector<float> mags = {5, 1, 5, 3, 5, 0};
  // Ranks: 5@0 -> 0, 5@2 -> 1, 5@4 -> 2, 3@3 -> 3, 1@1 -> 4, 0@5 -> 5.
  const MagnitudeBand band(mags, 1, 3);  // ranks 1, 2, 3
  std::vector<bool> kept;
  for (size_t i = 0; i < mags.size(); ++i) kept.push_back(band.contains(mags[i], i));
  EXPECT_EQ(kept, (std::vector<bool>{false, false, true, true, true, false}));
  const MagnitudeBand everything(mags, 0, 6), nothing(mags, 0, 0), tail(mags, 5, 10);
  for (size_t i = 0; i < mags.size(); ++i) {
    EXPECT_TRUE(everything.contains(mags[i], i));
    EXPECT_FALSE(nothing.contains(mags[i], i));
    EXPECT_EQ(tail.contains(mags[i], i), i == 5);
  }
}

TEST(MergeMethods, MagnitudeBandMatchesASortedReference) {
  // Quantised magnitudes (many ties, like BF16 task vectors) and a wide spread of exponents.
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> level(0, 40);
  std::uniform_int_distribution<int> exponent(-30, 10);
  for (int trial = 0; trial < 4; ++trial) {
    std::vector<float> mags(5000);
    for (auto& m : mags)
      m = trial % 2 ? static_cast<float>(level(rng)) * 0.25f : std::ldexp(1.0f + level(rng) / 64.0f, exponent(rng));
    // Reference: sort indices by (magnitude descending, index ascending); rank is the position.
    std::vector<size_t> order(mags.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return mags[a] > mags[b]; });
    std::vector<size_t> rank(mags.size());
    for (size_t r = 0; r < order.size(); ++r) rank[order[r]] = r;
    for (auto [skip, keep] : {std::pair<size_t, size_t>{0, 1000}, {50, 2000}, {4999, 5}, {0, 4999}, {1234, 1}}) {
      const MagnitudeBand band(mags, skip, keep);
      for (size_t i = 0; i < mags.size(); ++i)
        ASSERT_EQ(band.contains(mags[i], i), rank[i] >= skip && rank[i] < skip + keep)
            << "trial " << trial << " skip " << skip << " keep " << keep << " index " << i;
    }
  }
}

TEST(MergeMethods, BreadcrumbsDropsTheTopAndKeepsTheNextBand) {
  // Task vector magnitudes 10..1: gamma 0.1 drops the 10, density 0.5 keeps 9..5.
  std::vector<float> m(10), want(10, 0.0f);
  for (int i = 0; i < 10; ++i) m[static_cast<size_t>(i)] = static_cast<float>((i % 2 ? -1 : 1) * (10 - i));
  for (int i = 1; i <= 5; ++i) want[static_cast<size_t>(i)] = m[static_cast<size_t>(i)];
  expect_near(run("breadcrumbs", {vec(m)}, vec(std::vector<float>(10, 0.0f)),
                  {{{"weight", 1}, {"density", 0.5}, {"gamma", 0.1}}}),
              want);
}

TEST(MergeMethods, DareKeepsDensityAndRescales) {
  const size_t n = 200000;
  const auto base = vec(std::vector<float>(n, 0.0f));
  const auto model = vec(std::vector<float>(n, 1.0f));
  const Params p = {{"weight", 1}, {"density", 0.3}};
  const auto a = run("dare_linear", {model}, base, {p}, {}, 42);
  size_t kept = 0;
  double sum = 0;
  for (float v : a) {
    kept += v != 0;
    sum += v;
  }
  // mergekit's rescale: the kept entries scaled so that the task vector keeps its L1 norm
  // (n ones), here n / kept each.
  const auto expected = static_cast<float>(static_cast<double>(n) / static_cast<double>(kept));
  for (float v : a) {
    if (v == 0) continue;
    EXPECT_FLOAT_EQ(v, expected);
  }
  // Binomial(200000, 0.3): standard deviation ~205 entries; 5 sigma is ~1000.
  EXPECT_NEAR(static_cast<double>(kept), 0.3 * n, 1000.0);
  EXPECT_NEAR(sum / n, 1.0, 1e-5);                               // the L1 norm kept
  EXPECT_EQ(a, run("dare_linear", {model}, base, {p}, {}, 42));  // same seed, same bits
  EXPECT_NE(a, run("dare_linear", {model}, base, {p}, {}, 43));
  // Without rescale the kept entries stay 1.
  for (float v : run("dare_linear", {model}, base, {p}, {{"rescale", 0}}, 42)) EXPECT_TRUE(v == 0.0f || v == 1.0f);
}

TEST(MergeMethods, SlerpInterpolatesOnTheSphere) {
  // Orthogonal unit vectors: at t = 0.5 both get sin(pi/4) / sin(pi/2).
  const float h = std::sin(static_cast<float>(M_PI) / 4);
  expect_near(run("slerp", {vec({0, 1})}, vec({1, 0}), {{}}, {{"t", 0.5}}), {h, h});
  // t = 1/3 of a right angle: [cos(30deg), sin(30deg)] = [0.8660254, 0.5]
  expect_near(run("slerp", {vec({0, 1})}, vec({1, 0}), {{}}, {{"t", 1.0 / 3}}), {0.8660254f, 0.5f});
  // The originals' lengths are interpolated, not normalised away: base [2,0], model [0,4].
  expect_near(run("slerp", {vec({0, 4})}, vec({2, 0}), {{}}, {{"t", 0.5}}), {2 * h, 4 * h}, 1e-5f);
}

TEST(MergeMethods, SlerpFallsBackToLinearForColinearVectors) {
  // model = 3 * base: cos = 1, so (1 - t) * base + t * model = [1 + 2t, 2 + 4t]
  expect_near(run("slerp", {vec({3, 6})}, vec({1, 2}), {{}}, {{"t", 0.25}}), {1.5f, 3.0f});
  expect_near(run("slerp", {vec({-1, -2})}, vec({1, 2}), {{}}, {{"t", 0.5}}), {0, 0});  // antiparallel
  expect_near(run("slerp", {vec({5, 7})}, vec({1, 2}), {{}}, {{"t", 0}}), {1, 2});
  expect_near(run("slerp", {vec({5, 7})}, vec({1, 2}), {{}}, {{"t", 1}}), {5, 7}, 1e-5f);
}

// A 4x3 task vector with known SVD: singular values 5, 3, 1 on the standard basis.
std::vector<float> diag_delta(float a, float b, float c) {
  return {a, 0, 0, 0, b, 0, 0, 0, c, 0, 0, 0};
}

TEST(MergeMethods, TsvSingleTaskIsTheTruncatedSvd) {
  const Tensor base = vec(std::vector<float>(12, 1.0f), {4, 3});
  std::vector<float> model = diag_delta(5, 3, 1);
  for (auto& v : model) v += 1.0f;
  // rank_fraction 2/3 keeps k = 2 of min(4, 3) = 3: W0 + 5 e0 e0^T + 3 e1 e1^T.
  std::vector<float> want = diag_delta(5, 3, 0);
  for (auto& v : want) v += 1.0f;
  expect_near(run("tsv", {vec(model, {4, 3})}, base, {{}}, {{"rank_fraction", 2.0 / 3}}), want, 1e-5f);
  // Full rank gives the model back.
  expect_near(run("tsv", {vec(model, {4, 3})}, base, {{}}, {{"rank_fraction", 1}}), model, 1e-5f);
}

TEST(MergeMethods, TsvOrthogonalTasksAddUp) {
  const Tensor base = vec(std::vector<float>(12, 0.0f), {4, 3});
  // Two tasks with orthogonal rank-1 task vectors: k = floor(3 / 2) = 1 each; the
  // concatenated factors are already orthonormal, so the merge is D1 + D2.
  expect_near(run("tsv", {vec(diag_delta(5, 0, 0), {4, 3}), vec(diag_delta(0, 3, 0), {4, 3})}, base, {{}, {}}),
              diag_delta(5, 3, 0), 1e-5f);
}

TEST(MergeMethods, TsvNonMatrixTensorsTakeTheMeanTaskVector) {
  expect_near(run("tsv", {vec({2, 0}), vec({4, 4})}, vec({1, 1}), {{}, {}}), {3, 2});
}

TEST(MergeMethods, CopiesOfOneModelReturnIt) {
  std::mt19937 rng(1);
  std::normal_distribution<float> g;
  std::vector<float> base_v(64), model_v(64);
  for (auto& x : base_v) x = g(rng);
  for (auto& x : model_v) x = g(rng);
  const Tensor base = vec(base_v), model = vec(model_v);
  const std::vector<Tensor> copies(4, model);
  expect_near(run("linear", copies, std::nullopt, {{{"weight", 1}}, {{"weight", 2}}, {{"weight", 3}}, {{"weight", 4}}}),
              model_v, 1e-5f);
  expect_near(run("ties", copies, base, std::vector<Params>(4, {{"weight", 1}, {"density", 1}})), model_v, 1e-5f);
  expect_near(run("task_arithmetic", copies, base, std::vector<Params>(4, {{"weight", 1}}), {{"lambda", 0.25}}),
              model_v, 1e-5f);
}

TEST(MergeMethods, SymmetricMethodsIgnoreModelOrder) {
  std::mt19937 rng(2);
  std::normal_distribution<float> g;
  std::vector<Tensor> models;
  for (int k = 0; k < 3; ++k) {
    std::vector<float> v(257);
    for (auto& x : v) x = g(rng);
    models.push_back(vec(v));
  }
  const Tensor base = vec(std::vector<float>(257, 0.1f));
  const std::vector<Tensor> reversed(models.rbegin(), models.rend());
  const std::vector<Params> p(3, {{"weight", 1}, {"density", 0.4}});
  for (const char* m : {"ties", "task_arithmetic", "breadcrumbs_ties"}) {
    std::vector<Params> pm = p;
    if (std::string(m) == "task_arithmetic")
      for (auto& x : pm) x.erase("density");
    expect_near(run(m, models, base, pm), run(m, reversed, base, pm), 1e-5f);
  }
}

// C [n, ldc] after a row Gram added onto 0.5 everywhere: the upper triangle is 0.5 plus
// dot(i, j), a double loop over the rows' values; everything else is left alone.
template <class Dot>
void expect_upper_gram_plus_half(const std::vector<double>& c, int64_t n, int64_t ldc, Dot&& dot,
                                 const std::string& what) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < ldc; ++j) {
      if (j < i || j >= n) {
        EXPECT_EQ(c[i * ldc + j], 0.5) << "outside the upper triangle: left alone";
        continue;
      }
      EXPECT_NEAR(c[i * ldc + j], 0.5 + dot(i, j), 1e-3) << what << ": " << i << "," << j;
    }
}

// The audit's Gram of a few long rows, against a double loop: every row count up to 13
// (the kernel's blocks of four and five rows), rows inside a wider buffer (lda > k), C
// inside a wider matrix (ldc > n), a length that is not a multiple of the blocks or lanes,
// and added onto C.
TEST(Linalg, RowGramAddsTheUpperTriangleOfTheRowsInnerProducts) {
  std::mt19937 rng(4);
  std::normal_distribution<float> g;
  for (int64_t n = 1; n <= 13; ++n) {
    const int64_t k = 3000 + 17, lda = k + 5, ldc = n + 2;
    std::vector<float> a(static_cast<size_t>(n * lda));
    for (auto& x : a) x = g(rng);
    std::vector<double> c(static_cast<size_t>(n * ldc), 0.5);
    add_row_gram(n, k, a.data(), lda, c.data(), ldc);
    auto dot = [&](int64_t i, int64_t j) {
      double sum = 0;
      for (int64_t x = 0; x < k; ++x) sum += static_cast<double>(a[i * lda + x]) * a[j * lda + x];
      return sum;
    };
    expect_upper_gram_plus_half(c, n, ldc, dot, std::to_string(n) + " rows");
  }
  // One row of ones: its squared norm exactly.
  std::vector<float> ones(4096, 1.0f);
  double norm = 0;
  add_row_gram(1, 4096, ones.data(), 4096, &norm, 1);
  EXPECT_EQ(norm, 4096.0);
}

// The same Gram over BF16 rows (raw bits, one pointer a row), with vdpbf16ps where the
// build has it and through the float kernel otherwise: the products are exact either way,
// so both match a double loop over the values the bits stand for.
TEST(Linalg, Bf16RowGramMatchesADoubleLoopWithAndWithoutTheBf16Instructions) {
  std::mt19937 rng(6);
  std::normal_distribution<float> g;
  for (auto* gram : {&add_row_gram_bf16, &add_row_gram_bf16_portable})
    for (int64_t n = 1; n <= 13; ++n)
      for (const int64_t k : {int64_t{1}, int64_t{31}, int64_t{4096 + 33}}) {
        const int64_t ldc = n + 2;
        std::vector<std::vector<uint16_t>> rows(static_cast<size_t>(n));
        std::vector<const uint16_t*> pointers;
        for (auto& row : rows) {
          for (int64_t x = 0; x < k; ++x) row.push_back(f32_to_bf16(g(rng)));
          pointers.push_back(row.data());
        }
        std::vector<double> c(static_cast<size_t>(n * ldc), 0.5);
        (*gram)(pointers, k, c.data(), ldc);
        auto dot = [&](int64_t i, int64_t j) {
          double sum = 0;
          for (int64_t x = 0; x < k; ++x) sum += static_cast<double>(bf16_to_f32(rows[i][x])) * bf16_to_f32(rows[j][x]);
          return sum;
        };
        expect_upper_gram_plus_half(c, n, ldc, dot, std::to_string(n) + " rows of " + std::to_string(k));
      }
  // A row of ones: its squared norm exactly.
  const std::vector<uint16_t> ones(4096, f32_to_bf16(1.0f));
  const uint16_t* row = ones.data();
  for (auto* gram : {&add_row_gram_bf16, &add_row_gram_bf16_portable}) {
    double norm = 0;
    (*gram)({&row, 1}, 4096, &norm, 1);
    EXPECT_EQ(norm, 4096.0);
  }
}

TEST(Linalg, PolarFactorIsOrthonormalAndSymmetrising) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  Matrix a(7, 4);
  for (auto& x : a.data) x = g(rng);
  const Matrix p = polar_factor(a);
  const Matrix ptp = matmul(p, p, true, false);  // P^T P = I
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(ptp(i, j), i == j ? 1.0f : 0.0f, 1e-5f);
  // A = P H with H = P^T A symmetric positive definite: the defining property of the
  // polar decomposition.
  const Matrix h = matmul(p, a, true, false);
  for (int i = 0; i < 4; ++i) {
    EXPECT_GT(h(i, i), 0.0f);
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(h(i, j), h(j, i), 1e-4f);
  }
}

TEST(Linalg, SvdReconstructsAndOrdersSingularValues) {
  std::mt19937 rng(6);
  std::normal_distribution<float> g;
  Matrix a(5, 8);
  for (auto& x : a.data) x = g(rng);
  const Svd d = svd(a);
  ASSERT_EQ(d.s.size(), 5u);
  for (size_t i = 1; i < d.s.size(); ++i) EXPECT_GE(d.s[i - 1], d.s[i]);
  Matrix us = d.u;
  for (int64_t i = 0; i < us.rows; ++i)
    for (int64_t j = 0; j < us.cols; ++j) us(i, j) *= d.s[static_cast<size_t>(j)];
  const Matrix back = matmul(us, d.vt);
  // Reference: the input itself.
  for (size_t i = 0; i < a.data.size(); ++i) EXPECT_NEAR(back.data[i], a.data[i], 1e-4f);
}

}  // namespace
}  // namespace amalgam
