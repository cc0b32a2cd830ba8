#include "core/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <thread>

#include "core/error.h"
#include "core/interrupt.h"

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

// Waits for `pid`. A Ctrl-C or SIGTERM sent to amalgam alone (`kill PID`, a job scheduler)
// does not reach its children, so it is passed on: the child gets the same signal, and
// SIGKILL if it has not exited 5 s later. The wait is a poll on the child's pidfd, which
// returns the moment the child exits (so timings stay exact) and wakes every 100 ms to look
// at the interrupt flag (a blocking wait4 would be resumed after the handler, SA_RESTART,
// without telling us). True when an interrupt was passed on.
bool wait_passing_on_interrupts(pid_t pid, const std::string& program, int& status, rusage& usage) {
  using Clock = std::chrono::steady_clock;
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  std::optional<Clock::time_point> signalled;
  for (;;) {
    const pid_t done = ::wait4(pid, &status, WNOHANG, &usage);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) {
      if (pidfd >= 0) ::close(pidfd);
      throw std::runtime_error(program + ": wait failed: " + std::strerror(errno));
    }
    if (!signalled && interrupt_requested()) {
      ::kill(pid, interrupt_signal());
      signalled = Clock::now();
    } else if (signalled && Clock::now() - *signalled > std::chrono::seconds(5)) {
      ::kill(pid, SIGKILL);
    }
    if (pidfd >= 0) {
      pollfd wait_for{pidfd, POLLIN, 0};
      ::poll(&wait_for, 1, 100);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // kernels before 5.3
    }
  }
  if (pidfd >= 0) ::close(pidfd);
  return signalled.has_value();
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
  int status = 0;
  rusage usage{};
  pid_t pid = 0;
  if (const int rc = ::posix_spawnp(&pid, args[0], actions.get(), nullptr, args.data(), env.data()); rc != 0)
    throw std::runtime_error("cannot run " + argv[0] + ": " + std::strerror(rc));
  const bool forwarded = wait_passing_on_interrupts(pid, argv[0], status, usage);
  if (forwarded) throw Interrupted();
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
