#include "io/run_inputs.h"

#include <mutex>
#include <set>

namespace amalgam {

namespace fs = std::filesystem;

namespace {

struct Registry {
  std::mutex mutex;
  std::set<fs::path> paths;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

fs::path canonical_or_absolute(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(fs::absolute(p, ec), ec);
  return ec ? fs::absolute(p, ec).lexically_normal() : c;
}

bool is_within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (o->empty()) continue;  // the empty last component of "dir/"
    if (i == inner.end() || *i != *o) return false;
  }
  return true;
}

void note_input(const fs::path& path) {
  fs::path canonical = canonical_or_absolute(path);
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  r.paths.insert(std::move(canonical));
}

std::vector<fs::path> run_inputs() {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  return {r.paths.begin(), r.paths.end()};
}

void forget_run_inputs() {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  r.paths.clear();
}

fs::path input_within(const fs::path& dir) {
  for (const auto& p : run_inputs())
    if (is_within(p, dir)) return p;
  return {};
}

}  // namespace amalgam
