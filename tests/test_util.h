// Helpers shared by the test files: temporary directories, raw file bytes, running the
// amalgam executable.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "core/error.h"
#include "io/atomic_output.h"

namespace amalgam::testing {

namespace fs = std::filesystem;

// Whether two float vectors hold the same bits (determinism tests, not closeness).
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Solves A X = B ([n, n] and [n, m], row-major) by Gaussian elimination with partial pivoting,
// in double: the tests' independent reference for closed-form solves.
inline std::vector<double> gauss_solve(std::vector<double> a, std::vector<double> b, int64_t n, int64_t m) {
  for (int64_t c = 0; c < n; ++c) {
    int64_t p = c;
    for (int64_t r = c + 1; r < n; ++r)
      if (std::abs(a[r * n + c]) > std::abs(a[p * n + c])) p = r;
    for (int64_t j = 0; j < n; ++j) std::swap(a[c * n + j], a[p * n + j]);
    for (int64_t j = 0; j < m; ++j) std::swap(b[c * m + j], b[p * m + j]);
    for (int64_t r = c + 1; r < n; ++r) {
      const double f = a[r * n + c] / a[c * n + c];
      for (int64_t j = c; j < n; ++j) a[r * n + j] -= f * a[c * n + j];
      for (int64_t j = 0; j < m; ++j) b[r * m + j] -= f * b[c * m + j];
    }
  }
  for (int64_t c = n - 1; c >= 0; --c)
    for (int64_t j = 0; j < m; ++j) {
      double s = b[c * m + j];
      for (int64_t k = c + 1; k < n; ++k) s -= a[c * n + k] * b[k * m + j];
      b[c * m + j] = s / a[c * n + c];
    }
  return b;
}

// The message of the InputError `fn` throws; a test failure for no error or another kind.
inline std::string input_error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected an InputError, got: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected an InputError, got success";
  return {};
}

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
// An output as amalgam leaves one (its marker listing `files`, name -> content), for tests
// that replace a previous output with --force: amalgam replaces nothing else.
inline void make_amalgam_output(const fs::path& dir, const std::vector<std::pair<std::string, std::string>>& files) {
  AtomicOutput out(dir, false);
  for (const auto& [name, content] : files) {
    fs::create_directories((out.staging() / name).parent_path());
    write_bytes(out.staging() / name, content);
  }
  out.commit();
}

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

// Starts the amalgam executable with `args`, its stderr into `err`, and returns its pid, for
// tests that signal a run midway (reap it with waitpid).
inline pid_t spawn_amalgam(const std::vector<std::string>& args, const fs::path& err) {
  std::vector<std::string> argv_strings = {AMALGAM_BIN};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 2);
    ::execv(AMALGAM_BIN, argv.data());
    ::_exit(127);
  }
  return pid;
}
#endif

// The staging directories process `pid` has made beside `target` (".out.amalgam-tmp.PID.N",
// io/atomic_output): a run has one from after it starts until it commits.
inline std::vector<fs::path> staging_directories(const fs::path& target, pid_t pid) {
  // Appended piece by piece: GCC 12's -Wrestrict misfires on `"." + std::string` here.
  std::string prefix = ".";
  prefix += target.filename().string();
  prefix += ".amalgam-tmp." + std::to_string(pid) + ".";
  std::vector<fs::path> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(target.parent_path(), ec))
    if (e.path().filename().string().starts_with(prefix)) found.push_back(e.path());
  return found;
}

// Polls every millisecond until `ready()` holds, process `pid` exits, or 60 s pass; returns
// whether `ready()` held (a process that exited is left for the caller's waitpid).
template <class Ready>
bool wait_until(pid_t pid, Ready ready) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    siginfo_t exited{};
    if (::waitid(P_PID, static_cast<id_t>(pid), &exited, WEXITED | WNOHANG | WNOWAIT) != 0 || exited.si_pid != 0)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

}  // namespace amalgam::testing
