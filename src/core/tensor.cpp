#include "core/tensor.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <tuple>

namespace amalgam {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw std::overflow_error("negative dimension");
    if (__builtin_mul_overflow(n, d, &n)) throw std::overflow_error("element count overflows 64 bits");
  }
  return n;
}

std::string shape_to_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace {

// Large buffers freed by tensors are kept for the next tensor of a similar size. A merge
// allocates and frees a few tensor-sized buffers per tensor; glibc hands blocks this large
// straight back to the kernel, so without reuse every tensor pays to fault in and zero its
// pages again (measured: about a third of a data-free merge's CPU time).
class BufferCache {
 public:
  static BufferCache& instance() {
    static BufferCache* cache = new BufferCache;  // never destroyed: buffers may outlive statics
    return *cache;
  }

  // A cached block of at least `bytes` (and its capacity), or {nullptr, 0}.
  std::pair<void*, size_t> take(size_t bytes) {
    if (bytes < kMinBytes) return {nullptr, 0};
    std::lock_guard lock(mutex_);
    const auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > 2 * bytes) return {nullptr, 0};  // none, or too wasteful
    const std::pair<void*, size_t> block{it->second, it->first};
    cached_ -= it->first;
    free_.erase(it);
    return block;
  }

  void give(void* p, size_t capacity) {
    if (capacity >= kMinBytes) {
      std::lock_guard lock(mutex_);
      if (cached_ + capacity <= kMaxCachedBytes) {
        free_.emplace(capacity, p);
        cached_ += capacity;
        return;
      }
    }
    std::free(p);
  }

 private:
  static constexpr size_t kMinBytes = size_t{1} << 20;
  static constexpr size_t kMaxCachedBytes = size_t{1} << 30;
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // capacity -> block
  size_t cached_ = 0;
};

// A fresh buffer. One of 4 MB or more starts on a 2 MB boundary and asks for transparent
// huge pages (where the kernel leaves them to madvise): its first touch then faults once per
// 2 MB instead of once per 4 KB.
std::pair<void*, size_t> fresh_buffer(size_t bytes) {
  constexpr size_t kHugePage = size_t{2} << 20;
  const bool huge = bytes >= 2 * kHugePage;
  const size_t capacity = huge ? (bytes + kHugePage - 1) / kHugePage * kHugePage : bytes;
  void* p = std::aligned_alloc(huge ? kHugePage : 64, capacity);
  if (!p) throw std::bad_alloc();
  if (huge) ::madvise(p, capacity, MADV_HUGEPAGE);  // advice only: failure changes nothing
  return {p, capacity};
}

std::shared_ptr<std::byte> aligned_buffer(size_t bytes, bool zero) {
  const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  auto [p, capacity] = BufferCache::instance().take(rounded);
  if (!p) std::tie(p, capacity) = fresh_buffer(rounded);
  if (zero) std::memset(p, 0, rounded);
  // An init-capture: clang before 16 cannot capture a structured binding by name.
  return {static_cast<std::byte*>(p), [size = capacity](std::byte* q) { BufferCache::instance().give(q, size); }};
}

}  // namespace

Tensor Tensor::zeros(DType dtype, Shape shape) {
  return allocate(dtype, std::move(shape), true);
}

Tensor Tensor::uninitialized(DType dtype, Shape shape) {
  return allocate(dtype, std::move(shape), false);
}

Tensor Tensor::allocate(DType dtype, Shape shape, bool zero) {
  Tensor t;
  t.dtype_ = dtype;
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  size_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(t.numel_), dtype_size(dtype), &bytes))
    throw std::overflow_error("tensor byte size overflows");
  auto buffer = aligned_buffer(bytes, zero);
  t.bytes_ = {buffer.get(), bytes};
  t.owner_ = std::move(buffer);
  t.writable_ = true;
  return t;
}

Tensor Tensor::view(DType dtype, Shape shape, std::span<const std::byte> bytes, std::shared_ptr<const void> owner,
                    const ByteSource* source, uint64_t source_offset) {
  Tensor t;
  t.dtype_ = dtype;
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  if (static_cast<size_t>(t.numel_) * dtype_size(dtype) != bytes.size())
    throw std::logic_error("Tensor::view: byte count does not match shape");
  // The view is read-only: writes go through mutable_bytes(), which refuses.
  t.bytes_ = {const_cast<std::byte*>(bytes.data()), bytes.size()};
  t.owner_ = std::move(owner);
  t.writable_ = false;
  t.source_ = source;
  t.source_offset_ = source_offset;
  return t;
}

void Tensor::read_bytes(uint64_t offset, std::span<std::byte> dst) const {
  if (offset > bytes_.size() || dst.size() > bytes_.size() - offset)
    throw std::logic_error("Tensor::read_bytes: range outside the tensor");
  if (source_)
    source_->read(source_offset_ + offset, dst);
  else if (!dst.empty())
    std::memcpy(dst.data(), bytes_.data() + offset, dst.size());
}

Tensor Tensor::from_f32(Shape shape, std::span<const float> values) {
  Tensor t = zeros(DType::F32, std::move(shape));
  if (values.size() != static_cast<size_t>(t.numel_))
    throw std::logic_error("Tensor::from_f32: value count does not match shape");
  if (!values.empty()) std::memcpy(t.bytes_.data(), values.data(), values.size_bytes());
  return t;
}

bool Tensor::aligned() const {
  return reinterpret_cast<uintptr_t>(bytes_.data()) % dtype_size(dtype_) == 0;
}

std::span<std::byte> Tensor::mutable_bytes() {
  if (!writable_) throw std::logic_error("tensor is a read-only view");
  return bytes_;
}

void Tensor::check_typed(size_t size, size_t align) const {
  if (size != dtype_size(dtype_)) throw std::logic_error("tensor accessed with the wrong element type");
  if (reinterpret_cast<uintptr_t>(bytes_.data()) % align != 0)
    throw std::logic_error("typed access to unaligned tensor data; convert it first");
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_ && aligned()) return *this;
  Tensor out = uninitialized(dtype, shape_);
  convert(dtype_, bytes_.data(), dtype, out.bytes_.data(), static_cast<size_t>(numel_));
  return out;
}

Tensor Tensor::clone() const {
  Tensor out = uninitialized(dtype_, shape_);
  if (!bytes_.empty()) std::memcpy(out.bytes_.data(), bytes_.data(), bytes_.size());
  return out;
}

Tensor Tensor::reshaped(Shape shape) const {
  if (shape_numel(shape) != numel_) throw std::logic_error("reshape changes the element count");
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

}  // namespace amalgam
