#include "core/progress.h"

#include <unistd.h>

#include <cstdio>

namespace amalgam {

Progress::Progress(std::string label, uint64_t total_items, uint64_t total_bytes, bool quiet)
    : label_(std::move(label)),
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
  const double fraction = total_bytes_ ? static_cast<double>(bytes_) / static_cast<double>(total_bytes_)
                                       : (total_items_ ? static_cast<double>(items_) / total_items_ : 1.0);
  const double rate = elapsed > 0 ? static_cast<double>(bytes_) / elapsed / 1e6 : 0.0;
  const double eta = fraction > 0 && !final ? elapsed * (1 - fraction) / fraction : 0.0;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r%s [%s] %llu/%llu tensors, %.0f MB/s, %s %.0fs ", label_.c_str(), bar.c_str(),
               static_cast<unsigned long long>(items_), static_cast<unsigned long long>(total_items_), rate,
               final ? "took" : "eta", final ? elapsed : eta);
  std::fflush(stderr);
}

}  // namespace amalgam
