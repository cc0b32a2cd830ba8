// Running another program and measuring what it cost: `amalgam bench` runs each merge as its
// own process so that its wall time, CPU time and peak memory are that merge's alone.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace amalgam {

struct ChildUsage {
  int exit_code = -1;  // 128 + signal when a signal ended it
  double wall_seconds = 0;
  double cpu_seconds = 0;       // user + system, over all its threads
  uint64_t peak_rss_bytes = 0;  // the child's maximum resident set
  bool peak_reported = false;   // peak_rss_bytes came from the child (report_peak_rss_at_exit)
};

// The kernel's rusage peak of a child is at least the parent's own peak: posix_spawn's child
// shares the parent's memory until exec, and exec keeps that high-water mark. So run_child
// names a file in the child's environment (kPeakRssEnv), and a child that calls
// report_peak_rss_at_exit() writes its own VmHWM there (its image's peak alone) as it
// exits; other programs get the rusage figure.
inline constexpr const char* kPeakRssEnv = "AMALGAM_PEAK_RSS_FILE";
void report_peak_rss_at_exit();

// Runs `argv` (argv[0] is the program: a path, or a name looked up in PATH) in `working_dir`
// (empty: ours), stdin from /dev/null, stdout and stderr both into `log` (replaced), waits for
// it, and reports its usage. Throws std::runtime_error when it cannot start.
ChildUsage run_child(const std::vector<std::string>& argv, const std::filesystem::path& log,
                     const std::filesystem::path& working_dir = {});

// The running executable (/proc/self/exe), to run amalgam's own commands.
std::filesystem::path self_executable();

}  // namespace amalgam
