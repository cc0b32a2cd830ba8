// Elementwise functions of the transformer (exp for softmax, the GELU family), written so
// that the compiler vectorises the loops that call them (floor and the float -> int
// conversion need -fno-trapping-math for that): libm's expf and erff are scalar
// calls, and at a ViT's sizes the MLP activation would otherwise cost a sixth of the
// forward. Accuracy: a few float ulps for exp, 2e-7 absolute for erf, far below what a
// float forward resolves.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace amalgam {

// e^x for x in float range, by 2^n * e^r with |r| <= ln2/2 and a degree-6 Taylor polynomial.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::floor(x * 1.44269504089f + 0.5f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  const float scale = std::bit_cast<float>(static_cast<int32_t>(n + 127.0f) << 23);
  return p * scale;
}

// Abramowitz & Stegun 7.1.26.
inline float erf_approx(float x) {
  const float ax = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  const float poly =
      t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float y = 1.0f - poly * exp_approx(-ax * ax);
  return std::copysign(y, x);
}

inline float tanh_approx(float x) {
  return 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f);
}

// The activations the families use, named as config.json names them.
enum class Activation { QuickGelu, Gelu, GeluTanh, Silu };

// The same formulas for float (the approximations above, which vectorise) and double (libm,
// exact: the training ops' finite-difference checks run in double).
template <class T>
T exp_of(T x) {
  if constexpr (std::is_same_v<T, float>)
    return exp_approx(x);
  else
    return std::exp(x);
}
template <class T>
T erf_of(T x) {
  if constexpr (std::is_same_v<T, float>)
    return erf_approx(x);
  else
    return std::erf(x);
}
template <class T>
T tanh_of(T x) {
  if constexpr (std::is_same_v<T, float>)
    return tanh_approx(x);
  else
    return std::tanh(x);
}

inline constexpr double kSqrtHalf = 0.70710678118654752;
inline constexpr double kTanhScale = 0.79788456080286536;  // sqrt(2 / pi)

// The activation is a template argument so that each elementwise loop has a branch-free
// body the compiler vectorises (with -fno-trapping-math, see CMakeLists.txt); scalar, the
// MLP's activation took a sixth of a ViT's forward. QuickGelu is CLIP's original x *
// sigmoid(1.702 x); Gelu Hugging Face's "gelu" (the erf form); GeluTanh "gelu_new" /
// "gelu_pytorch_tanh"; Silu Llama's x * sigmoid(x).
template <Activation A, class T>
T activation_value(T x) {
  if constexpr (A == Activation::QuickGelu)
    return x / (T(1) + exp_of<T>(T(-1.702) * x));
  else if constexpr (A == Activation::Gelu)
    return T(0.5) * x * (T(1) + erf_of<T>(x * T(kSqrtHalf)));
  else if constexpr (A == Activation::GeluTanh)
    return T(0.5) * x * (T(1) + tanh_of<T>(T(kTanhScale) * (x + T(0.044715) * x * x * x)));
  else
    return x / (T(1) + exp_of<T>(-x));
}

// Calls body(std::integral_constant<Activation, act>{}), so that the activation is a
// compile-time constant inside it.
template <class Body>
void with_activation(Activation act, Body&& body) {
  switch (act) {
    case Activation::QuickGelu:
      return body(std::integral_constant<Activation, Activation::QuickGelu>{});
    case Activation::Gelu:
      return body(std::integral_constant<Activation, Activation::Gelu>{});
    case Activation::GeluTanh:
      return body(std::integral_constant<Activation, Activation::GeluTanh>{});
    case Activation::Silu:
      return body(std::integral_constant<Activation, Activation::Silu>{});
  }
}

}  // namespace amalgam
