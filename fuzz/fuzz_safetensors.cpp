// Fuzzes SafetensorsReader: a whole .safetensors file per input. Beyond "no crash", checks
// what the reader promises every later layer: tensors tile the data section exactly, and
// every view stays inside the file.
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "fuzz_util.h"
#include "io/safetensors.h"

namespace {

using namespace amalgam;
namespace fs = std::filesystem;

// Reads a little of each tensor both ways (the mapped view and pread) and converts the
// small ones, as a merge would.
void touch(const SafetensorsReader& reader, const TensorInfo& info) {
  const Tensor t = reader.tensor(info.name);
  if (t.nbytes() != info.nbytes()) std::abort();
  std::vector<std::byte> head(std::min<size_t>(t.nbytes(), 64));
  t.read_bytes(0, head);
  if (!head.empty() && !std::equal(head.begin(), head.end(), t.bytes().begin())) std::abort();
  if (is_floating(t.dtype()) && t.numel() <= 4096) (void)t.to(DType::F32);
}

void check_layout(const SafetensorsReader& reader) {
  uint64_t cursor = 0;
  for (const auto& info : reader.tensors()) {
    if (info.begin != cursor) std::abort();  // the validator promised no holes, no overlaps
    cursor = info.end;
    if (reader.find(info.name) != &info) std::abort();
  }
  if (8 + reader.header_bytes() + cursor != reader.file_bytes()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = fuzz::work_dir() / "input.safetensors";
  fuzz::write_bytes(path, fuzz::as_text(data, size));
  fuzz::accept_input_errors([&] {
    const SafetensorsReader reader(path);
    check_layout(reader);
    for (const auto& info : reader.tensors()) touch(reader, info);
  });
  return 0;
}
