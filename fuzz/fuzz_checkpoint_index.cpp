// Fuzzes CheckpointReader on a sharded directory: each input is the directory's
// model.safetensors.index.json, beside two small valid shards. Whatever the index says,
// the reader may only open shards inside the directory and must account for every tensor.
#include <cstdlib>

#include "fuzz_util.h"
#include "io/checkpoint.h"

namespace {

using namespace amalgam;
namespace fs = std::filesystem;

Tensor bytes_tensor(DType dtype, Shape shape, uint8_t seed) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  for (auto& b : t.mutable_bytes()) b = static_cast<std::byte>(seed++);
  return t;
}

// The checkpoint directory: shard 1 holds "a" and "b", shard 2 holds "c" (the seed corpus's
// index lists exactly these). A file outside it, which no index may reach.
const fs::path& checkpoint_dir() {
  static const fs::path dir = [] {
    const fs::path d = fuzz::work_dir() / "ck";
    fs::create_directories(d);
    save_safetensors(d / "model-00001-of-00002.safetensors",
                     {{"a", bytes_tensor(DType::F32, {2, 2}, 1)}, {"b", bytes_tensor(DType::BF16, {3}, 7)}});
    save_safetensors(d / "model-00002-of-00002.safetensors", {{"c", bytes_tensor(DType::I64, {2}, 3)}});
    save_safetensors(fuzz::work_dir() / "outside.safetensors", {{"x", bytes_tensor(DType::U8, {1}, 0)}});
    return d;
  }();
  return dir;
}

void check(const CheckpointReader& ckpt) {
  size_t tensors = 0;
  for (const auto& shard : ckpt.shards()) {
    if (shard->path().parent_path() != checkpoint_dir()) std::abort();  // escaped the directory
    tensors += shard->tensors().size();
  }
  if (ckpt.names().size() != tensors) std::abort();  // every tensor of every shard, once
  for (const auto& name : ckpt.names()) {
    const Tensor t = ckpt.tensor(name);
    if (t.nbytes() != ckpt.info(name).nbytes()) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path dir = checkpoint_dir();
  fuzz::write_bytes(dir / "model.safetensors.index.json", fuzz::as_text(data, size));
  fuzz::accept_input_errors([&] { check(CheckpointReader(dir)); });
  return 0;
}
