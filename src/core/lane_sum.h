// Floating-point sums that vectorise.
#pragma once

#include <cstdint>

namespace amalgam {

// The sum of term(i) for i in [0, n), accumulated in eight interleaved partial sums of type
// T and added pairwise at the end. The compiler keeps the partial sums in vector registers;
// one running sum is a chain of dependent adds instead, as it may not reorder floating-point
// additions itself (the order, and so the bits, stay fixed here too).
template <class T, class Term>
T lane_sum(int64_t n, Term&& term) {
  T lanes[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int64_t j = 0; j < 8; ++j) lanes[j] += term(i + j);
  for (; i < n; ++i) lanes[i % 8] += term(i);
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

}  // namespace amalgam
