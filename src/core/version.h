// What amalgam writes into its outputs to say that it made them.
#pragma once

namespace amalgam {

// "amalgam 0.1.0": the `written_by` of every safetensors header and output marker amalgam
// writes, and the version line of its READMEs.
inline constexpr const char* kWrittenBy = "amalgam " AMALGAM_VERSION;

}  // namespace amalgam
