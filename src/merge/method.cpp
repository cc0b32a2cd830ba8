#include "merge/method.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"

namespace amalgam {

TensorJob::TensorJob(std::string name, std::vector<Tensor> models, std::optional<Tensor> base,
                     std::vector<std::map<std::string, double>> model_params,
                     std::map<std::string, double> global_params, uint64_t seed)
    : name_(std::move(name)),
      models_(std::move(models)),
      base_(std::move(base)),
      model_params_(std::move(model_params)),
      global_params_(std::move(global_params)),
      nonfinite_(std::make_shared<std::optional<size_t>>()),
      output_nonfinite_(std::make_shared<bool>(false)),
      read_error_(std::make_shared<std::exception_ptr>()) {
  const Tensor& ref = base_ ? *base_ : models_.at(0);
  shape_ = ref.shape();
  numel_ = static_cast<size_t>(ref.numel());
  // The tensor's name feeds its seed so that randomness does not depend on merge order.
  uint64_t h = seed;
  for (unsigned char c : name_) h = mix64(h ^ c);
  seed_ = h;
}

void TensorJob::note_nonfinite(size_t input) const {
#pragma omp critical(amalgam_nonfinite)
  if (!nonfinite_->has_value() || input < **nonfinite_) *nonfinite_ = input;
}

void TensorJob::note_read_error() const {
#pragma omp critical(amalgam_read_error)
  if (!*read_error_) *read_error_ = std::current_exception();
}

// F32 inputs are read straight into `out`; others through a staging buffer.
void TensorJob::read_input(size_t t, size_t begin, size_t end, float* out) const {
  const size_t n = end - begin;
  if (input_dtype(t) == DType::F32) {
    read_stored(t, begin, end, reinterpret_cast<std::byte*>(out));
    if (!all_finite(out, n)) note_nonfinite(t);
    return;
  }
  thread_local std::vector<std::byte> staging;
  staging.resize(n * dtype_size(input_dtype(t)));
  read_stored(t, begin, end, staging.data());
  stored_to_f32(t, staging.data(), n, out);
}

void TensorJob::read_stored(size_t t, size_t begin, size_t end, std::byte* out) const {
  const Tensor& in = input(t);
  const size_t size = dtype_size(in.dtype());
  try {
    in.read_bytes(begin * size, {out, (end - begin) * size});
  } catch (...) {
    note_read_error();
    std::fill(out, out + (end - begin) * size, std::byte{0});  // zeros in every dtype
  }
}

void TensorJob::stored_to_f32(size_t t, const std::byte* stored, size_t n, float* out) const {
  if (!to_f32_checked(input(t).dtype(), stored, out, n)) note_nonfinite(t);
}

void TensorJob::store_output(std::span<std::byte> out, size_t begin, const float* values, size_t n) const {
  const size_t size = dtype_size(output_dtype_);
  if ((begin + n) * size > out.size()) throw std::logic_error("TensorJob::store_output: range outside the output");
  if (!from_f32_checked(values, output_dtype_, out.data() + begin * size, n) && check_output_) {
#pragma omp atomic write
    *output_nonfinite_ = true;
  }
}

void StoredChunk::load(const TensorJob& job, size_t begin, size_t end, bool with_base) {
  job_ = &job;
  const size_t inputs = job.model_count() + (with_base ? 1 : 0);
  offsets_.resize(inputs);
  sizes_.resize(inputs);
  size_t total = 0;
  for (size_t t = 0; t < inputs; ++t) {
    sizes_[t] = dtype_size(job.input_dtype(t));
    offsets_[t] = total;
    total += (end - begin) * sizes_[t];
  }
  bytes_.resize(total);
  for (size_t t = 0; t < inputs; ++t) job.read_stored(t, begin, end, bytes_.data() + offsets_[t]);
}

void TensorJob::read_model(size_t t, size_t begin, size_t end, float* out) const {
  if (t >= models_.size()) throw std::out_of_range("TensorJob::read_model: no candidate " + std::to_string(t));
  read_input(t, begin, end, out);
}

void TensorJob::read_base(size_t begin, size_t end, float* out) const {
  if (!base_) throw std::logic_error("TensorJob::read_base without a base model");
  read_input(models_.size(), begin, end, out);
}

void TensorJob::rethrow_read_error() const {
  if (*read_error_) std::rethrow_exception(*read_error_);
}

// Whole tensors are read in chunks on all cores: one thread's pread and conversion of a
// large tensor would leave the others idle.
Tensor TensorJob::model_f32(size_t t) const {
  Tensor out = Tensor::uninitialized(DType::F32, shape_);
  float* dst = out.mutable_data<float>().data();
  parallel_chunks(numel_, kStreamChunk, [&](size_t b, size_t e) { read_model(t, b, e, dst + b); });
  return out;
}

Tensor TensorJob::base_f32() const {
  Tensor out = Tensor::uninitialized(DType::F32, shape_);
  float* dst = out.mutable_data<float>().data();
  parallel_chunks(numel_, kStreamChunk, [&](size_t b, size_t e) { read_base(b, e, dst + b); });
  return out;
}

double TensorJob::param(const std::string& name, size_t model) const {
  const auto& params = model_params_.at(model);
  const auto it = params.find(name);
  if (it == params.end()) throw std::logic_error("parameter '" + name + "' was not resolved for a model");
  return it->second;
}

double TensorJob::param(const std::string& name) const {
  const auto it = global_params_.find(name);
  if (it == global_params_.end()) throw std::logic_error("global parameter '" + name + "' was not resolved");
  return it->second;
}

uint64_t TensorJob::seed_for(size_t model) const {
  return mix64(seed_ ^ mix64(model + 1));
}

std::optional<size_t> TensorJob::first_nonfinite_input() const {
  return *nonfinite_;
}

Tensor merge_whole(const MergeMethod& method, const TensorJob& job) {
  const std::unique_ptr<RangeMerge> ranges = method.start(job);
  if (!ranges) throw std::logic_error(method.spec().name + " does not stream");
  Tensor out = Tensor::uninitialized(job.output_dtype(), job.shape());
  const std::span<std::byte> bytes = out.mutable_bytes();
  const size_t n = job.numel(), size = dtype_size(job.output_dtype());
  for (size_t b = 0; b < n; b += kStreamRange) {
    const size_t e = std::min(n, b + kStreamRange);
    ranges->merge_range(b, e, bytes.subspan(b * size, (e - b) * size));
  }
  ranges->finish();
  return out;
}

MethodRegistry& MethodRegistry::instance() {
  static MethodRegistry registry;
  return registry;
}

void MethodRegistry::add(const std::string& name, Factory factory) {
  if (!factories_.emplace(name, std::move(factory)).second)
    throw std::logic_error("merge method '" + name + "' registered twice");
}

std::unique_ptr<MergeMethod> MethodRegistry::create(const std::string& name) const {
  const auto it = factories_.find(name);
  if (it == factories_.end()) {
    std::string known;
    for (const auto& n : names()) known += (known.empty() ? "" : ", ") + n;
    throw InputError("unknown method '" + name + "' (known: " + known + ")");
  }
  return it->second();
}

std::vector<std::string> MethodRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [n, f] : factories_) out.push_back(n);
  return out;
}

}  // namespace amalgam
