// della (Deep et al., 2024, DELLA-Merging; mergekit's): DELLA's magnitude-ranked drop
// (MAGPRUNE), L1 rescale, then TIES sign consensus.
#include "merge/task_arithmetic_family.h"

namespace amalgam {
AMALGAM_REGISTER_TASK_ARITHMETIC_VARIANT(Della, "della",
                                         "DELLA: drop entries with probabilities by magnitude rank within each row, "
                                         "rescale, then TIES sign consensus",
                                         DellaMagprune, /*sign_consensus=*/true, /*default_normalize=*/true,
                                         /*default_rescale=*/true)
}  // namespace amalgam
