#include "linalg/linalg.h"

#include <cblas.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/parallel.h"
#include "linalg/lapack.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

namespace amalgam {

void gemm(bool trans_a, bool trans_b, float alpha, const Matrix& a, const Matrix& b, float beta, Matrix& c) {
  const int64_t m = trans_a ? a.cols : a.rows;
  const int64_t k = trans_a ? a.rows : a.cols;
  const int64_t kb = trans_b ? b.cols : b.rows;
  const int64_t n = trans_b ? b.rows : b.cols;
  if (k != kb || c.rows != m || c.cols != n) throw std::logic_error("gemm: shapes do not match");
  sgemm(trans_a, trans_b, m, n, k, alpha, a.data.data(), std::max<int64_t>(1, a.cols), b.data.data(),
        std::max<int64_t>(1, b.cols), beta, c.data.data(), std::max<int64_t>(1, c.cols));
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

void sgemm_fixed_blocks(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                        int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  // OpenBLAS packs the whole of op(B) for every block, so a large B (an LLM's weights) takes
  // larger blocks when there are rows for at least four: 512 rows when B holds 4M floats or
  // more (on a Llama-3.2-1B forward, blocks of 128 rows spent 11% of the time packing; an
  // [4096, 2048] x [2048, 8192] product ran at 163 GFLOP/s in blocks of 128 and 187 in blocks
  // of 512 on the 2-core VM). The size depends on the shape only, never the thread count;
  // CLIP's and the zoo's matrices keep 128.
  const int64_t kRows = n * k >= (int64_t{1} << 22) && m >= 2048 ? 512 : 128;
  const int64_t blocks = (m + kRows - 1) / kRows;
  // Each block of rows of C on one thread (BLAS is single-threaded inside a parallel loop,
  // and alone when there is one block): the same blocks whatever the thread count.
  parallel_for(static_cast<size_t>(std::max<int64_t>(blocks, 2)), [&](size_t i) {
    const int64_t begin = static_cast<int64_t>(i) * kRows, rows = std::min(kRows, m - begin);
    if (rows <= 0) return;
    const float* a_rows = trans_a ? a + begin : a + begin * lda;
    sgemm(trans_a, trans_b, rows, n, k, alpha, a_rows, lda, b, ldb, beta, c + begin * ldc, ldc);
  });
}

void dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
           const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

SingleThreadedBlas::SingleThreadedBlas() : saved_(num_threads()) {
  set_thread_count(1);
}

SingleThreadedBlas::~SingleThreadedBlas() {
  set_thread_count(saved_);
}

void syrk_upper(int64_t rows, int64_t n, float alpha, const float* a, int64_t lda, float beta, float* c, int64_t ldc) {
  if (n == 0) return;
  // Row-major upper triangle of A^T A, in fixed blocks of 128 columns of C, each on one
  // thread (as sgemm_fixed_blocks, for the same reason: bits independent of the thread
  // count): block [j0, j1) is its diagonal block by SYRK and the rows above it by GEMM.
  constexpr int64_t kCols = 128;
  const int64_t blocks = (n + kCols - 1) / kCols;
  parallel_for(static_cast<size_t>(std::max<int64_t>(blocks, 2)), [&](size_t i) {
    const int64_t j0 = static_cast<int64_t>(i) * kCols, width = std::min(kCols, n - j0);
    if (width <= 0) return;
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<blasint>(width), static_cast<blasint>(rows), alpha,
                a + j0, static_cast<blasint>(lda), beta, c + j0 * ldc + j0, static_cast<blasint>(ldc));
    if (j0 > 0) sgemm(true, false, j0, width, rows, alpha, a, lda, a + j0, lda, beta, c + j0, ldc);
  });
}

namespace {

// The inner products of A rows with B rows over len floats, added to c (row-major, ldc):
// A*B vector accumulators (GCC/Clang vector extensions, of 16 floats with AVX-512 and 8
// without, kept in registers; with AVX-512's 32 vector registers a 4x5 block's 20
// accumulators and 9 row vectors all fit), each row vector loaded once per step, summed
// into C in double at the end. With kSame the rows are one block against itself and only
// the upper triangle (q >= r) is computed.
#if defined(__AVX512F__)
constexpr int kFloatLanes = 16;
#else
constexpr int kFloatLanes = 8;
#endif
using FloatVector = float __attribute__((vector_size(4 * kFloatLanes)));

FloatVector load_floats(const float* p) {
  FloatVector v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Pins a value in a register: without it GCC folds a load into every FMA that uses the
// vector, and the loop becomes bound by loads (two per cycle) instead of by FMAs.
FloatVector in_register(FloatVector v) {
#if defined(__x86_64__) && defined(__AVX__)  // a vector fits one register
  __asm__("" : "+v"(v));
#endif
  return v;
}

// A vector's float lanes added pairwise, halves onto halves, into one: a few vector adds in
// place of one scalar add per lane, for every pair of rows and block of columns.
template <class Vector>
double lane_total(const Vector& v) {
  constexpr int kLanes = sizeof(Vector) / sizeof(float);
  float lanes[kLanes];
  std::memcpy(lanes, &v, sizeof v);
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

template <int A, int B, bool kSame>
struct FloatBlockDots {
  static void add(const float* const* a, const float* const* b, int64_t len, double* c, int64_t ldc) {
    FloatVector s[A][B] = {};
    int64_t x = 0;
    for (; x + kFloatLanes <= len; x += kFloatLanes) {
      FloatVector va[A], vb[B];
      for (int r = 0; r < A; ++r) va[r] = in_register(load_floats(a[r] + x));
      for (int q = 0; q < B; ++q) vb[q] = kSame ? va[q] : in_register(load_floats(b[q] + x));
      for (int r = 0; r < A; ++r)
        for (int q = kSame ? r : 0; q < B; ++q) s[r][q] += va[r] * vb[q];
    }
    for (int r = 0; r < A; ++r)
      for (int q = kSame ? r : 0; q < B; ++q) {
        double sum = 0;
        for (int64_t i = x; i < len; ++i) sum += static_cast<double>(a[r][i]) * b[q][i];
        sum += lane_total(s[r][q]);
        c[r * ldc + q] += sum;
      }
  }
};

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
// The same over BF16 rows, 32 columns a step: vdpbf16ps multiplies pairs of BF16 values
// (exactly: eight significant bits times eight fit a float) and adds both products to a
// float lane, twice the products per instruction of an F32 FMA. The last columns are
// padded with zeros.
template <int A, int B, bool kSame>
struct Bf16BlockDots {
  // A block against itself has few accumulators (10 for four rows), too few to hide
  // vdpbf16ps's latency: two sets then take alternate steps.
  static constexpr int kSets = kSame && A * (A + 1) / 2 <= 10 ? 2 : 1;

  static void add(const uint16_t* const* a, const uint16_t* const* b, int64_t len, double* c, int64_t ldc) {
    __m512 s[kSets][A][B];
    for (auto& set : s)
      for (auto& row : set)
        for (auto& acc : row) acc = _mm512_setzero_ps();
    // Loads through memcpy: an intrinsic's load may alias anything, s included, and GCC then
    // stores every accumulator back to the stack at each step.
    auto load = [](const uint16_t* p) {
      __m512bh v;
      std::memcpy(&v, p, sizeof v);
      return v;
    };
    auto step = [&](int set, const uint16_t* const* rows_a, const uint16_t* const* rows_b, int64_t x) {
      __m512bh va[A], vb[B];
      for (int r = 0; r < A; ++r) va[r] = load(rows_a[r] + x);
      for (int q = 0; q < B; ++q) vb[q] = kSame ? va[q] : load(rows_b[q] + x);
      for (int r = 0; r < A; ++r)
        for (int q = kSame ? r : 0; q < B; ++q) s[set][r][q] = _mm512_dpbf16_ps(s[set][r][q], va[r], vb[q]);
    };
    int64_t x = 0;
    for (; x + 32 * kSets <= len; x += 32 * kSets)
      for (int set = 0; set < kSets; ++set) step(set, a, b, x + 32 * set);
    for (; x + 32 <= len; x += 32) step(0, a, b, x);
    if (x < len) {  // the last columns, padded with zeros
      uint16_t tail_a[A][32] = {}, tail_b[B][32] = {};
      const uint16_t *ta[A], *tb[B];
      for (int r = 0; r < A; ++r) ta[r] = tail_a[r], std::copy(a[r] + x, a[r] + len, tail_a[r]);
      for (int q = 0; q < B; ++q) tb[q] = tail_b[q], std::copy(b[q] + x, b[q] + len, tail_b[q]);
      step(0, ta, tb, 0);
    }
    for (int r = 0; r < A; ++r)
      for (int q = kSame ? r : 0; q < B; ++q) {
        double sum = 0;
        for (const auto& set : s) sum += lane_total(set[r][q]);
        c[r * ldc + q] += sum;
      }
  }
};
#endif

// Kernel<A, B, same>::add for block sizes known only at run time: 1 to 5 rows against 1 to
// 5 (4 x 5 at most off the diagonal), or a block of up to 5 rows against itself.
template <template <int, int, bool> class Kernel, int A, class T>
void add_block_dots_b(int b_rows, bool same, const T* const* a, const T* const* b, int64_t len, double* c,
                      int64_t ldc) {
  if (same) return Kernel<A, A, true>::add(a, b, len, c, ldc);
  if constexpr (A <= 4) {
    switch (b_rows) {
      case 1:
        return Kernel<A, 1, false>::add(a, b, len, c, ldc);
      case 2:
        return Kernel<A, 2, false>::add(a, b, len, c, ldc);
      case 3:
        return Kernel<A, 3, false>::add(a, b, len, c, ldc);
      case 4:
        return Kernel<A, 4, false>::add(a, b, len, c, ldc);
      case 5:
        return Kernel<A, 5, false>::add(a, b, len, c, ldc);
    }
  }
  throw std::logic_error("add_row_gram: block out of range");
}

template <template <int, int, bool> class Kernel, class T>
void add_block_dots(int a_rows, int b_rows, bool same, const T* const* a, const T* const* b, int64_t len, double* c,
                    int64_t ldc) {
  switch (a_rows) {
    case 1:
      return add_block_dots_b<Kernel, 1>(b_rows, same, a, b, len, c, ldc);
    case 2:
      return add_block_dots_b<Kernel, 2>(b_rows, same, a, b, len, c, ldc);
    case 3:
      return add_block_dots_b<Kernel, 3>(b_rows, same, a, b, len, c, ldc);
    case 4:
      return add_block_dots_b<Kernel, 4>(b_rows, same, a, b, len, c, ldc);
    case 5:
      return add_block_dots_b<Kernel, 5>(b_rows, same, a, b, len, c, ldc);
  }
  throw std::logic_error("add_row_gram: block out of range");
}

// Rows taken in blocks of four (the last one five rather than leave a single row, which
// would be bound by loads) against each other, over blocks of `block` columns that stay in
// L1. A 4x5 block's 20 accumulators and 9 row vectors still fit AVX-512's 32 registers.
template <template <int, int, bool> class Kernel, class RowAt>
void add_blocked_row_gram(int64_t n, RowAt row_at, int64_t k, int64_t block, double* c, int64_t ldc) {
  using T = std::remove_cvref_t<decltype(*row_at(0))>;
  const int64_t blocks = n > 4 && n % 4 == 1 ? n / 4 : (n + 3) / 4;
  auto start = [&](int64_t b) { return b == blocks ? n : 4 * b; };
  for (int64_t k0 = 0; k0 < k; k0 += block) {
    const int64_t len = std::min(block, k - k0);
    for (int64_t bi = 0; bi < blocks; ++bi)
      for (int64_t bj = bi; bj < blocks; ++bj) {
        const int64_t i = start(bi), j = start(bj), ni = start(bi + 1) - i, nj = start(bj + 1) - j;
        std::array<const T*, 5> rows_i{}, rows_j{};
        for (int64_t r = 0; r < ni; ++r) rows_i[r] = row_at(i + r) + k0;
        for (int64_t r = 0; r < nj; ++r) rows_j[r] = row_at(j + r) + k0;
        add_block_dots<Kernel>(static_cast<int>(ni), static_cast<int>(nj), bi == bj, rows_i.data(), rows_j.data(), len,
                               c + i * ldc + j, ldc);
      }
  }
}

// Columns per block: nine rows stay in L1 (4 KB of floats, or 4 KB of BF16 values, a row).
constexpr int64_t kFloatGramBlock = 1024, kBf16GramBlock = 2048;

}  // namespace

void add_row_gram(int64_t n, int64_t k, const float* a, int64_t lda, double* c, int64_t ldc) {
  add_blocked_row_gram<FloatBlockDots>(
      n, [&](int64_t r) { return a + r * lda; }, k, kFloatGramBlock, c, ldc);
}

void add_row_gram_bf16_portable(std::span<const uint16_t* const> rows, int64_t k, double* c, int64_t ldc) {
  // The same products as vdpbf16ps, through the float kernel a block at a time (converted
  // by one thread: the caller is one of the merge's threads).
  thread_local std::vector<float> block;
  const auto n = static_cast<int64_t>(rows.size());
  block.resize(static_cast<size_t>(n * kFloatGramBlock));
  for (int64_t k0 = 0; k0 < k; k0 += kFloatGramBlock) {
    const int64_t len = std::min(kFloatGramBlock, k - k0);
    for (int64_t r = 0; r < n; ++r)
      to_f32_checked(DType::BF16, rows[static_cast<size_t>(r)] + k0, block.data() + r * kFloatGramBlock,
                     static_cast<size_t>(len));
    add_row_gram(n, len, block.data(), kFloatGramBlock, c, ldc);
  }
}

void add_row_gram_bf16(std::span<const uint16_t* const> rows, int64_t k, double* c, int64_t ldc) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  add_blocked_row_gram<Bf16BlockDots>(
      static_cast<int64_t>(rows.size()), [&](int64_t r) { return rows[static_cast<size_t>(r)]; }, k, kBf16GramBlock, c,
      ldc);
#else
  add_row_gram_bf16_portable(rows, k, c, ldc);
#endif
}

namespace {

// B [n, m] row-major <-> column-major, which LAPACK's right-hand sides are.
std::vector<double> transposed(std::span<const double> b, int64_t rows, int64_t cols) {
  std::vector<double> t(b.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t[static_cast<size_t>(j * rows + i)] = b[static_cast<size_t>(i * cols + j)];
  return t;
}

// X = E^T diag(1/lambda) E B over the kept eigenpairs, E's rows the eigenvectors.
SymmetricSolve pseudo_inverse_solve(std::span<const double> a, int64_t n, std::span<double> b, int64_t m) {
  const SingleThreadedBlas serial;  // bits independent of the thread count
  std::vector<double> e(a.begin(), a.end()), lambda(static_cast<size_t>(n));
  const int nn = static_cast<int>(n);
  int info = 0, lwork = -1, liwork = -1, iwork_query = 0;
  double work_query = 0;
  // A symmetric row-major matrix is its own column-major transpose; the eigenvectors come
  // back as LAPACK's columns, which are our rows.
  dsyevd_("V", "U", &nn, e.data(), &nn, lambda.data(), &work_query, &lwork, &iwork_query, &liwork, &info);
  lwork = static_cast<int>(work_query);
  liwork = iwork_query;
  std::vector<double> work(static_cast<size_t>(std::max(1, lwork)));
  std::vector<int> iwork(static_cast<size_t>(std::max(1, liwork)));
  dsyevd_("V", "U", &nn, e.data(), &nn, lambda.data(), work.data(), &lwork, iwork.data(), &liwork, &info);
  if (info != 0) throw std::runtime_error("dsyevd failed (info " + std::to_string(info) + ")");
  const double largest = std::max(std::abs(lambda.front()), std::abs(lambda.back()));
  const double cutoff = static_cast<double>(n) * std::numeric_limits<double>::epsilon() * largest;
  SymmetricSolve result{true, 0, 0};
  const double smallest = lambda.front();
  result.condition = smallest > 0 ? largest / smallest : std::numeric_limits<double>::infinity();
  std::vector<double> projected(static_cast<size_t>(n * m));
  dgemm(false, false, n, m, n, 1.0, e.data(), n, b.data(), m, 0.0, projected.data(), m);
  for (int64_t i = 0; i < n; ++i) {
    const double l = lambda[static_cast<size_t>(i)];
    const double scale = l > cutoff ? 1.0 / l : 0.0;
    if (l > cutoff) ++result.rank;
    for (int64_t j = 0; j < m; ++j) projected[static_cast<size_t>(i * m + j)] *= scale;
  }
  dgemm(true, false, n, m, n, 1.0, e.data(), n, projected.data(), m, 0.0, b.data(), m);
  return result;
}

}  // namespace

namespace {

// The tiles of the Cholesky factorization and of the right-hand sides. Fixed by the shape,
// never by the thread count: each tile is one single-threaded BLAS call (BLAS runs on one
// thread inside a parallel loop), in the same order on any number of threads, so the bits
// do not depend on it. LAPACK's own dpotrf and dpotrs on all threads would not promise that,
// and on one they left the second core idle for most of a decoder's RegMean merge: the
// 8192-wide system of a Llama-3.2-1B's down_proj (dpotrf, then dpotrs for 2048 columns) took
// 14.3 s of the layer's 21.4 s on the 2-core VM.
constexpr int64_t kCholeskyTile = 256;

// A = U^T U in place, A [n, n] column-major (a symmetric row-major matrix is the same
// matrix), U in the upper triangle: the right-looking tiled algorithm. For each diagonal
// tile k: U_kk = chol(A_kk); the tiles right of it U_kj = U_kk^-T A_kj; then every tile of
// the trailing upper triangle A_ij -= U_ki^T U_kj (i <= j), the bulk of the work, in
// parallel. Returns LAPACK's info: 0, or the order of the leading minor that is not
// positive definite.
int tiled_cholesky(double* a, int64_t n) {
  const int64_t nb = kCholeskyTile, tiles = (n + nb - 1) / nb;
  const auto tile = [&](int64_t i, int64_t j) { return a + i * nb + j * nb * n; };
  const auto size = [&](int64_t i) { return static_cast<blasint>(std::min(nb, n - i * nb)); };
  const auto ld = static_cast<blasint>(n);
  for (int64_t k = 0; k < tiles; ++k) {
    int info = 0;
    {
      const SingleThreadedBlas serial;
      const int kk = size(k), lda = static_cast<int>(n);
      dpotrf_("U", &kk, tile(k, k), &lda, &info);
    }
    if (info != 0) return static_cast<int>(k * nb) + info;
    const int64_t right = tiles - k - 1;
    parallel_for(static_cast<size_t>(std::max<int64_t>(right, 2)), [&](size_t t) {
      const int64_t j = k + 1 + static_cast<int64_t>(t);
      if (j >= tiles) return;
      cblas_dtrsm(CblasColMajor, CblasLeft, CblasUpper, CblasTrans, CblasNonUnit, size(k), size(j), 1.0, tile(k, k), ld,
                  tile(k, j), ld);
    });
    std::vector<std::pair<int64_t, int64_t>> trailing;
    for (int64_t j = k + 1; j < tiles; ++j)
      for (int64_t i = k + 1; i <= j; ++i) trailing.emplace_back(i, j);
    parallel_for(std::max<size_t>(trailing.size(), 2), [&](size_t t) {
      if (t >= trailing.size()) return;
      const auto [i, j] = trailing[t];
      if (i == j)
        cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, size(i), size(k), -1.0, tile(k, i), ld, 1.0, tile(i, i), ld);
      else
        cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, size(i), size(j), size(k), -1.0, tile(k, i), ld,
                    tile(k, j), ld, 1.0, tile(i, j), ld);
    });
  }
  return 0;
}

// X = A^-1 B from tiled_cholesky's factor, B [n, m] column-major overwritten: blocks of
// kCholeskyTile columns, each solved on its own (a column's solution does not depend on the
// others).
void solve_by_cholesky(const double* factor, int64_t n, double* b, int64_t m) {
  const int64_t blocks = (m + kCholeskyTile - 1) / kCholeskyTile;
  parallel_for(static_cast<size_t>(std::max<int64_t>(blocks, 2)), [&](size_t c) {
    const int64_t first = static_cast<int64_t>(c) * kCholeskyTile;
    if (first >= m) return;
    const int nn = static_cast<int>(n), width = static_cast<int>(std::min(kCholeskyTile, m - first));
    int info = 0;
    dpotrs_("U", &nn, &width, factor, &nn, b + first * n, &nn, &info);
    if (info != 0) throw std::runtime_error("dpotrs failed (info " + std::to_string(info) + ")");
  });
}

}  // namespace

SymmetricSolve solve_symmetric(std::span<const double> a, int64_t n, std::span<double> b, int64_t m, double min_rcond) {
  if (a.size() != static_cast<size_t>(n * n) || b.size() != static_cast<size_t>(n * m))
    throw std::logic_error("solve_symmetric: sizes do not match");
  if (n == 0) return {false, 0, 0};
  const int nn = static_cast<int>(n);
  std::vector<double> factor(a.begin(), a.end());
  std::vector<double> norm_work(static_cast<size_t>(n));
  const double anorm = dlansy_("1", "U", &nn, factor.data(), &nn, norm_work.data());
  const int info = tiled_cholesky(factor.data(), n);
  double rcond = 0;
  if (info == 0) {
    const SingleThreadedBlas serial;  // bits independent of the thread count
    std::vector<double> work(static_cast<size_t>(3 * n));
    std::vector<int> iwork(static_cast<size_t>(n));
    int con_info = 0;
    dpocon_("U", &nn, factor.data(), &nn, &anorm, &rcond, work.data(), iwork.data(), &con_info);
  }
  if (info != 0 || !(rcond >= min_rcond)) return pseudo_inverse_solve(a, n, b, m);
  std::vector<double> rhs = transposed(b, n, m);
  solve_by_cholesky(factor.data(), n, rhs.data(), m);
  const std::vector<double> x = transposed(rhs, m, n);
  std::copy(x.begin(), x.end(), b.begin());
  return {false, 1.0 / rcond, n};
}

Matrix matmul(const Matrix& a, const Matrix& b, bool trans_a, bool trans_b) {
  Matrix c(trans_a ? a.cols : a.rows, trans_b ? b.rows : b.cols);
  gemm(trans_a, trans_b, 1.0f, a, b, 0.0f, c);
  return c;
}

namespace {

// A row-major m x n buffer is the column-major n x m matrix A^T = V S U^T, so LAPACK's
// "U" of that problem is our V^T read row-major, and its "VT" is our U.
int svd_row_major(const Matrix& a, Svd& out, bool divide_and_conquer) {
  Matrix work = a;  // LAPACK overwrites its input
  const int m = static_cast<int>(a.cols), n = static_cast<int>(a.rows), r = std::min(m, n);
  int info = 0, lwork = -1;
  float query = 0;
  std::vector<int> iwork(static_cast<size_t>(8 * r));
  auto call = [&](float* w) {
    if (divide_and_conquer)
      sgesdd_("S", &m, &n, work.data.data(), &m, out.s.data(), out.vt.data.data(), &m, out.u.data.data(), &r, w, &lwork,
              iwork.data(), &info);
    else
      sgesvd_("S", "S", &m, &n, work.data.data(), &m, out.s.data(), out.vt.data.data(), &m, out.u.data.data(), &r, w,
              &lwork, &info);
  };
  call(&query);  // workspace size query
  if (info != 0) return info;
  lwork = static_cast<int>(query) + 1;
  std::vector<float> w(static_cast<size_t>(lwork));
  call(w.data());
  return info;
}

}  // namespace

Svd svd(const Matrix& a) {
  const SingleThreadedBlas serial;  // bits independent of the thread count
  const int64_t m = a.rows, n = a.cols, r = std::min(m, n);
  if (m > INT32_MAX || n > INT32_MAX) throw std::runtime_error("SVD: matrix too large for LAPACK");
  Svd out{Matrix(m, r), std::vector<float>(static_cast<size_t>(r)), Matrix(r, n)};
  if (r == 0) return out;
  int info = svd_row_major(a, out, true);
  // Divide and conquer can fail to converge; the QR-iteration driver is slower but sturdier.
  if (info > 0) info = svd_row_major(a, out, false);
  if (info != 0) throw std::runtime_error("SVD failed (LAPACK info " + std::to_string(info) + ")");
  return out;
}

Matrix polar_factor(const Matrix& a) {
  const Svd d = svd(a);
  return matmul(d.u, d.vt);
}

}  // namespace amalgam
