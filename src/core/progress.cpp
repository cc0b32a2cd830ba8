#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>

namespace amalgam {

namespace {

std::atomic<ProgressStyle> g_style{ProgressStyle::Auto};

double fraction_done(uint64_t items, uint64_t total_items, uint64_t bytes, uint64_t total_bytes) {
  return total_bytes ? static_cast<double>(bytes) / static_cast<double>(total_bytes)
                     : (total_items ? static_cast<double>(items) / static_cast<double>(total_items) : 1.0);
}

std::string rate_text(const std::string& unit, uint64_t items, uint64_t bytes, uint64_t total_bytes, double seconds) {
  char rate[64];
  const double per_second = seconds > 0 ? 1 / seconds : 0.0;
  if (total_bytes)
    std::snprintf(rate, sizeof rate, "%.0f MB/s", static_cast<double>(bytes) * per_second / 1e6);
  else
    std::snprintf(rate, sizeof rate, "%.1f %s/s", static_cast<double>(items) * per_second, unit.c_str());
  return rate;
}

}  // namespace

void set_progress_style(ProgressStyle style) {
  g_style = style;
}

std::string progress_line(const std::string& label, const std::string& unit, uint64_t items, uint64_t total_items,
                          uint64_t bytes, uint64_t total_bytes, double elapsed_seconds, bool final) {
  const double fraction = fraction_done(items, total_items, bytes, total_bytes);
  const double eta = fraction > 0 && !final ? elapsed_seconds * (1 - fraction) / fraction : 0.0;
  constexpr int kWidth = 30;
  std::string bar(static_cast<size_t>(std::clamp(fraction, 0.0, 1.0) * kWidth), '#');
  bar.resize(kWidth, '.');
  char line[512];
  std::snprintf(line, sizeof line, "%s [%s] %llu/%llu %s, %s, %s %.0fs ", label.c_str(), bar.c_str(),
                static_cast<unsigned long long>(items), static_cast<unsigned long long>(total_items), unit.c_str(),
                rate_text(unit, items, bytes, total_bytes, elapsed_seconds).c_str(), final ? "took" : "eta",
                final ? elapsed_seconds : eta);
  return line;
}

std::string progress_log_line(const std::string& label, const std::string& unit, uint64_t items,
                              uint64_t total_items, uint64_t bytes, uint64_t total_bytes, double elapsed_seconds,
                              bool final) {
  const double fraction = fraction_done(items, total_items, bytes, total_bytes);
  const double eta = fraction > 0 && !final ? elapsed_seconds * (1 - fraction) / fraction : 0.0;
  char line[512];
  std::snprintf(line, sizeof line, "%s: %llu/%llu %s (%.0f%%), %s, %s %.0fs", label.c_str(),
                static_cast<unsigned long long>(items), static_cast<unsigned long long>(total_items), unit.c_str(),
                100 * std::clamp(fraction, 0.0, 1.0),
                rate_text(unit, items, bytes, total_bytes, elapsed_seconds).c_str(), final ? "took" : "eta",
                final ? elapsed_seconds : eta);
  return line;
}

Progress::Progress(std::string label, uint64_t total_items, uint64_t total_bytes, bool quiet, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_items_(total_items),
      total_bytes_(total_bytes),
      style_(quiet ? ProgressStyle::None : g_style.load()),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {
  if (style_ == ProgressStyle::Auto) style_ = ::isatty(STDERR_FILENO) ? ProgressStyle::Bar : ProgressStyle::Lines;
  if (style_ == ProgressStyle::Lines) {
    std::fprintf(stderr, "amalgam: %s: started, %llu %s\n", label_.c_str(),
                 static_cast<unsigned long long>(total_items_), unit_.c_str());
    std::fflush(stderr);
  }
}

Progress::~Progress() {
  if (style_ == ProgressStyle::Bar) {
    draw(true);
    std::fputc('\n', stderr);
  } else if (style_ == ProgressStyle::Lines) {
    log_line(true);
  }
}

void Progress::advance(uint64_t items, uint64_t bytes) {
  if (style_ == ProgressStyle::None) return;
  std::lock_guard lock(mutex_);
  items_ += items;
  bytes_ += bytes;
  const auto now = std::chrono::steady_clock::now();
  if (style_ == ProgressStyle::Lines) {
    const int tenths = static_cast<int>(10 * fraction_done(items_, total_items_, bytes_, total_bytes_));
    if ((tenths > logged_tenths_ && tenths < 10) || now - last_draw_ >= std::chrono::seconds(30)) {
      logged_tenths_ = std::max(logged_tenths_, tenths);
      last_draw_ = now;
      log_line(false);
    }
    return;
  }
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

void Progress::log_line(bool final) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::fprintf(stderr, "amalgam: %s\n",
               progress_log_line(label_, unit_, items_, total_items_, bytes_, total_bytes_, elapsed, final).c_str());
  std::fflush(stderr);
}

}  // namespace amalgam
