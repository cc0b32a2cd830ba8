#include "core/child_process.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>

extern char** environ;

namespace amalgam {

namespace {

// posix_spawn's file actions: the working directory, stdin from /dev/null, stdout and stderr
// both into `log`.
class SpawnActions {
 public:
  SpawnActions(const std::filesystem::path& log, const std::filesystem::path& working_dir) {
    posix_spawn_file_actions_init(&actions_);
    if (!working_dir.empty()) posix_spawn_file_actions_addchdir_np(&actions_, working_dir.c_str());
    posix_spawn_file_actions_addopen(&actions_, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions_, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions_, STDOUT_FILENO, STDERR_FILENO);
  }
  ~SpawnActions() { posix_spawn_file_actions_destroy(&actions_); }
  SpawnActions(const SpawnActions&) = delete;
  SpawnActions& operator=(const SpawnActions&) = delete;
  const posix_spawn_file_actions_t* get() const { return &actions_; }

 private:
  posix_spawn_file_actions_t actions_;
};

double seconds_of(const timeval& t) {
  return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec);
}

}  // namespace

ChildUsage run_child(const std::vector<std::string>& argv, const std::filesystem::path& log,
                     const std::filesystem::path& working_dir) {
  if (argv.empty()) throw std::runtime_error("run_child: no program");
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  // The log's path as the child sees it (after its chdir).
  const SpawnActions actions(working_dir.empty() ? log : std::filesystem::absolute(log), working_dir);
  const std::filesystem::path peak_file = std::filesystem::absolute(log).string() + ".peak";
  std::filesystem::remove(peak_file);
  const std::string peak_setting = std::string(kPeakRssEnv) + "=" + peak_file.string();
  std::vector<char*> env;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, kPeakRssEnv, std::strlen(kPeakRssEnv)) != 0) env.push_back(*e);
  env.push_back(const_cast<char*>(peak_setting.c_str()));
  env.push_back(nullptr);
  const auto start = std::chrono::steady_clock::now();
  pid_t pid = 0;
  if (const int rc = ::posix_spawnp(&pid, args[0], actions.get(), nullptr, args.data(), env.data()); rc != 0)
    throw std::runtime_error("cannot run " + argv[0] + ": " + std::strerror(rc));
  int status = 0;
  rusage usage{};
  while (::wait4(pid, &status, 0, &usage) < 0)
    if (errno != EINTR) throw std::runtime_error(argv[0] + ": wait failed: " + std::strerror(errno));
  ChildUsage r;
  r.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.cpu_seconds = seconds_of(usage.ru_utime) + seconds_of(usage.ru_stime);
  r.peak_rss_bytes = static_cast<uint64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
  if (std::ifstream in(peak_file); in) {
    uint64_t reported = 0;
    if (in >> reported && reported > 0) {
      r.peak_rss_bytes = reported;
      r.peak_reported = true;
    }
  }
  std::filesystem::remove(peak_file);
  return r;
}

namespace {

void write_peak_rss() {
  const char* path = std::getenv(kPeakRssEnv);
  if (!path || !*path) return;
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) {
      std::ofstream(path) << std::stoull(line.substr(6)) * 1024 << "\n";  // the line is in kB
      return;
    }
}

}  // namespace

void report_peak_rss_at_exit() {
  if (std::getenv(kPeakRssEnv)) std::atexit(write_peak_rss);
}

// Not the link's target: a rebuild replacing the executable during a long run leaves the
// target "(deleted)", while /proc/self/exe still opens the running image (the same version
// as the parent, which is what a benchmark wants).
std::filesystem::path self_executable() {
  return "/proc/self/exe";
}

}  // namespace amalgam
