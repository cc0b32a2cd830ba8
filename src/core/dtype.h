// Element types of checkpoint tensors, their safetensors names, and exact conversions
// to and from F32 (the type amalgam computes in).
//
// Float conversions round to nearest, ties to even, and keep NaN and Inf (NaN stays a
// quiet NaN with its sign; formats without Inf, F8_E4M3, saturate nothing: values that
// round past the largest finite value become NaN, as PyTorch's float8_e4m3fn does).
// Integer targets round to nearest and saturate; NaN becomes 0. BOOL is x != 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace amalgam {

enum class DType : uint8_t { F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL };

inline constexpr DType kAllDTypes[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2,
                                       DType::I64, DType::I32, DType::I16, DType::I8,   DType::U8,      DType::BOOL};

size_t dtype_size(DType t);
// The name safetensors uses ("F32", "BF16", ...).
std::string_view dtype_name(DType t);
std::optional<DType> parse_dtype(std::string_view name);
// The name PyTorch and config.json's torch_dtype use ("float32", "bfloat16", "float8_e4m3fn", ...).
std::string_view torch_dtype_name(DType t);
bool is_floating(DType t);

// Scalar conversions (bit patterns in, bit patterns out).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f8e4m3_to_f32(uint8_t v);
uint8_t f32_to_f8e4m3(float f);
float f8e5m2_to_f32(uint8_t v);
uint8_t f32_to_f8e5m2(float f);

// True when no value is NaN or Inf. A bit test rather than std::isfinite, so that the loop
// vectorises: it runs over every element a merge reads and writes.
bool all_finite(const float* values, size_t n);

// Bulk conversions of n elements. `in` and `out` need no alignment (safetensors data may
// be unaligned). Large arrays are converted on all cores.
void convert_to_f32(DType src, const void* in, float* out, size_t n);
void convert_from_f32(const float* in, DType dst, void* out, size_t n);
// One thread's conversion of n elements that also says whether every value is finite: what
// convert_to_f32 + all_finite do in two passes, in one. The merge streams run these on every
// element they read and write; F32 <-> BF16 are single vectorised loops over the bits.
bool to_f32_checked(DType src, const void* in, float* out, size_t n);
// Finiteness of the values as stored: an F32 value can overflow a narrower type (70000 in
// F16 is Inf). Integer targets are always finite.
bool from_f32_checked(const float* in, DType dst, void* out, size_t n);
// Any dtype to any dtype: float targets go through F32 (F64 to F64 is a copy), integer to
// integer through int64 with saturation.
void convert(DType src, const void* in, DType dst, void* out, size_t n);

}  // namespace amalgam
