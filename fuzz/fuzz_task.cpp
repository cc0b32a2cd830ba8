// Fuzzes task directories: each input is task.json, optionally followed by a separator line
// and the bytes of train.safetensors. Every split task.json names is loaded and every image
// visited, as evaluation and calibration do.
#include <cstdlib>

#include "data/task.h"
#include "fuzz_util.h"

namespace {

using namespace amalgam;
namespace fs = std::filesystem;

constexpr std::string_view kSeparator = "\n--train.safetensors--\n";

void load_everything(const fs::path& dir) {
  const TaskInfo info = read_task_info(dir);
  for (const auto& s : info.splits) {
    fuzz::accept_input_errors([&] {
      const TaskSplit split = load_split(dir, info, s.name);
      if (split.size() != s.size) std::abort();  // load_split promised this
      const auto bytes = static_cast<size_t>(info.image.bytes());
      for (int64_t i = 0; i < split.size(); ++i)
        if (split.image(i).size() != bytes) std::abort();
      (void)class_counts(split, info.num_classes());
    });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path dir = fuzz::work_dir() / "task";
  fs::create_directories(dir);
  const std::string_view input = fuzz::as_text(data, size);
  const size_t cut = input.find(kSeparator);
  fuzz::write_bytes(dir / kTaskFile, input.substr(0, cut));
  std::error_code ec;
  fs::remove(dir / "train.safetensors", ec);
  if (cut != std::string_view::npos)
    fuzz::write_bytes(dir / "train.safetensors", input.substr(cut + kSeparator.size()));
  fuzz::accept_input_errors([&] { load_everything(dir); });
  return 0;
}
