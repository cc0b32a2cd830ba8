// A one-line progress bar on stderr (items done, bytes, rate, ETA), drawn only when stderr
// is a terminal and the user did not ask for --quiet. Redraws at most ten times a second.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace amalgam {

// One drawing of the bar, without the leading carriage return: "LABEL [###...] 3/10 UNIT,
// RATE, eta 12s" (or "took 12s" when final). The rate is MB/s when there are bytes to count,
// else UNIT per second.
std::string progress_line(const std::string& label, const std::string& unit, uint64_t items, uint64_t total_items,
                          uint64_t bytes, uint64_t total_bytes, double elapsed_seconds, bool final);

class Progress {
 public:
  // `unit` names the items: "tensors", "images", "steps".
  Progress(std::string label, uint64_t total_items, uint64_t total_bytes, bool quiet, std::string unit = "tensors");
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(uint64_t items, uint64_t bytes);
  bool enabled() const { return enabled_; }

 private:
  void draw(bool final);

  std::string label_, unit_;
  uint64_t total_items_, total_bytes_;
  uint64_t items_ = 0, bytes_ = 0;
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  std::mutex mutex_;
};

}  // namespace amalgam
