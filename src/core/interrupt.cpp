#include "core/interrupt.h"

#include <atomic>
#include <csignal>

#include "core/error.h"

namespace amalgam {
namespace {
std::atomic<bool> g_interrupted{false};

extern "C" void on_signal(int) {
  g_interrupted.store(true);
}
}  // namespace

void install_interrupt_handler() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

bool interrupt_requested() {
  return g_interrupted.load(std::memory_order_relaxed);
}

void check_interrupt() {
  if (interrupt_requested()) throw Interrupted();
}

}  // namespace amalgam
