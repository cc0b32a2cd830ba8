// Progress on stderr (items done, bytes, rate, ETA), in one of two styles: a bar redrawn in
// place at most ten times a second, for a terminal; or plain lines (a line when a stage
// starts, one every 10% and at least every 30 s, one when it ends), for logs that are not a
// terminal (nohup, Slurm, CI), where a bar would show nothing until the end.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace amalgam {

// --progress: auto (the default) is a bar on a terminal and lines elsewhere.
enum class ProgressStyle { Auto, Bar, Lines, None };
void set_progress_style(ProgressStyle style);

// One drawing of the bar, without the leading carriage return: "LABEL [###...] 3/10 UNIT,
// RATE, eta 12s" (or "took 12s" when final). The rate is MB/s when there are bytes to count,
// else UNIT per second.
std::string progress_line(const std::string& label, const std::string& unit, uint64_t items, uint64_t total_items,
                          uint64_t bytes, uint64_t total_bytes, double elapsed_seconds, bool final);
// One line of the plain style: "LABEL: 3/10 UNIT (30%), RATE, eta 12s" (or "took 12s").
std::string progress_log_line(const std::string& label, const std::string& unit, uint64_t items,
                              uint64_t total_items, uint64_t bytes, uint64_t total_bytes, double elapsed_seconds,
                              bool final);

class Progress {
 public:
  // `unit` names the items: "tensors", "images", "steps".
  Progress(std::string label, uint64_t total_items, uint64_t total_bytes, bool quiet, std::string unit = "tensors");
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(uint64_t items, uint64_t bytes);
  bool enabled() const { return style_ != ProgressStyle::None; }

 private:
  void draw(bool final);
  void log_line(bool final);

  std::string label_, unit_;
  uint64_t total_items_, total_bytes_;
  uint64_t items_ = 0, bytes_ = 0;
  ProgressStyle style_;  // Bar, Lines or None
  int logged_tenths_ = 0;  // Lines: the last 10% step printed
  std::chrono::steady_clock::time_point start_, last_draw_;
  std::mutex mutex_;
};

}  // namespace amalgam
