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

// The inner products of three rows with three rows over len floats, added to out: nine
// 8-float accumulators (GCC/Clang vector extensions, so they stay in registers and hide the
// FMA latency) fed by six loads per step, summed into doubles at the end.
using Float8 = float __attribute__((vector_size(32)));

Float8 load8(const float* p) {
  Float8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

void add_dot_tile(const std::array<const float*, 3>& a, const std::array<const float*, 3>& b, int64_t len,
                  double out[3][3]) {
  Float8 s[3][3] = {};
  int64_t x = 0;
  for (; x + 8 <= len; x += 8) {
    const Float8 a0 = load8(a[0] + x), a1 = load8(a[1] + x), a2 = load8(a[2] + x);
    const Float8 b0 = load8(b[0] + x), b1 = load8(b[1] + x), b2 = load8(b[2] + x);
    s[0][0] += a0 * b0, s[0][1] += a0 * b1, s[0][2] += a0 * b2;
    s[1][0] += a1 * b0, s[1][1] += a1 * b1, s[1][2] += a1 * b2;
    s[2][0] += a2 * b0, s[2][1] += a2 * b1, s[2][2] += a2 * b2;
  }
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) {
      double sum = 0;
      for (int64_t i = x; i < len; ++i) sum += static_cast<double>(a[r][i]) * b[c][i];
      for (int l = 0; l < 8; ++l) sum += s[r][c][l];
      out[r][c] += sum;
    }
}

}  // namespace

void add_row_gram(int64_t n, int64_t k, const float* a, int64_t lda, double* c) {
  // Blocks of columns that stay in L1 across the tiles; rows past n read zeros.
  constexpr int64_t kBlock = 1024;
  static const std::vector<float> zeros(kBlock, 0.0f);
  const int64_t tiles = (n + 2) / 3;
  for (int64_t k0 = 0; k0 < k; k0 += kBlock) {
    const int64_t len = std::min(kBlock, k - k0);
    auto rows_of = [&](int64_t tile) {
      std::array<const float*, 3> rows{};
      for (int64_t r = 0; r < 3; ++r) rows[r] = 3 * tile + r < n ? a + (3 * tile + r) * lda + k0 : zeros.data();
      return rows;
    };
    for (int64_t ti = 0; ti < tiles; ++ti)
      for (int64_t tj = ti; tj < tiles; ++tj) {
        double tile[3][3] = {};
        add_dot_tile(rows_of(ti), rows_of(tj), len, tile);
        for (int64_t r = 0; r < 3; ++r)
          for (int64_t q = 0; q < 3; ++q) {
            const int64_t i = 3 * ti + r, j = 3 * tj + q;
            if (i < n && j < n && j >= i) c[i * n + j] += tile[r][q];
          }
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
