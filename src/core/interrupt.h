// Ctrl-C handling: the signal handler only sets a flag; long loops poll it and throw
// Interrupted, so cleanup runs in ordinary destructors instead of inside a signal handler.
#pragma once

namespace amalgam {

void install_interrupt_handler();
bool interrupt_requested();
// Throws Interrupted when the user has pressed Ctrl-C (or sent SIGTERM).
void check_interrupt();

}  // namespace amalgam
