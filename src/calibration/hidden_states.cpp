#include "calibration/hidden_states.h"

#include <span>

#include "core/interrupt.h"

namespace amalgam {

HiddenStates::HiddenStates(const std::optional<std::filesystem::path>& spill_dir) {
  if (spill_dir) file_.emplace(*spill_dir);
}

void HiddenStates::append(const Stream& s) {
  Batch b{s.offsets, s.width, end_, {}};
  if (file_)
    file_->write(end_, std::as_bytes(std::span(s.data)));
  else
    b.memory = s.data;
  end_ += s.data.size() * sizeof(float);
  rows_ += s.rows();
  batches_.push_back(std::move(b));
}

void HiddenStates::read(size_t i, Stream& out) const {
  const Batch& b = batches_.at(i);
  out.offsets = b.offsets;
  out.width = b.width;
  out.data.resize(static_cast<size_t>(b.offsets.back() * b.width));
  if (file_)
    file_->read(b.offset, std::as_writable_bytes(std::span(out.data)));
  else
    out.data = b.memory;
}

void HiddenStates::write(size_t i, const Stream& in) {
  Batch& b = batches_.at(i);
  if (file_)
    file_->write(b.offset, std::as_bytes(std::span(in.data)));
  else
    b.memory = in.data;
}

void HiddenStates::for_each(bool write_back, const std::function<void(Stream&)>& fn) {
  Stream batch;
  for (size_t b = 0; b < batches(); ++b) {
    check_interrupt();
    read(b, batch);
    fn(batch);
    if (write_back) write(b, batch);
  }
}

std::optional<std::filesystem::path> spill_dir_for(uint64_t bytes, uint64_t max_memory,
                                                   const std::filesystem::path& dir) {
  if (bytes <= max_memory / 2) return std::nullopt;
  return dir;
}

}  // namespace amalgam
