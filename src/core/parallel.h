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
// The CPUs this process may run on (sched_getaffinity: taskset, cgroups' cpusets, Slurm's
// allocation), not the machine's count.
int available_cores();
// Sets the threads of every parallel loop and of BLAS (the OpenMP build of OpenBLAS follows
// OpenMP's count). Results do not depend on it: see the tests of every method at 1, 2 and 3.
void set_thread_count(int threads);
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

// The same for streams whose threads share the cores with I/O threads: chunks are
// handed out as threads free up (an even static split would leave the others waiting for
// a preempted one), and spread so that threads working at once are far apart in the range:
// the k-th chunk handed out is the (k / T)-th of region k % T, T the thread count. Two
// threads reading neighbouring chunks of a file at once make its page-cache pages'
// reference counts bounce between cores (measured: the kernel's page lookup tripled).
template <class Fn>
void parallel_chunks_spread(size_t n, size_t chunk, Fn&& fn) {
  const size_t nchunks = (n + chunk - 1) / chunk;
  if (nchunks <= 1) {
    if (n > 0) fn(size_t{0}, n);
    return;
  }
  const size_t threads = std::min<size_t>(static_cast<size_t>(num_threads()), nchunks);
  const size_t per_region = (nchunks + threads - 1) / threads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(static_cast <int>(threads))
  for (size_t k = 0; k < threads * per_region; ++k) {
    const size_t c = (k % threads) * per_region + k / threads;
    if (c < nchunks) fn(c * chunk, std::min(n, (c + 1) * chunk));
  }
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
