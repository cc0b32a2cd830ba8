// A tensor: dtype, shape, and contiguous row-major bytes that are either owned (an aligned
// heap buffer) or a read-only view into memory someone else owns (a mapped checkpoint),
// kept alive by a shared handle. Copies share storage; use clone() for a deep copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace amalgam {

using Shape = std::vector<int64_t>;

// Where a view's bytes can also be read with a system call. Streaming through a large
// mapped checkpoint with pread is several times faster than faulting its pages in one by
// one, and leaves nothing mapped behind, so views of files offer both.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Fills `dst` from `offset`; throws InputError when the file has become shorter.
  virtual void read(uint64_t offset, std::span<std::byte> dst) const = 0;
};

// Number of elements of a shape; throws std::overflow_error when it does not fit 64 bits.
int64_t shape_numel(const Shape& shape);
std::string shape_to_string(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;

  // A new owned tensor, zero-filled, 64-byte aligned (from 4 MB on, 2 MB aligned: on
  // transparent huge pages, and aligned for O_DIRECT).
  static Tensor zeros(DType dtype, Shape shape);
  // The same without the fill, for buffers about to be overwritten whole (merge outputs,
  // conversions): filling gigabytes that are overwritten next costs as much as the merge.
  static Tensor uninitialized(DType dtype, Shape shape);
  // A read-only view of `bytes`; `owner` keeps the memory (and `source`) alive. With a
  // `source`, read_bytes() reads from it at `source_offset` instead of touching `bytes`.
  static Tensor view(DType dtype, Shape shape, std::span<const std::byte> bytes, std::shared_ptr<const void> owner,
                     const ByteSource* source = nullptr, uint64_t source_offset = 0);
  // An owned F32 tensor holding `values`.
  static Tensor from_f32(Shape shape, std::span<const float> values);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t rank() const { return shape_.size(); }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return bytes_.size(); }
  bool defined() const { return owner_ != nullptr; }
  bool writable() const { return writable_; }
  bool aligned() const;

  std::span<const std::byte> bytes() const { return bytes_; }
  // Copies bytes [offset, offset + dst.size()) of the data into `dst`, through the view's
  // ByteSource when it has one.
  void read_bytes(uint64_t offset, std::span<std::byte> dst) const;
  std::span<std::byte> mutable_bytes();

  // Typed access; the dtype must match and the data must be aligned for T.
  template <class T>
  std::span<const T> data() const {
    check_typed(sizeof(T), alignof(T));
    return {reinterpret_cast<const T*>(bytes_.data()), static_cast<size_t>(numel_)};
  }
  template <class T>
  std::span<T> mutable_data() {
    auto b = mutable_bytes();
    check_typed(sizeof(T), alignof(T));
    return {reinterpret_cast<T*>(b.data()), static_cast<size_t>(numel_)};
  }

  // Converted to `dtype`. An aligned tensor already of that dtype is returned as is
  // (sharing storage), so to(F32) on F32 data costs nothing.
  Tensor to(DType dtype) const;
  Tensor clone() const;
  // Same bytes, another shape with the same number of elements.
  Tensor reshaped(Shape shape) const;

 private:
  static Tensor allocate(DType dtype, Shape shape, bool zero);
  void check_typed(size_t size, size_t align) const;

  DType dtype_ = DType::F32;
  Shape shape_;
  int64_t numel_ = 0;
  std::span<std::byte> bytes_;
  std::shared_ptr<const void> owner_;
  bool writable_ = false;
  const ByteSource* source_ = nullptr;  // not owning: owner_ keeps it alive
  uint64_t source_offset_ = 0;
};

}  // namespace amalgam
