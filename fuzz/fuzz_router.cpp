// Fuzzes a MASS bundle's router.json (RouterConfig::from_json, through read_json_file as
// BundleInfo::read does), then routes a few residual vectors with the config, as routed
// inference does for every batch.
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "fuzz_util.h"
#include "io/json_file.h"
#include "mass/router.h"

namespace {

using namespace amalgam;
namespace fs = std::filesystem;

// Residual vectors routing must survive: spread out, all equal, tiny, huge, and not finite.
std::vector<std::vector<double>> residual_cases(size_t tasks) {
  std::vector<std::vector<double>> cases(5, std::vector<double>(tasks));
  for (size_t t = 0; t < tasks; ++t) {
    cases[0][t] = 0.25 * static_cast<double>(t % 7);
    cases[1][t] = 1.0;
    cases[2][t] = 1e-300 * static_cast<double>(t);
    cases[3][t] = 1e300 * static_cast<double>(t + 1);
    cases[4][t] = t % 2 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  }
  return cases;
}

void route_all(const mass::RouterConfig& config) {
  for (const auto& residuals : residual_cases(config.tasks.size())) {
    const mass::RouteDecision d = mass::route(residuals, config);
    // A decision picks at least one task, at most max_tasks, all of them real tasks.
    if (d.tasks.empty() || static_cast<int64_t>(d.tasks.size()) > std::max<int64_t>(config.max_tasks, 1)) std::abort();
    for (int64_t t : d.tasks)
      if (t < 0 || t >= static_cast<int64_t>(config.tasks.size())) std::abort();
    if (d.top < 0 || d.top >= static_cast<int64_t>(config.tasks.size())) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path file = fuzz::work_dir() / mass::kRouterFile;
  fuzz::write_bytes(file, fuzz::as_text(data, size));
  fuzz::accept_input_errors([&] { route_all(mass::RouterConfig::from_json(read_json_file(file), file)); });
  return 0;
}
