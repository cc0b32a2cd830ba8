// Ctrl-C handling: the signal handler only sets a flag; long loops poll it and throw
// Interrupted, so cleanup runs in ordinary destructors instead of inside a signal handler.
#pragma once

namespace amalgam {

void install_interrupt_handler();
bool interrupt_requested();
// The signal that asked (SIGINT or SIGTERM), 0 when none did: passed on to child processes.
int interrupt_signal();
// Forgets a request: for a process that goes on after handling one (tests).
void clear_interrupt();
// Throws Interrupted when the user has pressed Ctrl-C (or sent SIGTERM).
void check_interrupt();

}  // namespace amalgam
