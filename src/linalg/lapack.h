// Declarations of the Fortran LAPACK routines amalgam calls (OpenBLAS exports them). They
// take column-major matrices; linalg.cpp passes row-major buffers as the transposed
// problem instead of copying them.
#pragma once

extern "C" {
void sgesdd_(const char* jobz, const int* m, const int* n, float* a, const int* lda, float* s, float* u, const int* ldu,
             float* vt, const int* ldvt, float* work, const int* lwork, int* iwork, int* info);
void sgesvd_(const char* jobu, const char* jobvt, const int* m, const int* n, float* a, const int* lda, float* s,
             float* u, const int* ldu, float* vt, const int* ldvt, float* work, const int* lwork, int* info);
}
