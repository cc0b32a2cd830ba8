// A model's linear "sites": the linear weights that read one input, listed by the model's
// family. q, k and v read the same normalized stream, so they are one site (and gate and up
// another); every site has one Gram in a statistics file. This table is what RegMean's
// statistics, its merge and MASS's routing need to know about an architecture, and nothing
// else: the family fills it, the code that measures or merges reads it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace amalgam {

struct LinearSiteSpec {
  int64_t layer = -1;                // the block, or -1 after the blocks (CLIP's projection)
  int site = 0;                      // the family's own id for the site within its block (what its tap reports)
  std::string gram;                  // the Gram's tensor name: the weights' common module, then ".gram"
  std::vector<std::string> weights;  // checkpoint names of the weights that read this input
  int64_t width = 0;                 // the input's width: the Gram is [width, width]
};

}  // namespace amalgam
