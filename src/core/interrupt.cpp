#include "core/interrupt.h"

#include <atomic>
#include <csignal>

#include "core/error.h"

namespace amalgam {
namespace {
std::atomic<int> g_signal{0};  // the last SIGINT or SIGTERM received, 0 before any

extern "C" void on_signal(int signal) {
  g_signal.store(signal);
}
}  // namespace

void install_interrupt_handler() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

bool interrupt_requested() {
  return g_signal.load(std::memory_order_relaxed) != 0;
}

int interrupt_signal() {
  return g_signal.load(std::memory_order_relaxed);
}

void clear_interrupt() {
  g_signal.store(0);
}

void check_interrupt() {
  if (interrupt_requested()) throw Interrupted();
}

}  // namespace amalgam
