// Helpers shared by the test files: temporary directories, raw file bytes, running the
// amalgam executable.
#pragma once

#include <sys/wait.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace amalgam::testing {

namespace fs = std::filesystem;

// A fresh directory under $TMPDIR, removed with everything in it at the end of scope.
class TempDir {
 public:
  TempDir() {
    std::string templ = (fs::temp_directory_path() / "amalgam-test-XXXXXX").string();
    if (!::mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

inline void write_bytes(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error(path.string() + ": cannot write");
}

inline std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file assembled by hand: length prefix, header text as given, data.
inline std::string raw_safetensors(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

struct CliResult {
  int code = -1;
  std::string out;
  std::string err;
};

#ifdef AMALGAM_BIN  // defined for the test executables, not for the fuzz targets
// Runs the amalgam executable with `args` (a shell-quoted string).
inline CliResult run_amalgam(const std::string& args) {
  TempDir tmp;
  const fs::path out = tmp / "stdout";
  const fs::path err = tmp / "stderr";
  const std::string cmd = std::string(AMALGAM_BIN) + " " + args + " >" + out.string() + " 2>" + err.string();
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_bytes(out);
  r.err = read_bytes(err);
  return r;
}
#endif

}  // namespace amalgam::testing
