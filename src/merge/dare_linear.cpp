// dare_linear: DARE: drop task-vector entries with probability 1 - density, rescale to the task vector's L1 norm, then
// sum.
#include "merge/task_arithmetic_family.h"

namespace amalgam {
AMALGAM_REGISTER_TASK_ARITHMETIC_VARIANT(
    DareLinear, "dare_linear",
    "DARE: drop task-vector entries with probability 1 - density, rescale to the task vector's L1 norm, then sum",
    Random,
    /*sign_consensus=*/false, /*default_normalize=*/false,
    /*default_rescale=*/true)
}  // namespace amalgam
