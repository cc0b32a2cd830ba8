#include "core/parallel.h"

#include <omp.h>

namespace amalgam {

int num_threads() {
  return omp_get_max_threads();
}

}  // namespace amalgam
