#include "linalg/linalg.h"

#include <cblas.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "linalg/lapack.h"

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

void dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
           const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

void syrk_upper(int64_t rows, int64_t n, float alpha, const float* a, int64_t lda, float beta, float* c, int64_t ldc) {
  if (n == 0) return;
  // Row-major upper triangle of A^T A.
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<blasint>(n), static_cast<blasint>(rows), alpha, a,
              static_cast<blasint>(lda), beta, c, static_cast<blasint>(ldc));
}

namespace {

// The inner products of A rows with B rows over len floats, added to c (row-major, ldc):
// A*B 8-float accumulators (GCC/Clang vector extensions, kept in registers; with AVX-512's
// 32 vector registers a 4x4 block's 16 accumulators and 8 row vectors all fit), each row
// vector loaded once per step, summed into doubles at the end. With kSame the rows are one
// block against itself and only the upper triangle (q >= r) is computed.
using Float8 = float __attribute__((vector_size(32)));

Float8 load8(const float* p) {
  Float8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Pins a value in a register: without it GCC folds a load into every FMA that uses the
// vector, and the loop becomes bound by loads (two per cycle) instead of by FMAs.
Float8 in_register(Float8 v) {
#if defined(__x86_64__) && defined(__AVX__)  // a 32-byte vector fits one register
  __asm__("" : "+v"(v));
#endif
  return v;
}

template <int A, int B, bool kSame>
void add_block_dots(const float* const* a, const float* const* b, int64_t len, double* c, int64_t ldc) {
  Float8 s[A][B] = {};
  int64_t x = 0;
  for (; x + 8 <= len; x += 8) {
    Float8 va[A], vb[B];
    for (int r = 0; r < A; ++r) va[r] = in_register(load8(a[r] + x));
    for (int q = 0; q < B; ++q) vb[q] = kSame ? va[q] : in_register(load8(b[q] + x));
    for (int r = 0; r < A; ++r)
      for (int q = kSame ? r : 0; q < B; ++q) s[r][q] += va[r] * vb[q];
  }
  for (int r = 0; r < A; ++r)
    for (int q = kSame ? r : 0; q < B; ++q) {
      double sum = 0;
      for (int64_t i = x; i < len; ++i) sum += static_cast<double>(a[r][i]) * b[q][i];
      for (int l = 0; l < 8; ++l) sum += s[r][q][l];
      c[r * ldc + q] += sum;
    }
}

// add_block_dots for block sizes known only at run time: 1 to 4 rows against 1 to 5, or a
// block of up to 5 rows against itself.
template <int A>
void add_block_dots_b(int b_rows, bool same, const float* const* a, const float* const* b, int64_t len, double* c,
                      int64_t ldc) {
  if (same) return add_block_dots<A, A, true>(a, b, len, c, ldc);
  if constexpr (A <= 4) {
    switch (b_rows) {
      case 1:
        return add_block_dots<A, 1, false>(a, b, len, c, ldc);
      case 2:
        return add_block_dots<A, 2, false>(a, b, len, c, ldc);
      case 3:
        return add_block_dots<A, 3, false>(a, b, len, c, ldc);
      case 4:
        return add_block_dots<A, 4, false>(a, b, len, c, ldc);
      case 5:
        return add_block_dots<A, 5, false>(a, b, len, c, ldc);
    }
  }
  throw std::logic_error("add_row_gram: block out of range");
}

void add_block_dots(int a_rows, int b_rows, bool same, const float* const* a, const float* const* b, int64_t len,
                    double* c, int64_t ldc) {
  switch (a_rows) {
    case 1:
      return add_block_dots_b<1>(b_rows, same, a, b, len, c, ldc);
    case 2:
      return add_block_dots_b<2>(b_rows, same, a, b, len, c, ldc);
    case 3:
      return add_block_dots_b<3>(b_rows, same, a, b, len, c, ldc);
    case 4:
      return add_block_dots_b<4>(b_rows, same, a, b, len, c, ldc);
    case 5:
      return add_block_dots_b<5>(b_rows, same, a, b, len, c, ldc);
  }
  throw std::logic_error("add_row_gram: block out of range");
}

}  // namespace

void add_row_gram(int64_t n, int64_t k, const float* a, int64_t lda, double* c, int64_t ldc) {
  // Blocks of four rows (the last one five rather than leave a single row, which would be
  // bound by loads) against each other, over blocks of columns that stay in L1. A 4x5
  // block's 20 accumulators and 9 row vectors still fit AVX-512's 32 registers.
  constexpr int64_t kBlock = 1024;
  const int64_t blocks = n > 4 && n % 4 == 1 ? n / 4 : (n + 3) / 4;
  auto start = [&](int64_t b) { return b == blocks ? n : 4 * b; };
  for (int64_t k0 = 0; k0 < k; k0 += kBlock) {
    const int64_t len = std::min(kBlock, k - k0);
    for (int64_t bi = 0; bi < blocks; ++bi)
      for (int64_t bj = bi; bj < blocks; ++bj) {
        const int64_t i = start(bi), j = start(bj), ni = start(bi + 1) - i, nj = start(bj + 1) - j;
        std::array<const float*, 5> rows_i{}, rows_j{};
        for (int64_t r = 0; r < ni; ++r) rows_i[r] = a + (i + r) * lda + k0;
        for (int64_t r = 0; r < nj; ++r) rows_j[r] = a + (j + r) * lda + k0;
        add_block_dots(static_cast<int>(ni), static_cast<int>(nj), bi == bj, rows_i.data(), rows_j.data(), len,
                       c + i * ldc + j, ldc);
      }
  }
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

SymmetricSolve solve_symmetric(std::span<const double> a, int64_t n, std::span<double> b, int64_t m, double min_rcond) {
  if (a.size() != static_cast<size_t>(n * n) || b.size() != static_cast<size_t>(n * m))
    throw std::logic_error("solve_symmetric: sizes do not match");
  if (n == 0) return {false, 0, 0};
  const int nn = static_cast<int>(n), mm = static_cast<int>(m);
  std::vector<double> factor(a.begin(), a.end());
  int info = 0;
  std::vector<double> norm_work(static_cast<size_t>(n));
  const double anorm = dlansy_("1", "U", &nn, factor.data(), &nn, norm_work.data());
  dpotrf_("U", &nn, factor.data(), &nn, &info);
  double rcond = 0;
  if (info == 0) {
    std::vector<double> work(static_cast<size_t>(3 * n));
    std::vector<int> iwork(static_cast<size_t>(n));
    int con_info = 0;
    dpocon_("U", &nn, factor.data(), &nn, &anorm, &rcond, work.data(), iwork.data(), &con_info);
  }
  if (info != 0 || !(rcond >= min_rcond)) return pseudo_inverse_solve(a, n, b, m);
  std::vector<double> rhs = transposed(b, n, m);
  dpotrs_("U", &nn, &mm, factor.data(), &nn, rhs.data(), &nn, &info);
  if (info != 0) throw std::runtime_error("dpotrs failed (info " + std::to_string(info) + ")");
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
