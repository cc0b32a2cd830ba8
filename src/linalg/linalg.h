// Thin wrappers over BLAS and LAPACK (OpenBLAS). Matrices are row-major, as PyTorch and
// safetensors store them. No numerical kernel is written by hand here: every product,
// factorisation and decomposition is a BLAS or LAPACK call.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace amalgam {

// A dense row-major matrix of floats.
struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;

  Matrix() = default;
  Matrix(int64_t r, int64_t c) : rows(r), cols(c), data(static_cast<size_t>(r * c), 0.0f) {}
  float* row(int64_t i) { return data.data() + i * cols; }
  const float* row(int64_t i) const { return data.data() + i * cols; }
  float& operator()(int64_t i, int64_t j) { return data[static_cast<size_t>(i * cols + j)]; }
  float operator()(int64_t i, int64_t j) const { return data[static_cast<size_t>(i * cols + j)]; }
};

// C = alpha * op(A) op(B) + beta * C, op = transpose when the flag is set (sgemm).
void gemm(bool trans_a, bool trans_b, float alpha, const Matrix& a, const Matrix& b, float beta, Matrix& c);
Matrix matmul(const Matrix& a, const Matrix& b, bool trans_a = false, bool trans_b = false);
// The same on raw row-major buffers with leading dimensions, for views into larger buffers
// (one attention head's columns of a [tokens, width] matrix): C (m x n) = alpha op(A) op(B) + beta C.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
// Double precision: gradient checks run the training ops in double.
// The same product computed in fixed blocks of rows of C (128, or 512 for a B of 4M floats or
// more), one block per thread: its bits
// do not depend on the thread count (OpenBLAS's own threading splits the work by the thread
// count, and its results differ in the last bits between 1 and 2 threads), and a thread
// slowed by another process on its core takes fewer blocks instead of holding up the rest.
void sgemm_fixed_blocks(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                        int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
// While one lives, BLAS and LAPACK called from this thread run on one thread: their bits then
// do not depend on the thread count (a threaded factorisation's reductions do). For the
// solves and decompositions of a merge, which run side by side on other work or are small.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int saved_;
};

void dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
           const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

// C = alpha * A^T A + beta * C (ssyrk) for A: [rows, n] row-major with leading dimension
// lda, C: [n, n]. Only C's upper triangle (j >= i) is written: a Gram matrix in half the
// work of a GEMM.
void syrk_upper(int64_t rows, int64_t n, float alpha, const float* a, int64_t lda, float beta, float* c, int64_t ldc);
// C += A A^T for a few long rows, A: [n, k] row-major with leading dimension lda, C: [n, n]
// row-major in double with leading dimension ldc, upper triangle (j >= i) only: the inner
// products of a handful of task vectors (the merge audit). Not ssyrk: for n around 10 BLAS
// packs both operands and fills micro-tiles made for many rows, which made the audit cost
// 40-80% of a data-free merge (bench/audit_cost.sh). Here rows are taken in blocks of four
// (the last of five rather than leave one row alone) against each other, each row vector
// loaded once per step and every accumulator in a register, which runs at the FMA bound
// (16-float vectors with AVX-512); over blocks of 1024 columns that stay in L1, in float
// lanes summed into C in double. The bits do not depend on the thread count.
void add_row_gram(int64_t n, int64_t k, const float* a, int64_t lda, double* c, int64_t ldc);
// The same over rows of BF16 values (the raw bits, `rows` pointing at each row's first of k
// values), as a merge without a base reads them from BF16 checkpoints: the products are
// exact in float, as with F32 rows, and with AVX512-BF16 (vdpbf16ps) twice as many are made
// per instruction, on half the bytes, with no F32 copy of the rows (the audit of an 8 x 337
// MB linear merge: 0.21 -> 0.07-0.10 s of CPU). Without AVX512-BF16 in the build, the
// portable version: the same products through the float kernel, summed in another order,
// so the last bits differ between the two.
void add_row_gram_bf16(std::span<const uint16_t* const> rows, int64_t k, double* c, int64_t ldc);
void add_row_gram_bf16_portable(std::span<const uint16_t* const> rows, int64_t k, double* c, int64_t ldc);

// Solves A X = B for a symmetric positive semi-definite A ([n, n], row-major, double) and
// B ([n, m], row-major), overwriting B with X. Cholesky (dpotrf/dpotrs) when A is positive
// definite and reasonably conditioned; otherwise (Cholesky fails, or the reciprocal
// condition estimate is below `min_rcond`) the pseudo-inverse from a symmetric
// eigendecomposition (dsyevd), eigenvalues below n * eps * max dropped. Never an explicit
// inverse.
struct SymmetricSolve {
  bool fallback = false;  // the eigendecomposition ran
  double condition = 0;   // 1-norm estimate (Cholesky) or max/min eigenvalue (fallback); inf if singular
  int64_t rank = 0;       // n, or the eigenvalues kept by the fallback
};
SymmetricSolve solve_symmetric(std::span<const double> a, int64_t n, std::span<double> b, int64_t m,
                               double min_rcond = 1e-12);

// Thin SVD A = U diag(S) Vt, U: m x r, S: r (descending), Vt: r x n, r = min(m, n)
// (LAPACK sgesdd, falling back to sgesvd if the divide-and-conquer driver fails).
struct Svd {
  Matrix u;
  std::vector<float> s;
  Matrix vt;
};
Svd svd(const Matrix& a);

// The nearest matrix with orthonormal columns (rows, if A is wide) in Frobenius norm:
// P Q^T where A = P Sigma Q^T.
Matrix polar_factor(const Matrix& a);

}  // namespace amalgam
