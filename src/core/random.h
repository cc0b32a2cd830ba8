// Seeded, order-independent randomness: the SplitMix64 finaliser, which turns a counter
// (seed, name, index) into well-mixed bits. Draws made this way do not depend on thread
// count or chunking, which keeps every seeded output the same bits everywhere.
#pragma once

#include <cstdint>

namespace amalgam {

inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace amalgam
