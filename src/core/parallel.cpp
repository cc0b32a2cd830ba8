#include "core/parallel.h"

#include <omp.h>

namespace amalgam {

int num_threads() {
  return omp_get_max_threads();
}

int thread_index() {
  return omp_get_thread_num();
}

}  // namespace amalgam
