#include "core/dtype.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "core/parallel.h"

namespace amalgam {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64:
      return 8;
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16:
      return 2;
    case DType::F8_E4M3:
    case DType::F8_E5M2:
    case DType::I8:
    case DType::U8:
    case DType::BOOL:
      return 1;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F64:
      return "F64";
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::F8_E4M3:
      return "F8_E4M3";
    case DType::F8_E5M2:
      return "F8_E5M2";
    case DType::I64:
      return "I64";
    case DType::I32:
      return "I32";
    case DType::I16:
      return "I16";
    case DType::I8:
      return "I8";
    case DType::U8:
      return "U8";
    case DType::BOOL:
      return "BOOL";
  }
  return "?";
}

std::string_view torch_dtype_name(DType t) {
  switch (t) {
    case DType::F64:
      return "float64";
    case DType::F32:
      return "float32";
    case DType::F16:
      return "float16";
    case DType::BF16:
      return "bfloat16";
    case DType::F8_E4M3:
      return "float8_e4m3fn";
    case DType::F8_E5M2:
      return "float8_e5m2";
    case DType::I64:
      return "int64";
    case DType::I32:
      return "int32";
    case DType::I16:
      return "int16";
    case DType::I8:
      return "int8";
    case DType::U8:
      return "uint8";
    case DType::BOOL:
      return "bool";
  }
  return "?";
}

std::optional<DType> parse_dtype(std::string_view name) {
  for (DType t : kAllDTypes)
    if (dtype_name(t) == name) return t;
  return std::nullopt;
}

bool is_floating(DType t) {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F8_E4M3 ||
         t == DType::F8_E5M2;
}

namespace {

// Encodes a finite-or-not F32 into a small binary float format with `ebits` exponent and
// `mbits` mantissa bits, rounding to nearest even. One routine serves F16 and both F8
// formats so the rounding logic exists once. `ieee_inf`: the all-ones exponent means
// Inf/NaN (F16, E5M2); otherwise only the all-ones pattern is NaN and overflow gives NaN
// (E4M3 "fn").
inline uint32_t encode_small_float(float f, int ebits, int mbits, bool ieee_inf) {
  const uint32_t b = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (b >> 31) << (ebits + mbits);
  const uint32_t a = b & 0x7fffffffu;
  const uint32_t exp_all_ones = ((1u << ebits) - 1) << mbits;
  const uint32_t nan = ieee_inf ? exp_all_ones | (1u << (mbits - 1)) : exp_all_ones | ((1u << mbits) - 1);
  if (a > 0x7f800000u) return sign | nan;
  if (a == 0x7f800000u) return sign | (ieee_inf ? exp_all_ones : nan);
  if (a < 0x00800000u) return sign;  // F32 subnormals are far below every target's range.

  const int bias = (1 << (ebits - 1)) - 1;
  const int emin = 1 - bias;
  const int e = static_cast<int>(a >> 23) - 127;
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;  // 24 significant bits
  const int drop = 23 - mbits + (e < emin ? emin - e : 0);
  uint32_t q = 0;
  if (drop < 32) {
    q = m >> drop;
    const uint32_t rest = m & ((1u << drop) - 1);
    const uint32_t half = 1u << (drop - 1);
    if (rest > half || (rest == half && (q & 1u))) ++q;
  }
  // For normals q carries the implicit bit, which adds one to the biased exponent; a
  // mantissa overflow from rounding carries into the exponent by itself.
  uint32_t enc = e >= emin ? (static_cast<uint32_t>(e + bias - 1) << mbits) + q : q;
  if (ieee_inf) {
    if (enc >= exp_all_ones) enc = exp_all_ones;
  } else if (enc >= (exp_all_ones | ((1u << mbits) - 1))) {
    enc = nan;
  }
  return sign | enc;
}

// Decodes the small float formats exactly (every value fits in F32).
inline float decode_small_float(uint32_t v, int ebits, int mbits, bool ieee_inf) {
  const bool negative = (v >> (ebits + mbits)) & 1u;
  const uint32_t exp = (v >> mbits) & ((1u << ebits) - 1);
  const uint32_t man = v & ((1u << mbits) - 1);
  const int bias = (1 << (ebits - 1)) - 1;
  const uint32_t exp_max = (1u << ebits) - 1;
  float mag;
  if (ieee_inf && exp == exp_max) {
    mag = man == 0 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  } else if (!ieee_inf && exp == exp_max && man == (1u << mbits) - 1) {
    mag = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    mag = std::ldexp(static_cast<float>(man), 1 - bias - mbits);
  } else {
    mag = std::ldexp(static_cast<float>(man | (1u << mbits)), static_cast<int>(exp) - bias - mbits);
  }
  return negative ? -mag : mag;
}

template <int EBITS, int MBITS, bool IEEE>
std::array<float, 256> make_f8_table() {
  std::array<float, 256> t{};
  for (uint32_t v = 0; v < 256; ++v) t[v] = decode_small_float(v, EBITS, MBITS, IEEE);
  return t;
}

const std::array<float, 256>& e4m3_table() {
  static const auto t = make_f8_table<4, 3, false>();
  return t;
}
const std::array<float, 256>& e5m2_table() {
  static const auto t = make_f8_table<5, 2, true>();
  return t;
}

template <class T>
inline T load(const void* p, size_t i) {
  T v;
  std::memcpy(&v, static_cast<const char*>(p) + i * sizeof(T), sizeof(T));
  return v;
}
template <class T>
inline void store(void* p, size_t i, T v) {
  std::memcpy(static_cast<char*>(p) + i * sizeof(T), &v, sizeof(T));
}

template <class Int>
Int saturate_round(float f) {
  if (std::isnan(f)) return 0;
  const double r = std::nearbyint(static_cast<double>(f));
  if (r <= static_cast<double>(std::numeric_limits<Int>::min())) return std::numeric_limits<Int>::min();
  if (r >= static_cast<double>(std::numeric_limits<Int>::max())) return std::numeric_limits<Int>::max();
  return static_cast<Int>(r);
}

// Converts elements [begin, end) of `in` to F32.
void to_f32_range(DType src, const void* in, float* out, size_t begin, size_t end) {
  switch (src) {
    case DType::F32:
      std::memcpy(out + begin, static_cast<const char*>(in) + begin * 4, (end - begin) * 4);
      return;
    case DType::F64:
      for (size_t i = begin; i < end; ++i) out[i] = static_cast<float>(load<double>(in, i));
      return;
    case DType::F16:
      for (size_t i = begin; i < end; ++i) out[i] = f16_to_f32(load<uint16_t>(in, i));
      return;
    case DType::BF16:
      for (size_t i = begin; i < end; ++i) out[i] = bf16_to_f32(load<uint16_t>(in, i));
      return;
    case DType::F8_E4M3: {
      const auto& t = e4m3_table();
      for (size_t i = begin; i < end; ++i) out[i] = t[load<uint8_t>(in, i)];
      return;
    }
    case DType::F8_E5M2: {
      const auto& t = e5m2_table();
      for (size_t i = begin; i < end; ++i) out[i] = t[load<uint8_t>(in, i)];
      return;
    }
    case DType::I64:
      for (size_t i = begin; i < end; ++i) out[i] = static_cast<float>(load<int64_t>(in, i));
      return;
    case DType::I32:
      for (size_t i = begin; i < end; ++i) out[i] = static_cast<float>(load<int32_t>(in, i));
      return;
    case DType::I16:
      for (size_t i = begin; i < end; ++i) out[i] = static_cast<float>(load<int16_t>(in, i));
      return;
    case DType::I8:
      for (size_t i = begin; i < end; ++i) out[i] = static_cast<float>(load<int8_t>(in, i));
      return;
    case DType::U8:
      for (size_t i = begin; i < end; ++i) out[i] = static_cast<float>(load<uint8_t>(in, i));
      return;
    case DType::BOOL:
      for (size_t i = begin; i < end; ++i) out[i] = load<uint8_t>(in, i) != 0 ? 1.0f : 0.0f;
      return;
  }
}

void from_f32_range(const float* in, DType dst, void* out, size_t begin, size_t end) {
  switch (dst) {
    case DType::F32:
      std::memcpy(static_cast<char*>(out) + begin * 4, in + begin, (end - begin) * 4);
      return;
    case DType::F64:
      for (size_t i = begin; i < end; ++i) store<double>(out, i, in[i]);
      return;
    case DType::F16:
      for (size_t i = begin; i < end; ++i) store<uint16_t>(out, i, f32_to_f16(in[i]));
      return;
    case DType::BF16:
      for (size_t i = begin; i < end; ++i) store<uint16_t>(out, i, f32_to_bf16(in[i]));
      return;
    case DType::F8_E4M3:
      for (size_t i = begin; i < end; ++i) store<uint8_t>(out, i, f32_to_f8e4m3(in[i]));
      return;
    case DType::F8_E5M2:
      for (size_t i = begin; i < end; ++i) store<uint8_t>(out, i, f32_to_f8e5m2(in[i]));
      return;
    case DType::I64:
      for (size_t i = begin; i < end; ++i) store<int64_t>(out, i, saturate_round<int64_t>(in[i]));
      return;
    case DType::I32:
      for (size_t i = begin; i < end; ++i) store<int32_t>(out, i, saturate_round<int32_t>(in[i]));
      return;
    case DType::I16:
      for (size_t i = begin; i < end; ++i) store<int16_t>(out, i, saturate_round<int16_t>(in[i]));
      return;
    case DType::I8:
      for (size_t i = begin; i < end; ++i) store<int8_t>(out, i, saturate_round<int8_t>(in[i]));
      return;
    case DType::U8:
      for (size_t i = begin; i < end; ++i) store<uint8_t>(out, i, saturate_round<uint8_t>(in[i]));
      return;
    case DType::BOOL:
      for (size_t i = begin; i < end; ++i) store<uint8_t>(out, i, in[i] != 0.0f ? 1 : 0);
      return;
  }
}

int64_t load_integer(DType t, const void* in, size_t i) {
  switch (t) {
    case DType::I64:
      return load<int64_t>(in, i);
    case DType::I32:
      return load<int32_t>(in, i);
    case DType::I16:
      return load<int16_t>(in, i);
    case DType::I8:
      return load<int8_t>(in, i);
    case DType::U8:
      return load<uint8_t>(in, i);
    case DType::BOOL:
      return load<uint8_t>(in, i) != 0;
    default:
      throw std::logic_error("load_integer: not an integer dtype");
  }
}

template <class Int>
Int clamp_to(int64_t v) {
  if (v < static_cast<int64_t>(std::numeric_limits<Int>::min())) return std::numeric_limits<Int>::min();
  if (v > static_cast<int64_t>(std::numeric_limits<Int>::max())) return std::numeric_limits<Int>::max();
  return static_cast<Int>(v);
}

void store_integer(DType t, void* out, size_t i, int64_t v) {
  switch (t) {
    case DType::I64:
      return store<int64_t>(out, i, v);
    case DType::I32:
      return store<int32_t>(out, i, clamp_to<int32_t>(v));
    case DType::I16:
      return store<int16_t>(out, i, clamp_to<int16_t>(v));
    case DType::I8:
      return store<int8_t>(out, i, clamp_to<int8_t>(v));
    case DType::U8:
      return store<uint8_t>(out, i, clamp_to<uint8_t>(v));
    case DType::BOOL:
      return store<uint8_t>(out, i, v != 0);
    default:
      throw std::logic_error("store_integer: not an integer dtype");
  }
}

constexpr size_t kConvertChunk = 1 << 16;

}  // namespace

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // Inf, or NaN with its payload
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else {
    // Zero or subnormal: man * 2^-24 is exact in F32.
    bits = sign | std::bit_cast<uint32_t>(static_cast<float>(man) * 0x1p-24f);
  }
  return std::bit_cast<float>(bits);
}

uint16_t f32_to_f16(float f) {
  const uint32_t b = std::bit_cast<uint32_t>(f);
  if ((b & 0x7fffffffu) > 0x7f800000u)  // NaN: keep sign and the top payload bits, stay quiet
    return static_cast<uint16_t>(((b >> 16) & 0x8000u) | 0x7e00u | ((b >> 13) & 0x3ffu));
  return static_cast<uint16_t>(encode_small_float(f, 5, 10, true));
}

float bf16_to_f32(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

uint16_t f32_to_bf16(float f) {
  // Branch-free (a select), so that bulk conversion loops vectorise.
  const uint32_t b = std::bit_cast<uint32_t>(f);
  const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (b >> 16) | 0x40u;
  return static_cast<uint16_t>((b & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

float f8e4m3_to_f32(uint8_t v) {
  return e4m3_table()[v];
}
uint8_t f32_to_f8e4m3(float f) {
  return static_cast<uint8_t>(encode_small_float(f, 4, 3, false));
}
float f8e5m2_to_f32(uint8_t v) {
  return e5m2_table()[v];
}
uint8_t f32_to_f8e5m2(float f) {
  return static_cast<uint8_t>(encode_small_float(f, 5, 2, true));
}

bool all_finite(const float* values, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad |= (std::bit_cast<uint32_t>(values[i]) & 0x7f800000u) == 0x7f800000u;
  return bad == 0;
}

bool to_f32_checked(DType src, const void* in, float* out, size_t n) {
  if (src == DType::BF16) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t bits = static_cast<uint32_t>(load<uint16_t>(in, i)) << 16;
      bad |= (bits & 0x7f800000u) == 0x7f800000u;
      out[i] = std::bit_cast<float>(bits);
    }
    return bad == 0;
  }
  to_f32_range(src, in, out, 0, n);
  return all_finite(out, n);
}

bool from_f32_checked(const float* in, DType dst, void* out, size_t n) {
  if (dst == DType::BF16) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = f32_to_bf16(in[i]);
      bad |= (h & 0x7f80u) == 0x7f80u;
      store<uint16_t>(out, i, h);
    }
    return bad == 0;
  }
  from_f32_range(in, dst, out, 0, n);
  if (dst == DType::F32 || dst == DType::F64) return all_finite(in, n);  // stored exactly
  if (!is_floating(dst)) return true;
  // Other narrow floats: read the stored values back, a stack buffer at a time.
  constexpr size_t kPiece = 1024;
  float back[kPiece];
  for (size_t i = 0; i < n; i += kPiece) {
    const size_t m = std::min(kPiece, n - i);
    to_f32_range(dst, static_cast<const char*>(out) + i * dtype_size(dst), back, 0, m);
    if (!all_finite(back, m)) return false;
  }
  return true;
}

void convert_to_f32(DType src, const void* in, float* out, size_t n) {
  parallel_chunks(n, kConvertChunk, [&](size_t b, size_t e) { to_f32_range(src, in, out, b, e); });
}

void convert_from_f32(const float* in, DType dst, void* out, size_t n) {
  parallel_chunks(n, kConvertChunk, [&](size_t b, size_t e) { from_f32_range(in, dst, out, b, e); });
}

void convert(DType src, const void* in, DType dst, void* out, size_t n) {
  if (src == dst) {
    std::memcpy(out, in, n * dtype_size(src));
  } else if (src == DType::F32) {
    convert_from_f32(static_cast<const float*>(in), dst, out, n);
  } else if (dst == DType::F32) {
    convert_to_f32(src, in, static_cast<float*>(out), n);
  } else if (!is_floating(src) && !is_floating(dst)) {
    parallel_chunks(n, kConvertChunk, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) store_integer(dst, out, i, load_integer(src, in, i));
    });
  } else {
    parallel_chunks(n, kConvertChunk, [&](size_t b, size_t e) {
      float buf[1024];
      for (size_t i = b; i < e; i += 1024) {
        const size_t m = std::min<size_t>(1024, e - i);
        to_f32_range(src, static_cast<const char*>(in) + i * dtype_size(src), buf, 0, m);
        from_f32_range(buf, dst, static_cast<char*>(out) + i * dtype_size(dst), 0, m);
      }
    });
  }
}

}  // namespace amalgam
