// task_arithmetic: W0 + lambda * sum_t w_t (W_t - W0).
#include "merge/task_arithmetic_family.h"

namespace amalgam {
AMALGAM_REGISTER_TASK_ARITHMETIC_VARIANT(TaskArithmetic, "task_arithmetic", "W0 + lambda * sum_t w_t (W_t - W0)", None,
                                         /*sign_consensus=*/false, /*default_normalize=*/false,
                                         /*default_rescale=*/false)
}  // namespace amalgam
