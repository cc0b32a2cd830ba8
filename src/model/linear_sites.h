// A model's linear "sites": the linear weights that read one input, listed by the model's
// family. q, k and v read the same normalized stream, so they are one site (and gate and up
// another); every site has one Gram in a statistics file. This table is what RegMean's
// statistics, its merge and MASS's routing need to know about an architecture, and nothing
// else: the family fills it, the code that measures or merges reads it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace amalgam {

// What a site's input is, the same in every family: a transformer block has the four, and
// a head (CLIP's projection) may have one more after the blocks.
enum class SiteRole {
  AttentionInput,   // the normed stream that q, k and v read
  AttentionOutput,  // the attention's context, read by the output projection
  MlpInput,         // the normed stream that fc1 (or gate and up) read
  MlpOutput,        // the activation, read by fc2 (down_proj)
  Head,             // after the blocks: what the head's linear layer reads
};

struct LinearSiteSpec {
  int64_t layer = -1;  // the block, or -1 after the blocks (CLIP's projection)
  SiteRole role = SiteRole::AttentionInput;
  std::string gram;                  // the Gram's tensor name: the weights' common module, then ".gram"
  std::vector<std::string> weights;  // checkpoint names of the weights that read this input
  int64_t width = 0;                 // the input's width: the Gram is [width, width]
  bool stored_transposed = false;    // the weights are stored [in, out] (GPT-2's Conv1D), not [out, in]
};

// What a tap sees while a model runs: one site's input rows for the whole batch, [rows,
// width], row-major, valid tokens only (never padding), valid only during the call.
struct SiteInput {
  int64_t layer;  // -1 after the blocks
  SiteRole role;
  const float* data;
  int64_t rows;
  int64_t width;
};
using SiteTap = std::function<void(const SiteInput&)>;

// Calls the tap, if there is one, for rows that exist.
inline void call_tap(const SiteTap& tap, int64_t layer, SiteRole role, const float* data, int64_t rows, int64_t width) {
  if (tap && rows > 0) tap(SiteInput{layer, role, data, rows, width});
}

// The site of `role` in a site table, or nullptr.
inline const LinearSiteSpec* find_site(const std::vector<LinearSiteSpec>& sites, SiteRole role) {
  for (const auto& s : sites)
    if (s.role == role) return &s;
  return nullptr;
}

}  // namespace amalgam
