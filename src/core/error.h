// Errors amalgam reports to its users.
//
// Two kinds, because the CLI maps them to different exit codes: InputError is the user's
// input being wrong (a corrupt file, a bad config: exit 2), anything else is a failure of
// amalgam itself or of the system (exit 1). Messages are one line and name the file and,
// where there is one, the tensor.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>

namespace amalgam {

// `text` with its control characters written as escapes (\n, \t, \x1b): names and paths
// taken from a hostile file can neither break a message's one line nor drive the terminal.
std::string printable(std::string_view text);

class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& message) : std::runtime_error(printable(message)) {}
  InputError(const std::filesystem::path& file, std::string_view message)
      : std::runtime_error(printable(file.string() + ": " + std::string(message))) {}
  InputError(const std::filesystem::path& file, std::string_view tensor, std::string_view message)
      : std::runtime_error(
            printable(file.string() + ": tensor '" + std::string(tensor) + "': " + std::string(message))) {}
};

// Thrown when the user interrupts (Ctrl-C): unwinding runs the destructors that remove
// temporary outputs.
class Interrupted : public std::runtime_error {
 public:
  Interrupted() : std::runtime_error("interrupted") {}
};

// A system call failed: a std::system_error carrying errno, whose message names the file
// and ends in errno's text; the CLI reports it as a system failure (exit 1), not a bug.
[[noreturn]] void throw_system_error(const std::filesystem::path& file, std::string_view what);

// A one-line warning on stderr ("amalgam: warning: ..."): something the user should know
// that does not stop the command (a solver fallback, an ill-conditioned layer).
void warn(std::string_view message);

}  // namespace amalgam
