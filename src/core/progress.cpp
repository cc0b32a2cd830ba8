#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace amalgam {

std::string progress_line(const std::string& label, const std::string& unit, uint64_t items, uint64_t total_items,
                          uint64_t bytes, uint64_t total_bytes, double elapsed_seconds, bool final) {
  const double fraction = total_bytes ? static_cast<double>(bytes) / static_cast<double>(total_bytes)
                                      : (total_items ? static_cast<double>(items) / total_items : 1.0);
  const double eta = fraction > 0 && !final ? elapsed_seconds * (1 - fraction) / fraction : 0.0;
  constexpr int kWidth = 30;
  std::string bar(static_cast<size_t>(std::clamp(fraction, 0.0, 1.0) * kWidth), '#');
  bar.resize(kWidth, '.');
  char rate[64];
  const double per_second = elapsed_seconds > 0 ? 1 / elapsed_seconds : 0.0;
  if (total_bytes)
    std::snprintf(rate, sizeof rate, "%.0f MB/s", static_cast<double>(bytes) * per_second / 1e6);
  else
    std::snprintf(rate, sizeof rate, "%.1f %s/s", static_cast<double>(items) * per_second, unit.c_str());
  char line[512];
  std::snprintf(line, sizeof line, "%s [%s] %llu/%llu %s, %s, %s %.0fs ", label.c_str(), bar.c_str(),
                static_cast<unsigned long long>(items), static_cast<unsigned long long>(total_items), unit.c_str(),
                rate, final ? "took" : "eta", final ? elapsed_seconds : eta);
  return line;
}

Progress::Progress(std::string label, uint64_t total_items, uint64_t total_bytes, bool quiet, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_items_(total_items),
      total_bytes_(total_bytes),
      enabled_(!quiet && ::isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  if (enabled_) {
    draw(true);
    std::fputc('\n', stderr);
  }
}

void Progress::advance(uint64_t items, uint64_t bytes) {
  if (!enabled_) return;
  std::lock_guard lock(mutex_);
  items_ += items;
  bytes_ += bytes;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < std::chrono::milliseconds(100) && items_ < total_items_) return;
  last_draw_ = now;
  draw(false);
}

void Progress::draw(bool final) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::fprintf(stderr, "\r%s",
               progress_line(label_, unit_, items_, total_items_, bytes_, total_bytes_, elapsed, final).c_str());
  std::fflush(stderr);
}

}  // namespace amalgam
