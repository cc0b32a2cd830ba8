// breadcrumbs_ties: Model Breadcrumbs band, then TIES sign consensus.
#include "merge/task_arithmetic_family.h"

namespace amalgam {
AMALGAM_REGISTER_TASK_ARITHMETIC_VARIANT(BreadcrumbsTies, "breadcrumbs_ties",
                                         "Model Breadcrumbs band, then TIES sign consensus", MagnitudeBand,
                                         /*sign_consensus=*/true, /*default_normalize=*/false,
                                         /*default_rescale=*/false)
}  // namespace amalgam
