// Threads across independent work, through OpenMP.
//
// Inside an outer parallel region these run serially (OpenMP's nested parallelism is
// off), so a parallel kernel called from a parallel loop does not oversubscribe the cores.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>

namespace amalgam {

int num_threads();
// The calling thread's number in the innermost parallel region: [0, num_threads()), 0 outside one.
int thread_index();

// Calls fn(begin, end) on consecutive ranges of at most `chunk` elements covering [0, n).
// fn must not throw: an exception cannot leave an OpenMP region.
template <class Fn>
void parallel_chunks(size_t n, size_t chunk, Fn&& fn) {
  const size_t nchunks = (n + chunk - 1) / chunk;
  if (nchunks <= 1) {
    if (n > 0) fn(size_t{0}, n);
    return;
  }
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < nchunks; ++c) fn(c * chunk, std::min(n, (c + 1) * chunk));
}

// Calls fn(i) for i in [0, n), dynamically scheduled; the first exception thrown by any
// call is rethrown here once all threads are done (later items are skipped).
template <class Fn>
void parallel_for(size_t n, Fn&& fn) {
  std::exception_ptr first_error;
  std::mutex mutex;
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < n; ++i) {
    {
      std::lock_guard lock(mutex);
      if (first_error) continue;
    }
    try {
      fn(i);
    } catch (...) {
      std::lock_guard lock(mutex);
      if (!first_error) first_error = std::current_exception();
    }
  }
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace amalgam
