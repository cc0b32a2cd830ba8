#include "mass/factors.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace amalgam::mass {

void add_mean_delta(std::span<const std::span<const float>> deltas, std::span<float> weight) {
  if (deltas.empty()) return;
  for (const auto& d : deltas)
    if (d.size() != weight.size()) throw std::invalid_argument("add_mean_delta: delta size");
  const auto count = static_cast<float>(deltas.size());
  for (size_t i = 0; i < weight.size(); ++i) {
    float sum = 0;
    for (const auto& d : deltas) sum += d[i];
    weight[i] += sum / count;
  }
}

}  // namespace amalgam::mass
