// della_linear (mergekit's Linear DELLA): DELLA's magnitude-ranked drop and L1 rescale, then
// a weighted sum.
#include "merge/task_arithmetic_family.h"

namespace amalgam {
AMALGAM_REGISTER_TASK_ARITHMETIC_VARIANT(DellaLinear, "della_linear",
                                         "DELLA's drop by magnitude rank within each row and rescale, then a weighted "
                                         "sum",
                                         DellaMagprune, /*sign_consensus=*/false, /*default_normalize=*/false,
                                         /*default_rescale=*/true)
}  // namespace amalgam
