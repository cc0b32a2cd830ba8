#include "linalg/linalg.h"

#include <cblas.h>

#include <algorithm>
#include <stdexcept>
#include <string>

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
