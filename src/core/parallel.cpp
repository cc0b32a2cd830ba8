#include "core/parallel.h"

#include <algorithm>

#include <omp.h>
#include <sched.h>

namespace amalgam {

int num_threads() {
  return omp_get_max_threads();
}

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return omp_get_num_procs();
  return std::max(1, CPU_COUNT(&set));
}

void set_thread_count(int threads) {
  omp_set_num_threads(std::max(1, threads));
}

int thread_index() {
  return omp_get_thread_num();
}

}  // namespace amalgam
