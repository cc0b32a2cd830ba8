// breadcrumbs: Model Breadcrumbs: drop the top gamma and keep the next density fraction of each task vector, then sum.
#include "merge/task_arithmetic_family.h"

namespace amalgam {
AMALGAM_REGISTER_TASK_ARITHMETIC_VARIANT(
    Breadcrumbs, "breadcrumbs",
    "Model Breadcrumbs: drop the top gamma and keep the next density fraction of each task vector, then sum",
    MagnitudeBand, /*sign_consensus=*/false, /*default_normalize=*/false,
    /*default_rescale=*/false)
}  // namespace amalgam
