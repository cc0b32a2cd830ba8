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

// CLIP's original activation: x * sigmoid(1.702 x).
inline float quick_gelu(float x) {
  return x / (1.0f + exp_approx(-1.702f * x));
}
// Hugging Face "gelu": the exact (erf) form.
inline float gelu_erf(float x) {
  return 0.5f * x * (1.0f + erf_approx(x * 0.70710678118654752f));
}
// Hugging Face "gelu_new" / "gelu_pytorch_tanh".
inline float gelu_tanh(float x) {
  return 0.5f * x * (1.0f + tanh_approx(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}

// Llama's MLP activation (SiLU, "swish"): x * sigmoid(x).
inline float silu(float x) {
  return x / (1.0f + exp_approx(-x));
}

}  // namespace amalgam
