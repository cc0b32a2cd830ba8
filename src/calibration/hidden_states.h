// A calibration set's hidden states between blocks, batch by batch (each batch keeps its
// sequence offsets): in memory, or past a memory budget in an unlinked scratch file, read and
// written a batch at a time. The statistics step runs each block over them; RegMean++ runs
// the merged blocks over each task's.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <vector>

#include "io/scratch_file.h"
#include "model/stream.h"

namespace amalgam {

class HiddenStates {
 public:
  // In memory, or with `spill_dir` in a scratch file there.
  explicit HiddenStates(const std::optional<std::filesystem::path>& spill_dir);
  size_t batches() const { return batches_.size(); }
  int64_t rows() const { return rows_; }
  bool spilled() const { return file_.has_value(); }

  void append(const Stream& s);
  void read(size_t i, Stream& out) const;
  void write(size_t i, const Stream& in);

  // Runs `fn` on every batch in order, through one Stream whose scratch buffers it reuses,
  // writing each back when `write_back` (a block run over it in place).
  void for_each(bool write_back, const std::function<void(Stream&)>& fn);

 private:
  struct Batch {
    std::vector<int64_t> offsets;
    int64_t width = 0;
    uint64_t offset = 0;  // in the scratch file
    std::vector<float> memory;
  };
  std::vector<Batch> batches_;
  uint64_t end_ = 0;
  int64_t rows_ = 0;
  std::optional<ScratchFile> file_;
};

// Where hidden states of `bytes` go under `max_memory`: half the budget for them (the rest
// holds a block's weights, the accumulators and the buffers), a scratch file in `dir` past it.
std::optional<std::filesystem::path> spill_dir_for(uint64_t bytes, uint64_t max_memory,
                                                   const std::filesystem::path& dir);

}  // namespace amalgam
