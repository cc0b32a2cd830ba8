// ties: TIES-Merging: keep the top-density magnitudes of each task vector, elect a sign per entry, average the agreeing
// entries.
#include "merge/task_arithmetic_family.h"

namespace amalgam {
AMALGAM_REGISTER_TASK_ARITHMETIC_VARIANT(Ties, "ties",
                                         "TIES-Merging: keep the top-density magnitudes of each task vector, elect a "
                                         "sign per entry, average the agreeing entries",
                                         Magnitude, /*sign_consensus=*/true, /*default_normalize=*/true,
                                         /*default_rescale=*/false)
}  // namespace amalgam
