#include "io/hub_cache.h"

#include <cstdlib>
#include <fstream>

namespace amalgam {

namespace fs = std::filesystem;

namespace {

std::optional<std::string> environment(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

bool id_part(const std::string& s) {
  if (s.empty() || s == "." || s == "..") return false;
  for (const char c : s) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

// The first line of a refs file, trimmed: a commit hash.
std::string read_ref(const fs::path& file) {
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\n')) line.pop_back();
  return line;
}

}  // namespace

std::vector<fs::path> hub_cache_dirs() {
  std::vector<fs::path> dirs;
  if (const auto cache = environment("HF_HUB_CACHE")) dirs.emplace_back(*cache);
  if (const auto home = environment("HF_HOME")) dirs.push_back(fs::path(*home) / "hub");
  if (const auto user = environment("HOME")) dirs.push_back(fs::path(*user) / ".cache" / "huggingface" / "hub");
  return dirs;
}

bool looks_like_hub_id(const std::string& name) {
  const std::string repo = name.substr(0, name.find('@'));
  if (name.find('@') != std::string::npos && name.size() == repo.size() + 1) return false;  // "org/name@"
  const size_t slash = repo.find('/');
  if (slash == std::string::npos) return id_part(repo);
  return id_part(repo.substr(0, slash)) && id_part(repo.substr(slash + 1));
}

std::optional<fs::path> find_in_hub_cache(const std::string& id) {
  if (!looks_like_hub_id(id)) return std::nullopt;
  const size_t at = id.find('@');
  std::string repo = id.substr(0, at);
  const std::string revision = at == std::string::npos ? "main" : id.substr(at + 1);
  // A revision is a branch or tag (refs/<revision>) or a commit; never a path out of the cache.
  if (revision.find("..") != std::string::npos || revision.starts_with('/')) return std::nullopt;
  for (size_t p = repo.find('/'); p != std::string::npos; p = repo.find('/', p + 2)) repo.replace(p, 1, "--");
  std::error_code ec;
  for (const fs::path& cache : hub_cache_dirs()) {
    const fs::path model = cache / ("models--" + repo);
    std::string commit = revision;
    if (fs::is_regular_file(model / "refs" / revision, ec)) commit = read_ref(model / "refs" / revision);
    if (commit.empty() || commit.find('/') != std::string::npos) continue;
    const fs::path snapshot = model / "snapshots" / commit;
    if (fs::is_directory(snapshot, ec)) return snapshot;
  }
  return std::nullopt;
}

}  // namespace amalgam
