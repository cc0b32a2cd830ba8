// Tests of the dtype conversions. Every expected value comes from a reference built here,
// not from dtype.cpp: small float codes are decoded from their sign/exponent/mantissa
// fields with std::ldexp, rounding is checked against a nearest-value search over those
// decoded values, and the rest are hand-worked constants.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace amalgam {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kFltMax = std::numeric_limits<float>::max();

uint32_t bits_of(float f) {
  return std::bit_cast<uint32_t>(f);
}
float float_of(uint32_t b) {
  return std::bit_cast<float>(b);
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string describe(float f) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a (%s)", static_cast<double>(f), hex(bits_of(f)).c_str());
  return buf;
}

// Bitwise float equality, so that -0 and +0 differ; a NaN `want` matches any NaN with the
// same sign, since only the payload-free part of NaN handling is specified.
::testing::AssertionResult same_float(float got, float want) {
  if (std::isnan(want) ? std::isnan(got) && std::signbit(got) == std::signbit(want) : bits_of(got) == bits_of(want))
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << describe(got) << ", want " << describe(want);
}

// Exhaustive loops stop after this many mismatches, so a systematic bug does not bury the
// log under 65,536 lines.
constexpr int kMaxReported = 16;

// The shape of a small binary float, plus the functions under test for it. `ieee_inf`: the
// all-ones exponent holds Inf (mantissa 0) and NaNs; otherwise (E4M3 "fn") there is no Inf
// and only the all-ones code of either sign is NaN.
struct Format {
  const char* name;
  int ebits;
  int mbits;
  bool ieee_inf;
  float (*decode)(uint32_t);
  uint32_t (*encode)(float);

  uint32_t codes() const { return 1u << (1 + ebits + mbits); }
  uint32_t sign_bit() const { return 1u << (ebits + mbits); }
  uint32_t man_mask() const { return (1u << mbits) - 1; }
  uint32_t exp_max() const { return (1u << ebits) - 1; }
  // Largest positive finite code; the code after it is Inf (IEEE) or NaN (fn).
  uint32_t max_finite() const { return ieee_inf ? (exp_max() << mbits) - 1 : (exp_max() << mbits) | (man_mask() - 1); }
};

const Format kF16{"F16",
                  5,
                  10,
                  true,
                  [](uint32_t c) { return f16_to_f32(static_cast<uint16_t>(c)); },
                  [](float f) -> uint32_t { return f32_to_f16(f); }};
const Format kBF16{"BF16",
                   8,
                   7,
                   true,
                   [](uint32_t c) { return bf16_to_f32(static_cast<uint16_t>(c)); },
                   [](float f) -> uint32_t { return f32_to_bf16(f); }};
const Format kE4M3{"F8_E4M3",
                   4,
                   3,
                   false,
                   [](uint32_t c) { return f8e4m3_to_f32(static_cast<uint8_t>(c)); },
                   [](float f) -> uint32_t { return f32_to_f8e4m3(f); }};
const Format kE5M2{"F8_E5M2",
                   5,
                   2,
                   true,
                   [](uint32_t c) { return f8e5m2_to_f32(static_cast<uint8_t>(c)); },
                   [](float f) -> uint32_t { return f32_to_f8e5m2(f); }};
const Format* const kFormats[] = {&kF16, &kBF16, &kE4M3, &kE5M2};

// A code's meaning, read from its fields. `value` is signed (so -0 and -Inf are there) and
// meaningless when `nan`.
struct RefValue {
  bool nan;
  bool negative;
  double value;
};

RefValue ref_decode(const Format& fmt, uint32_t code) {
  const bool negative = (code & fmt.sign_bit()) != 0;
  const uint32_t e = (code >> fmt.mbits) & fmt.exp_max();
  const uint32_t m = code & fmt.man_mask();
  const int bias = (1 << (fmt.ebits - 1)) - 1;
  double mag;
  if (fmt.ieee_inf && e == fmt.exp_max()) {
    if (m != 0) return {true, negative, 0.0};
    mag = std::numeric_limits<double>::infinity();
  } else if (!fmt.ieee_inf && e == fmt.exp_max() && m == fmt.man_mask()) {
    return {true, negative, 0.0};
  } else if (e == 0) {
    // Subnormal: no implicit leading bit, and the exponent of the smallest normal.
    mag = std::ldexp(static_cast<double>(m), 1 - bias - fmt.mbits);
  } else {
    mag = std::ldexp(static_cast<double>(m + (1u << fmt.mbits)), static_cast<int>(e) - bias - fmt.mbits);
  }
  return {false, negative, negative ? -mag : mag};
}

// Round to nearest, ties to even, by searching the reference's positive values. One value
// past the largest finite one is appended (largest + one ulp, what the next code would mean
// if the exponent went on): rounding treats it as an ordinary neighbour, and its code is
// Inf for the IEEE formats and NaN for E4M3, which is where overflow must land.
class RefEncoder {
 public:
  explicit RefEncoder(const Format& fmt) : fmt_(fmt) {
    for (uint32_t c = 0; c <= fmt.max_finite(); ++c) values_.push_back(ref_decode(fmt, c).value);
    const double top = values_.back();
    values_.push_back(top + (top - values_[values_.size() - 2]));
  }

  // The reference values must ascend strictly with the code, or the search below is wrong.
  bool ascending() const {
    return std::adjacent_find(values_.begin(), values_.end(), std::greater_equal<>()) == values_.end();
  }

  // Value of positive code c, including the one past the largest finite code.
  double value(uint32_t c) const { return values_[c]; }

  uint32_t encode(float x) const {
    const uint32_t sign = std::signbit(x) ? fmt_.sign_bit() : 0;
    const double a = std::fabs(static_cast<double>(x));
    const uint32_t past = static_cast<uint32_t>(values_.size() - 1);
    if (a >= values_[past]) return sign | past;
    const auto hi = static_cast<uint32_t>(std::upper_bound(values_.begin(), values_.end(), a) - values_.begin());
    const uint32_t lo = hi - 1;
    // Adjacent values have few significant bits, so their midpoint is exact in double.
    const double mid = (values_[lo] + values_[hi]) / 2;
    const uint32_t c = a < mid ? lo : a > mid ? hi : (lo & 1u) == 0 ? lo : hi;
    return sign | c;
  }

 private:
  const Format& fmt_;
  std::vector<double> values_;
};

// --- Decoding: every code against the field-level reference. ---

void check_all_decodes(const Format& fmt) {
  int reported = 0;
  for (uint32_t c = 0; c < fmt.codes() && reported < kMaxReported; ++c) {
    const RefValue r = ref_decode(fmt, c);
    const float want = r.nan ? (r.negative ? -kNaN : kNaN) : static_cast<float>(r.value);
    ASSERT_TRUE(r.nan || static_cast<double>(want) == r.value) << "reference value not exact in F32";
    const auto ok = same_float(fmt.decode(c), want);
    if (!ok) {
      ADD_FAILURE() << fmt.name << " code " << hex(c) << ": " << ok.message();
      ++reported;
    }
  }
}

TEST(DTypeF16, DecodesEveryPatternFromFields) {
  check_all_decodes(kF16);
}

TEST(DTypeF16, DecodedNaNKeepsPayloadShiftedBy13) {
  // F16 NaN mantissa m must land in the F32 mantissa as m << 13, quiet or not.
  int reported = 0;
  for (uint32_t c = 0; c < 0x10000 && reported < kMaxReported; ++c) {
    if ((c & 0x7c00u) != 0x7c00u || (c & 0x3ffu) == 0) continue;
    const uint32_t want = ((c & 0x8000u) << 16) | 0x7f800000u | ((c & 0x3ffu) << 13);
    const uint32_t got = bits_of(f16_to_f32(static_cast<uint16_t>(c)));
    if (got != want) {
      ADD_FAILURE() << "F16 " << hex(c) << ": got " << hex(got) << ", want " << hex(want);
      ++reported;
    }
  }
}

TEST(DTypeF16, DecodesHandWorkedValues) {
  EXPECT_TRUE(same_float(f16_to_f32(0x3c00), 1.0f));
  EXPECT_TRUE(same_float(f16_to_f32(0xc000), -2.0f));
  EXPECT_TRUE(same_float(f16_to_f32(0x3555), 0.333251953125f));  // (1 + 341/1024) / 4
  EXPECT_TRUE(same_float(f16_to_f32(0x7bff), 65504.0f));
  EXPECT_TRUE(same_float(f16_to_f32(0x0400), 0x1p-14f));
  EXPECT_TRUE(same_float(f16_to_f32(0x03ff), 1023 * 0x1p-24f));
  EXPECT_TRUE(same_float(f16_to_f32(0x0001), 0x1p-24f));
  EXPECT_TRUE(same_float(f16_to_f32(0x8001), -0x1p-24f));
  EXPECT_TRUE(same_float(f16_to_f32(0x0000), 0.0f));
  EXPECT_TRUE(same_float(f16_to_f32(0x8000), -0.0f));
  EXPECT_TRUE(same_float(f16_to_f32(0x7c00), kInf));
  EXPECT_TRUE(same_float(f16_to_f32(0xfc00), -kInf));
  EXPECT_EQ(bits_of(f16_to_f32(0x7e00)), 0x7fc00000u);
  EXPECT_EQ(bits_of(f16_to_f32(0xfe00)), 0xffc00000u);
  EXPECT_EQ(bits_of(f16_to_f32(0x7c01)), 0x7f802000u);  // signalling payload kept, not quieted
}

TEST(DTypeBF16, DecodesEveryPatternFromFields) {
  check_all_decodes(kBF16);
}

TEST(DTypeBF16, DecodeIsTheHighHalfOfF32) {
  // BF16 is the top 16 bits of an F32, so the bits (NaN payloads included) must match.
  int reported = 0;
  for (uint32_t c = 0; c < 0x10000 && reported < kMaxReported; ++c) {
    const uint32_t got = bits_of(bf16_to_f32(static_cast<uint16_t>(c)));
    if (got != c << 16) {
      ADD_FAILURE() << "BF16 " << hex(c) << ": got " << hex(got);
      ++reported;
    }
  }
}

TEST(DTypeBF16, DecodesHandWorkedValues) {
  EXPECT_TRUE(same_float(bf16_to_f32(0x3f80), 1.0f));
  EXPECT_TRUE(same_float(bf16_to_f32(0x4049), 3.140625f));
  EXPECT_TRUE(same_float(bf16_to_f32(0x7f7f), 0x1.fep127f));
  EXPECT_TRUE(same_float(bf16_to_f32(0x0080), 0x1p-126f));
  EXPECT_TRUE(same_float(bf16_to_f32(0x0001), 0x1p-133f));
  EXPECT_TRUE(same_float(bf16_to_f32(0xff80), -kInf));
  EXPECT_TRUE(same_float(bf16_to_f32(0x7fc0), kNaN));
}

TEST(DTypeF8E4M3, DecodesEveryPatternFromFields) {
  check_all_decodes(kE4M3);
}

TEST(DTypeF8E4M3, DecodesHandWorkedValues) {
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0x38), 1.0f));
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0x7e), 448.0f));
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0xfe), -448.0f));
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0x7d), 416.0f));
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0x78), 256.0f));  // exponent all ones is a normal binade in "fn"
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0x08), 0x1p-6f));
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0x07), 7 * 0x1p-9f));
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0x01), 0x1p-9f));
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0x80), -0.0f));
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0x7f), kNaN));
  EXPECT_TRUE(same_float(f8e4m3_to_f32(0xff), -kNaN));
}

TEST(DTypeF8E5M2, DecodesEveryPatternFromFields) {
  check_all_decodes(kE5M2);
}

TEST(DTypeF8E5M2, DecodesHandWorkedValues) {
  EXPECT_TRUE(same_float(f8e5m2_to_f32(0x3c), 1.0f));
  EXPECT_TRUE(same_float(f8e5m2_to_f32(0x7b), 57344.0f));
  EXPECT_TRUE(same_float(f8e5m2_to_f32(0x04), 0x1p-14f));
  EXPECT_TRUE(same_float(f8e5m2_to_f32(0x03), 3 * 0x1p-16f));
  EXPECT_TRUE(same_float(f8e5m2_to_f32(0x01), 0x1p-16f));
  EXPECT_TRUE(same_float(f8e5m2_to_f32(0x7c), kInf));
  EXPECT_TRUE(same_float(f8e5m2_to_f32(0xfc), -kInf));
  for (uint8_t c : {0x7d, 0x7e, 0x7f}) EXPECT_TRUE(same_float(f8e5m2_to_f32(c), kNaN)) << hex(c);
  for (uint8_t c : {0xfd, 0xfe, 0xff}) EXPECT_TRUE(same_float(f8e5m2_to_f32(c), -kNaN)) << hex(c);
}

// --- Encoding. ---

// Every non-NaN code survives code -> F32 -> code, starting both from the reference's value
// and from the decoder under test.
void check_round_trips(const Format& fmt) {
  int reported = 0;
  for (uint32_t c = 0; c < fmt.codes() && reported < kMaxReported; ++c) {
    const RefValue r = ref_decode(fmt, c);
    if (r.nan) continue;
    const uint32_t from_ref = fmt.encode(static_cast<float>(r.value));
    const uint32_t from_decode = fmt.encode(fmt.decode(c));
    if (from_ref != c || from_decode != c) {
      ADD_FAILURE() << fmt.name << " code " << hex(c) << " came back as " << hex(from_ref) << " (from reference), "
                    << hex(from_decode) << " (from decoder)";
      ++reported;
    }
  }
}

// For each pair of adjacent codes a < b of one sign (the last finite code paired with the
// overflow code), the exact midpoint goes to the even code, and the F32 neighbours of the
// midpoint go to a and to b.
void check_midpoints(const Format& fmt) {
  const RefEncoder ref(fmt);
  ASSERT_TRUE(ref.ascending()) << fmt.name;
  int reported = 0;
  for (uint32_t sign : {0u, fmt.sign_bit()}) {
    for (uint32_t c = 0; c <= fmt.max_finite() && reported < kMaxReported; ++c) {
      const double mid = (ref.value(c) + ref.value(c + 1)) / 2;
      const float m = static_cast<float>(mid);
      ASSERT_EQ(static_cast<double>(m), mid) << "midpoint not exact in F32";
      const float s = sign != 0 ? -1.0f : 1.0f;
      const uint32_t even = (c & 1u) == 0 ? c : c + 1;
      const uint32_t at = fmt.encode(s * m);
      const uint32_t below = fmt.encode(s * std::nextafter(m, 0.0f));
      const uint32_t above = fmt.encode(s * std::nextafter(m, kInf));
      if (at != (sign | even) || below != (sign | c) || above != (sign | (c + 1))) {
        ADD_FAILURE() << fmt.name << " between " << hex(sign | c) << " and " << hex(sign | (c + 1)) << ": midpoint "
                      << describe(s * m) << " -> " << hex(at) << " (want " << hex(sign | even) << "), just inside -> "
                      << hex(below) << ", just outside -> " << hex(above);
        ++reported;
      }
    }
  }
}

// Every F32 whose top 16 bits take all 65,536 values, with low halves chosen to sit on and
// around the rounding points of every target (ties of BF16 at 0x8000, of F16 at 0x1000 and
// 0x3000), plus random patterns, against the reference encoder.
void check_sweep(const Format& fmt) {
  const RefEncoder ref(fmt);
  ASSERT_TRUE(ref.ascending()) << fmt.name;
  std::vector<uint32_t> inputs;
  for (uint32_t hi = 0; hi < 0x10000; ++hi)
    for (uint32_t lo :
         {0x0000u, 0x0001u, 0x0fffu, 0x1000u, 0x1001u, 0x2fffu, 0x3000u, 0x3001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu})
      inputs.push_back(hi << 16 | lo);
  std::mt19937 rng(1234);
  for (int i = 0; i < (1 << 16); ++i) inputs.push_back(static_cast<uint32_t>(rng()));
  int reported = 0;
  for (uint32_t b : inputs) {
    const float x = float_of(b);
    if (std::isnan(x)) continue;
    const uint32_t got = fmt.encode(x);
    const uint32_t want = ref.encode(x);
    if (got != want) {
      ADD_FAILURE() << fmt.name << " from " << describe(x) << ": got " << hex(got) << ", want " << hex(want);
      if (++reported >= kMaxReported) return;
    }
  }
}

// NaN inputs, quiet and signalling, with payloads in high and low bits only, must give a
// NaN code of the same sign; IEEE-style targets must also get a quiet one (top mantissa bit).
void check_nan_encodes(const Format& fmt) {
  for (uint32_t nan : {0x7f800001u, 0x7f800100u, 0x7f802000u, 0x7f810000u, 0x7fa00000u, 0x7fbfffffu, 0x7fc00000u,
                       0x7fc00001u, 0x7fffffffu}) {
    for (uint32_t sign : {0u, 0x80000000u}) {
      const uint32_t got = fmt.encode(float_of(nan | sign));
      const RefValue r = ref_decode(fmt, got);
      EXPECT_TRUE(r.nan) << fmt.name << " from " << hex(nan | sign) << " gave non-NaN " << hex(got);
      EXPECT_EQ(r.negative, sign != 0) << fmt.name << " from " << hex(nan | sign) << " gave " << hex(got);
      if (fmt.ieee_inf) {
        EXPECT_NE(got & (1u << (fmt.mbits - 1)), 0u) << fmt.name << " NaN not quiet: " << hex(got);
      }
    }
  }
}

TEST(DTypeF16, EveryValueRoundTrips) {
  check_round_trips(kF16);
}
TEST(DTypeF16, MidpointsTieToEven) {
  check_midpoints(kF16);
}
TEST(DTypeF16, MatchesReferenceRoundingOnSweep) {
  check_sweep(kF16);
}
TEST(DTypeF16, NaNStaysNaNWithSign) {
  check_nan_encodes(kF16);
}

TEST(DTypeF16, EncodesHandWorkedValues) {
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // tie between 65504 (odd) and the overflow code
  EXPECT_EQ(f32_to_f16(65536.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(f32_to_f16(kFltMax), 0x7c00);
  EXPECT_EQ(f32_to_f16(kInf), 0x7c00);
  EXPECT_EQ(f32_to_f16(-65520.0f), 0xfc00);
  EXPECT_EQ(f32_to_f16(-kInf), 0xfc00);
  EXPECT_EQ(f32_to_f16(-65504.0f), 0xfbff);
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00);      // tie, 1.0 is even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);  // tie, 0x3c01 is odd
  EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400);
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);  // tie between 0 and the smallest subnormal
  EXPECT_EQ(f32_to_f16(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(3 * 0x1p-26f), 0x0001);
  EXPECT_EQ(f32_to_f16(-0x1p-25f), 0x8000);
  EXPECT_EQ(f32_to_f16(float_of(0x00000001)), 0x0000);  // F32 subnormals underflow to signed zero
  EXPECT_EQ(f32_to_f16(float_of(0x80000001)), 0x8000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
}

TEST(DTypeBF16, EveryValueRoundTrips) {
  check_round_trips(kBF16);
}
TEST(DTypeBF16, MidpointsTieToEven) {
  check_midpoints(kBF16);
}
TEST(DTypeBF16, MatchesReferenceRoundingOnSweep) {
  check_sweep(kBF16);
}
TEST(DTypeBF16, NaNStaysNaNWithSign) {
  check_nan_encodes(kBF16);
}

TEST(DTypeBF16, EncodesHandWorkedValues) {
  EXPECT_EQ(f32_to_bf16(3.14159265f), 0x4049);
  EXPECT_EQ(f32_to_bf16(float_of(0x3f808000)), 0x3f80);  // tie, 0x3f80 is even
  EXPECT_EQ(f32_to_bf16(float_of(0x3f818000)), 0x3f82);  // tie, 0x3f81 is odd
  EXPECT_EQ(f32_to_bf16(float_of(0x3f808001)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(float_of(0x7f7f7fff)), 0x7f7f);
  EXPECT_EQ(f32_to_bf16(float_of(0x7f7f8000)), 0x7f80);  // tie past the largest (odd) value: Inf
  EXPECT_EQ(f32_to_bf16(kFltMax), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-kFltMax), 0xff80);
  EXPECT_EQ(f32_to_bf16(kInf), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-kInf), 0xff80);
  EXPECT_EQ(f32_to_bf16(float_of(0x00008000)), 0x0000);  // subnormal tie, 0 is even
  EXPECT_EQ(f32_to_bf16(float_of(0x00008001)), 0x0001);
  EXPECT_EQ(f32_to_bf16(float_of(0x00018000)), 0x0002);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  // A NaN whose payload lives only in the low half must not truncate to Inf.
  EXPECT_EQ(f32_to_bf16(float_of(0x7f800001)) & 0x7f80, 0x7f80);
  EXPECT_NE(f32_to_bf16(float_of(0x7f800001)) & 0x7f, 0);
}

TEST(DTypeF8E4M3, EveryValueRoundTrips) {
  check_round_trips(kE4M3);
}
TEST(DTypeF8E4M3, MidpointsTieToEven) {
  check_midpoints(kE4M3);
}
TEST(DTypeF8E4M3, MatchesReferenceRoundingOnSweep) {
  check_sweep(kE4M3);
}
TEST(DTypeF8E4M3, NaNStaysNaNWithSign) {
  check_nan_encodes(kE4M3);
}

TEST(DTypeF8E4M3, OverflowBecomesNaN) {
  // "fn" has no Inf: past the largest finite value the only place to go is NaN.
  EXPECT_EQ(f32_to_f8e4m3(448.0f), 0x7e);
  EXPECT_EQ(f32_to_f8e4m3(464.0f), 0x7e);  // tie between 448 (even) and 480 (the NaN code)
  EXPECT_EQ(f32_to_f8e4m3(std::nextafter(464.0f, kInf)), 0x7f);
  EXPECT_EQ(f32_to_f8e4m3(465.0f), 0x7f);
  EXPECT_EQ(f32_to_f8e4m3(480.0f), 0x7f);
  EXPECT_EQ(f32_to_f8e4m3(1e30f), 0x7f);
  EXPECT_EQ(f32_to_f8e4m3(kInf), 0x7f);
  EXPECT_EQ(f32_to_f8e4m3(-kInf), 0xff);
  EXPECT_EQ(f32_to_f8e4m3(-465.0f), 0xff);
  EXPECT_EQ(f32_to_f8e4m3(-448.0f), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(-464.0f), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(0x1p-10f), 0x00);  // tie between 0 and the smallest subnormal 2^-9
  EXPECT_EQ(f32_to_f8e4m3(std::nextafter(0x1p-10f, 1.0f)), 0x01);
  EXPECT_EQ(f32_to_f8e4m3(-0x1p-10f), 0x80);
  EXPECT_EQ(f32_to_f8e4m3(kNaN), 0x7f);
  EXPECT_EQ(f32_to_f8e4m3(-kNaN), 0xff);
}

TEST(DTypeF8E5M2, EveryValueRoundTrips) {
  check_round_trips(kE5M2);
}
TEST(DTypeF8E5M2, MidpointsTieToEven) {
  check_midpoints(kE5M2);
}
TEST(DTypeF8E5M2, MatchesReferenceRoundingOnSweep) {
  check_sweep(kE5M2);
}
TEST(DTypeF8E5M2, NaNStaysNaNWithSign) {
  check_nan_encodes(kE5M2);
}

TEST(DTypeF8E5M2, OverflowBecomesInf) {
  EXPECT_EQ(f32_to_f8e5m2(57344.0f), 0x7b);
  EXPECT_EQ(f32_to_f8e5m2(std::nextafter(61440.0f, 0.0f)), 0x7b);
  EXPECT_EQ(f32_to_f8e5m2(61440.0f), 0x7c);  // tie between 57344 (odd) and the Inf code
  EXPECT_EQ(f32_to_f8e5m2(1e6f), 0x7c);
  EXPECT_EQ(f32_to_f8e5m2(kInf), 0x7c);
  EXPECT_EQ(f32_to_f8e5m2(-kInf), 0xfc);
  EXPECT_EQ(f32_to_f8e5m2(-61440.0f), 0xfc);
  EXPECT_EQ(f32_to_f8e5m2(-57344.0f), 0xfb);
  EXPECT_EQ(f32_to_f8e5m2(0x1p-17f), 0x00);  // tie between 0 and the smallest subnormal 2^-16
  EXPECT_EQ(f32_to_f8e5m2(std::nextafter(0x1p-17f, 1.0f)), 0x01);
}

// --- Integers. ---

template <class T>
std::vector<T> from_f32(DType dst, const std::vector<float>& in) {
  std::vector<T> out(in.size());
  convert_from_f32(in.data(), dst, out.data(), in.size());
  return out;
}

template <class T>
std::vector<float> to_f32(DType src, const std::vector<T>& in) {
  std::vector<float> out(in.size());
  convert_to_f32(src, in.data(), out.data(), in.size());
  return out;
}

TEST(DTypeInt, FromF32RoundsHalfToEvenAndSaturates) {
  EXPECT_EQ(from_f32<int8_t>(DType::I8, {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 0.49f, 2.51f, 127.4f, 127.5f, 1000.0f,
                                         -128.5f, -1000.0f, kNaN, -kNaN, kInf, -kInf}),
            (std::vector<int8_t>{0, 2, 2, 0, -2, -2, 0, 3, 127, 127, 127, -128, -128, 0, 0, 127, -128}));
  EXPECT_EQ(from_f32<uint8_t>(DType::U8, {-1.0f, -0.4f, -0.6f, 0.5f, 254.5f, 255.5f, 300.0f, kNaN, kInf, -kInf}),
            (std::vector<uint8_t>{0, 0, 0, 0, 254, 255, 255, 0, 255, 0}));
  EXPECT_EQ(from_f32<int16_t>(DType::I16, {32766.5f, 32767.5f, 1e9f, -32768.5f, -1e9f, 3.5f, kNaN}),
            (std::vector<int16_t>{32766, 32767, 32767, -32768, -32768, 4, 0}));
  // 2^31 - 128 is the largest F32 below 2^31; 2^31 itself is one past INT32_MAX.
  EXPECT_EQ(
      from_f32<int32_t>(DType::I32, {2147483520.0f, 0x1p31f, -0x1p31f, 1e20f, -1e20f, 16777216.0f, kNaN}),
      (std::vector<int32_t>{2147483520, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(),
                            std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(), 16777216, 0}));
  EXPECT_EQ(from_f32<int64_t>(DType::I64, {0x1p62f, std::nextafter(0x1p63f, 0.0f), 0x1p63f, -0x1p63f, 1e30f, -1e30f,
                                           -2.5f, kNaN, kInf}),
            (std::vector<int64_t>{int64_t{1} << 62, (int64_t{1} << 62) + ((int64_t{1} << 62) - (int64_t{1} << 39)),
                                  std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(),
                                  std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(), -2, 0,
                                  std::numeric_limits<int64_t>::max()}));
}

TEST(DTypeInt, BoolIsNonZero) {
  // BOOL is x != 0 as IEEE compares it: -0 is zero, any NaN compares unequal to 0 so is true
  // (as numpy and PyTorch cast it).
  EXPECT_EQ(from_f32<uint8_t>(DType::BOOL, {0.0f, -0.0f, 0.3f, -2.0f, float_of(1), kInf, -kInf, kNaN}),
            (std::vector<uint8_t>{0, 0, 1, 1, 1, 1, 1, 1}));
  EXPECT_EQ(to_f32<uint8_t>(DType::BOOL, {0, 1, 2, 255}), (std::vector<float>{0.0f, 1.0f, 1.0f, 1.0f}));
}

TEST(DTypeInt, ToF32RoundsToNearestEven) {
  EXPECT_EQ(to_f32<int8_t>(DType::I8, {-128, -1, 0, 127}), (std::vector<float>{-128.0f, -1.0f, 0.0f, 127.0f}));
  EXPECT_EQ(to_f32<uint8_t>(DType::U8, {0, 200, 255}), (std::vector<float>{0.0f, 200.0f, 255.0f}));
  EXPECT_EQ(to_f32<int16_t>(DType::I16, {-32768, 32767}), (std::vector<float>{-32768.0f, 32767.0f}));
  // Past 2^24 F32 spacing is 2: odd integers are ties and go to the multiple of 4.
  EXPECT_EQ(to_f32<int32_t>(DType::I32, {16777217, 16777219, -16777217, std::numeric_limits<int32_t>::max(),
                                         std::numeric_limits<int32_t>::min()}),
            (std::vector<float>{16777216.0f, 16777220.0f, -16777216.0f, 0x1p31f, -0x1p31f}));
  EXPECT_EQ(to_f32<int64_t>(DType::I64, {(int64_t{1} << 24) + 1, (int64_t{1} << 40) + (int64_t{1} << 16) + 1,
                                         std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()}),
            (std::vector<float>{0x1p24f, 0x1p40f + 0x1p17f, 0x1p63f, -0x1p63f}));
}

template <class Src, class Dst>
std::vector<Dst> convert_vec(DType src, const std::vector<Src>& in, DType dst) {
  std::vector<Dst> out(in.size());
  convert(src, in.data(), dst, out.data(), in.size());
  return out;
}

TEST(DTypeInt, IntegerToIntegerSaturatesWithoutF32) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max(), kMin = std::numeric_limits<int64_t>::min();
  EXPECT_EQ(
      (convert_vec<int64_t, int8_t>(DType::I64, {-1000, -129, -128, -5, 0, 127, 128, 1000, kMin, kMax}, DType::I8)),
      (std::vector<int8_t>{-128, -128, -128, -5, 0, 127, 127, 127, -128, 127}));
  EXPECT_EQ((convert_vec<int8_t, int64_t>(DType::I8, {-128, -1, 0, 127}, DType::I64)),
            (std::vector<int64_t>{-128, -1, 0, 127}));
  EXPECT_EQ((convert_vec<int64_t, uint8_t>(DType::I64, {-1, 0, 255, 256, kMax}, DType::U8)),
            (std::vector<uint8_t>{0, 0, 255, 255, 255}));
  EXPECT_EQ((convert_vec<uint8_t, int8_t>(DType::U8, {0, 127, 128, 255}, DType::I8)),
            (std::vector<int8_t>{0, 127, 127, 127}));
  // 2^24 + 1 is not an F32: a trip through F32 would lose the 1.
  EXPECT_EQ((convert_vec<int64_t, int32_t>(DType::I64, {16777217, kMax, kMin}, DType::I32)),
            (std::vector<int32_t>{16777217, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()}));
  EXPECT_EQ((convert_vec<int32_t, uint8_t>(DType::I32, {0, 5, -1}, DType::BOOL)), (std::vector<uint8_t>{0, 1, 1}));
  EXPECT_EQ((convert_vec<uint8_t, int16_t>(DType::BOOL, {0, 1, 7}, DType::I16)), (std::vector<int16_t>{0, 1, 1}));
}

TEST(DTypeInt, FloatToIntegerThroughConvert) {
  // F16 200 -> I8 saturates; 2.5 and 3.5 tie to even.
  EXPECT_EQ((convert_vec<uint16_t, int8_t>(DType::F16, {0x5a40, 0x4100, 0x4300, 0xc100, 0x7e00}, DType::I8)),
            (std::vector<int8_t>{127, 2, 4, -2, 0}));
  EXPECT_EQ((convert_vec<int32_t, uint16_t>(DType::I32, {1, -2, 70000}, DType::F16)),
            (std::vector<uint16_t>{0x3c00, 0xc000, 0x7c00}));
}

// --- Bulk conversions: misaligned buffers and the multithreaded path. ---

// Several 65,536-element chunks (the parallel path) and a ragged tail.
constexpr size_t kBulkN = (size_t{1} << 20) + 3;

template <class T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
void store(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

// Saturating round to nearest even, written from the limits' bit widths rather than the
// limits' values so it does not share a formulation with dtype.cpp.
template <class Int>
Int ref_to_int(float f) {
  if (std::isnan(f)) return 0;
  const double r = std::nearbyint(static_cast<double>(f));
  const double past_max = std::ldexp(1.0, std::numeric_limits<Int>::digits);
  const double min = std::is_signed_v<Int> ? -past_max : 0.0;
  if (r < min) return std::numeric_limits<Int>::min();
  if (r >= past_max) return std::numeric_limits<Int>::max();
  return static_cast<Int>(r);
}

// One element as the scalar API (verified exhaustively above) or the language converts it.
float scalar_to_f32(DType t, const std::byte* p) {
  switch (t) {
    case DType::F64:
      return static_cast<float>(load<double>(p));
    case DType::F32:
      return load<float>(p);
    case DType::F16:
      return f16_to_f32(load<uint16_t>(p));
    case DType::BF16:
      return bf16_to_f32(load<uint16_t>(p));
    case DType::F8_E4M3:
      return f8e4m3_to_f32(load<uint8_t>(p));
    case DType::F8_E5M2:
      return f8e5m2_to_f32(load<uint8_t>(p));
    case DType::I64:
      return static_cast<float>(load<int64_t>(p));
    case DType::I32:
      return static_cast<float>(load<int32_t>(p));
    case DType::I16:
      return static_cast<float>(load<int16_t>(p));
    case DType::I8:
      return static_cast<float>(load<int8_t>(p));
    case DType::U8:
      return static_cast<float>(load<uint8_t>(p));
    case DType::BOOL:
      return load<uint8_t>(p) != 0 ? 1.0f : 0.0f;
  }
  return kNaN;
}

void scalar_from_f32(float f, DType t, std::byte* p) {
  switch (t) {
    case DType::F64:
      return store<double>(p, f);
    case DType::F32:
      return store<float>(p, f);
    case DType::F16:
      return store<uint16_t>(p, f32_to_f16(f));
    case DType::BF16:
      return store<uint16_t>(p, f32_to_bf16(f));
    case DType::F8_E4M3:
      return store<uint8_t>(p, f32_to_f8e4m3(f));
    case DType::F8_E5M2:
      return store<uint8_t>(p, f32_to_f8e5m2(f));
    case DType::I64:
      return store<int64_t>(p, ref_to_int<int64_t>(f));
    case DType::I32:
      return store<int32_t>(p, ref_to_int<int32_t>(f));
    case DType::I16:
      return store<int16_t>(p, ref_to_int<int16_t>(f));
    case DType::I8:
      return store<int8_t>(p, ref_to_int<int8_t>(f));
    case DType::U8:
      return store<uint8_t>(p, ref_to_int<uint8_t>(f));
    case DType::BOOL:
      return store<uint8_t>(p, f != 0.0f ? 1 : 0);
  }
}

// n elements of type t, starting one byte into the allocation so that no element is aligned.
// Types of 16 bits or less cycle through every bit pattern; wider ones mix random bits (NaN,
// Inf, subnormals, huge) with values of moderate size so that rounding, not saturation, is
// what most elements exercise.
std::vector<std::byte> misaligned_input(DType t, size_t n) {
  const size_t sz = dtype_size(t);
  std::vector<std::byte> buf(n * sz + 1);
  std::byte* base = buf.data() + 1;
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (size_t i = 0; i < n; ++i) {
    std::byte* p = base + i * sz;
    const bool random_bits = i % 2 == 0;
    const double moderate = normal(rng) * std::ldexp(1.0, static_cast<int>(i % 40) - 8);
    switch (t) {
      case DType::F64:
        store<double>(p, random_bits ? std::bit_cast<double>(rng()) : moderate);
        break;
      case DType::F32:
        store<float>(p, random_bits ? float_of(static_cast<uint32_t>(rng())) : static_cast<float>(moderate));
        break;
      case DType::I64:
        store<int64_t>(p, random_bits ? static_cast<int64_t>(rng()) : static_cast<int64_t>(moderate));
        break;
      case DType::I32:
        store<int32_t>(p, random_bits ? static_cast<int32_t>(rng()) : static_cast<int32_t>(moderate));
        break;
      case DType::F16:
      case DType::BF16:
      case DType::I16:
        store<uint16_t>(p, static_cast<uint16_t>(i));
        break;
      default:
        store<uint8_t>(p, static_cast<uint8_t>(i));
        break;
    }
  }
  return buf;
}

// F32 inputs: half random bit patterns, half moderate values spread over many binades.
std::vector<float> bulk_f32_input(size_t n) {
  std::vector<float> in(n);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (size_t i = 0; i < n; ++i)
    in[i] =
        i % 2 == 0 ? float_of(static_cast<uint32_t>(rng())) : std::ldexp(normal(rng), static_cast<int>(i % 48) - 24);
  return in;
}

void check_bulk_to_f32(DType t, size_t n) {
  const std::vector<std::byte> buf = misaligned_input(t, n);
  const std::byte* in = buf.data() + 1;
  std::vector<float> out(n, -1.0f);
  convert_to_f32(t, in, out.data(), n);
  int reported = 0;
  for (size_t i = 0; i < n && reported < kMaxReported; ++i) {
    const auto ok = same_float(out[i], scalar_to_f32(t, in + i * dtype_size(t)));
    if (!ok) {
      ADD_FAILURE() << dtype_name(t) << " element " << i << " of " << n << ": " << ok.message();
      ++reported;
    }
  }
}

void check_bulk_from_f32(DType t, size_t n) {
  const std::vector<float> in = bulk_f32_input(n);
  const size_t sz = dtype_size(t);
  std::vector<std::byte> buf(n * sz + 1, std::byte{0xa5});
  std::byte* out = buf.data() + 1;
  convert_from_f32(in.data(), t, out, n);
  EXPECT_EQ(buf[0], std::byte{0xa5}) << "wrote before the buffer";
  int reported = 0;
  for (size_t i = 0; i < n && reported < kMaxReported; ++i) {
    std::byte want[8];
    scalar_from_f32(in[i], t, want);
    const std::byte* got = out + i * sz;
    // NaN widened to F64 need only stay NaN with its sign; every other result is exact bits.
    const bool ok = t == DType::F64 && std::isnan(in[i])
                        ? std::isnan(load<double>(got)) && std::signbit(load<double>(got)) == std::signbit(in[i])
                        : std::memcmp(got, want, sz) == 0;
    if (!ok) {
      ADD_FAILURE() << dtype_name(t) << " element " << i << " of " << n << " from " << describe(in[i]);
      ++reported;
    }
  }
}

TEST(DTypeBulk, ToF32MatchesScalarMisalignedAndParallel) {
  for (DType t : kAllDTypes) {
    SCOPED_TRACE(std::string(dtype_name(t)));
    check_bulk_to_f32(t, kBulkN);
    check_bulk_to_f32(t, 7);  // a single chunk, converted on the calling thread
  }
}

TEST(DTypeBulk, FromF32MatchesScalarMisalignedAndParallel) {
  for (DType t : kAllDTypes) {
    SCOPED_TRACE(std::string(dtype_name(t)));
    check_bulk_from_f32(t, kBulkN);
    check_bulk_from_f32(t, 7);
  }
}

TEST(DTypeBulk, EmptyConversionWritesNothing) {
  const float in = 1.0f;
  float out = -1.0f;
  convert_to_f32(DType::F16, &in, &out, 0);
  convert_from_f32(&in, DType::F16, &out, 0);
  EXPECT_EQ(out, -1.0f);
}

TEST(DTypeBulk, FloatToFloatThroughF32Buffer) {
  // convert() between two non-F32 float types goes through a staging buffer per chunk; each
  // element must still equal the two scalar steps.
  const std::vector<std::byte> buf = misaligned_input(DType::F16, kBulkN);
  std::vector<std::byte> out(kBulkN + 1);
  convert(DType::F16, buf.data() + 1, DType::F8_E4M3, out.data() + 1, kBulkN);
  int reported = 0;
  for (size_t i = 0; i < kBulkN && reported < kMaxReported; ++i) {
    const uint16_t h = load<uint16_t>(buf.data() + 1 + 2 * i);
    const uint8_t want = f32_to_f8e4m3(f16_to_f32(h));
    const uint8_t got = load<uint8_t>(out.data() + 1 + i);
    if (got != want) {
      ADD_FAILURE() << "F16 " << hex(h) << " -> F8_E4M3 at " << i << ": got " << hex(got) << ", want " << hex(want);
      ++reported;
    }
  }
}

// --- Names and sizes. ---

TEST(DTypeNames, SizesAndNames) {
  struct Expected {
    DType t;
    size_t size;
    const char* name;
    bool floating;
  };
  const Expected table[] = {
      {DType::F64, 8, "F64", true},   {DType::F32, 4, "F32", true},         {DType::F16, 2, "F16", true},
      {DType::BF16, 2, "BF16", true}, {DType::F8_E4M3, 1, "F8_E4M3", true}, {DType::F8_E5M2, 1, "F8_E5M2", true},
      {DType::I64, 8, "I64", false},  {DType::I32, 4, "I32", false},        {DType::I16, 2, "I16", false},
      {DType::I8, 1, "I8", false},    {DType::U8, 1, "U8", false},          {DType::BOOL, 1, "BOOL", false}};
  for (const Expected& e : table) {
    EXPECT_EQ(dtype_size(e.t), e.size) << e.name;
    EXPECT_EQ(dtype_name(e.t), e.name);
    EXPECT_EQ(is_floating(e.t), e.floating) << e.name;
  }
  // kAllDTypes must list each type exactly once.
  std::set<DType> all(std::begin(kAllDTypes), std::end(kAllDTypes));
  EXPECT_EQ(all.size(), std::size(table));
  EXPECT_EQ(std::size(kAllDTypes), std::size(table));
  for (const Expected& e : table) EXPECT_TRUE(all.count(e.t)) << e.name;
}

TEST(DTypeNames, ParseRoundTrips) {
  for (DType t : kAllDTypes) {
    const std::optional<DType> parsed = parse_dtype(dtype_name(t));
    ASSERT_TRUE(parsed.has_value()) << dtype_name(t);
    EXPECT_EQ(*parsed, t) << dtype_name(t);
  }
  EXPECT_EQ(parse_dtype("F31"), std::nullopt);
  EXPECT_EQ(parse_dtype(""), std::nullopt);
  EXPECT_EQ(parse_dtype("F3"), std::nullopt);
}

// The checked conversions the merge streams use: the same values as convert_to_f32 /
// convert_from_f32, and "all finite" exactly when std::isfinite holds for every value as
// converted (to F32) or as stored (read back from the narrow type), for every bit pattern
// of the 8- and 16-bit float types one at a time, and in bulk.
TEST(DTypeBulk, CheckedConversionsFlagExactlyTheNonFiniteValues) {
  for (const DType t : {DType::BF16, DType::F16, DType::F8_E4M3, DType::F8_E5M2}) {
    const size_t size = dtype_size(t), patterns = size_t{1} << (8 * size);
    std::vector<std::byte> all(patterns * size);
    for (size_t p = 0; p < patterns; ++p) std::memcpy(all.data() + p * size, &p, size);  // little endian
    std::vector<float> want(patterns), got(patterns);
    convert_to_f32(t, all.data(), want.data(), patterns);
    bool any_bad = false;
    for (size_t p = 0; p < patterns; ++p) {
      const bool finite = to_f32_checked(t, all.data() + p * size, got.data() + p, 1);
      ASSERT_EQ(finite, std::isfinite(want[p])) << dtype_name(t) << " pattern " << p;
      ASSERT_EQ(std::bit_cast<uint32_t>(got[p]), std::bit_cast<uint32_t>(want[p])) << dtype_name(t) << " " << p;
      any_bad |= !finite;
    }
    EXPECT_TRUE(any_bad) << dtype_name(t);
    EXPECT_FALSE(to_f32_checked(t, all.data(), got.data(), patterns)) << dtype_name(t);
  }
  // Stored values: F32 inputs that are finite but overflow the narrow type count as not finite.
  const std::vector<float> values = {0.0f,
                                     -1.5f,
                                     65504.0f,
                                     65520.0f,
                                     70000.0f,
                                     448.0f,
                                     465.0f,
                                     57344.0f,
                                     61440.0f,
                                     3.0e38f,
                                     std::numeric_limits<float>::max(),
                                     1e-40f,
                                     std::numeric_limits<float>::infinity(),
                                     std::nanf("")};
  for (const DType t : kAllDTypes) {
    const size_t size = dtype_size(t);
    for (const float v : values) {
      std::vector<std::byte> want(size), got(size);
      convert_from_f32(&v, t, want.data(), 1);
      const bool finite = from_f32_checked(&v, t, got.data(), 1);
      float back = 0;
      convert_to_f32(t, want.data(), &back, 1);
      EXPECT_EQ(finite, !is_floating(t) || std::isfinite(back)) << dtype_name(t) << " " << v;
      EXPECT_TRUE(got == want) << dtype_name(t) << " " << v;
    }
  }
}

// Buffers of 4 MB and more start on a 2 MB boundary (so the kernel can back them with huge
// pages), also when they come back from the buffer cache; zeros() still zeroes a reused one.
TEST(TensorBuffers, LargeBuffersStartOnHugePageBoundaries) {
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  for (int round = 0; round < 2; ++round) {
    Tensor big = Tensor::uninitialized(DType::F32, {5 << 20});  // 20 MB
    EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data<float>().data()) % kHugePage, 0u) << round;
    std::fill(big.mutable_data<float>().begin(), big.mutable_data<float>().end(), 7.0f);
  }
  const Tensor zeros = Tensor::zeros(DType::F32, {5 << 20});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(zeros.data<float>().data()) % kHugePage, 0u);
  const auto values = zeros.data<float>();
  EXPECT_TRUE(std::all_of(values.begin(), values.end(), [](float v) { return v == 0.0f; }));
  const Tensor small = Tensor::uninitialized(DType::F32, {1000});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data<float>().data()) % 64, 0u);
}

}  // namespace
}  // namespace amalgam
