// dare_ties: DARE drop and L1 rescale, then TIES sign consensus.
#include "merge/task_arithmetic_family.h"

namespace amalgam {
AMALGAM_REGISTER_TASK_ARITHMETIC_VARIANT(DareTies, "dare_ties", "DARE drop and L1 rescale, then TIES sign consensus",
                                         Random, /*sign_consensus=*/true, /*default_normalize=*/false,
                                         /*default_rescale=*/true)
}  // namespace amalgam
