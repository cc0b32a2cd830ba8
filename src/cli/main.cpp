// amalgam: merge fine-tuned checkpoints into one model.
//
// Exit codes: 0 success, 2 bad input (a corrupt file, a bad config, bad arguments),
// 1 anything else (a failure of amalgam or of the system), 130 interrupted.
#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <system_error>

#include "cli/commands.h"
#include "core/child_process.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "core/progress.h"

namespace amalgam::cli {

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1000 && u < 4) {
    bytes /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

namespace {

CLI::Validator number_at_least(double least, bool strictly, const std::string& what) {
  return CLI::Validator(
      [least, strictly, what](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        const bool number = end != text.c_str() && *end == '\0';
        if (number && (strictly ? v > least : v >= least)) return {};
        return "must be " + what + ", got '" + text + "'";
      },
      what);
}

}  // namespace

CLI::Validator positive_number() {
  return number_at_least(0, true, "a positive number");
}

CLI::Validator non_negative_number() {
  return number_at_least(0, false, "zero or more");
}

// Adds --threads and --progress to `app` and to every command under it (CLI11's fallthrough
// would hand the option to the parent but leave its value to the command's positionals).
void add_common_options(CLI::App& app, int& threads, std::string& progress) {
  app.add_option("--threads,--num-threads", threads,
                 "threads to use (default: the cores this process may use; --num-threads: mergekit's name)")
      ->check(positive_number());
  app.add_option("--progress", progress, "auto (a bar on a terminal, plain lines elsewhere), bar, lines, none")
      ->check(CLI::IsMember({"auto", "bar", "lines", "none"}));
  for (CLI::App* command : app.get_subcommands({})) add_common_options(*command, threads, progress);
}

}  // namespace amalgam::cli

int main(int argc, char** argv) {
  amalgam::report_peak_rss_at_exit();  // for a parent measuring us with run_child
  CLI::App app{"amalgam: merge fine-tuned neural-network checkpoints into one model"};
  app.set_version_flag("--version", std::string("amalgam ") + AMALGAM_VERSION);
  app.require_subcommand(1);
  amalgam::cli::add_inspect_command(app);
  amalgam::cli::add_merge_command(app);
  amalgam::cli::add_stats_command(app);
  amalgam::cli::add_generate_command(app);
  amalgam::cli::add_eval_command(app);
  amalgam::cli::add_train_command(app);
  amalgam::cli::add_task_command(app);
  amalgam::cli::add_zoo_command(app);
  amalgam::cli::add_mass_command(app);
  amalgam::cli::add_audit_command(app);
  amalgam::cli::add_bench_command(app);
  amalgam::cli::add_tokenize_command(app);
  amalgam::cli::add_lm_command(app);
  amalgam::cli::add_extract_lora_command(app);

  // Every shard of every input stays open for pread: a merge of many sharded checkpoints
  // can need more descriptors than the default soft limit of 1024.
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
  // Options of every command, given before or after its name.
  int threads = 0;
  std::string progress = "auto";
  amalgam::cli::add_common_options(app, threads, progress);
  app.parse_complete_callback([&] {
    amalgam::set_thread_count(threads > 0 ? threads : amalgam::available_cores());
    const std::map<std::string, amalgam::ProgressStyle> styles = {{"auto", amalgam::ProgressStyle::Auto},
                                                                  {"bar", amalgam::ProgressStyle::Bar},
                                                                  {"lines", amalgam::ProgressStyle::Lines},
                                                                  {"none", amalgam::ProgressStyle::None}};
    amalgam::set_progress_style(styles.at(progress));
  });
  amalgam::install_interrupt_handler();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "amalgam: error: " << e.what() << " (see amalgam --help)\n";
    return 2;
  } catch (const amalgam::InputError& e) {
    std::cerr << "amalgam: error: " << e.what() << "\n";
    return 2;
  } catch (const amalgam::Interrupted&) {
    std::cerr << "amalgam: interrupted; no output was written\n";
    return 130;
  } catch (const std::filesystem::filesystem_error& e) {
    // A path the user gave that cannot be followed (a symlink loop, a component that is not
    // a directory, a name too long, nothing there) is bad input; other refusals are the
    // system's (a full disk, a permission).
    const int code = e.code().value();
    const bool bad_path = code == ELOOP || code == ENOTDIR || code == ENAMETOOLONG || code == ENOENT;
    const std::string path = e.path1().empty() ? std::string() : e.path1().string() + ": ";
    std::cerr << "amalgam: error: " << amalgam::printable(path + e.code().message())
              << (bad_path ? "" : " (nothing was written)") << "\n";
    return bad_path ? 2 : 1;
  } catch (const std::system_error& e) {
    // The system refused (a full disk, a permission, a vanished file); outputs are staged,
    // so saying that nothing was written is true.
    std::cerr << "amalgam: error: " << e.what() << " (nothing was written)\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "amalgam: internal error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
