// Drawing helpers shared by the zoo's image generators: a seeded random source, seed
// derivation, libm-free sine and cosine, a 28x28 float canvas, anti-aliased painting of
// signed distance fields, and the parallel loop that renders a split.
//
// Determinism: every image draws from its own generator, seeded from (task seed, split,
// image index), so the bytes do not depend on threads or chunking. Only +, -, *, /, sqrt and
// floor touch the pixels (all exact or correctly rounded in IEEE arithmetic); sine and cosine
// are computed here rather than by libm, whose results vary between versions and between the
// code paths it picks per CPU. Random draws are always made in separate statements, because
// the order in which a function's arguments are evaluated is unspecified.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/interrupt.h"
#include "core/parallel.h"
#include "core/tensor.h"
#include "data/task.h"

namespace amalgam::zoo {

inline constexpr int kSide = 28;
inline constexpr int kPixels = kSide * kSide;
inline constexpr double kPi = 3.14159265358979323846;

// A hash of (seed, tag, index): independent streams for tasks, splits and images.
uint64_t derive_seed(uint64_t seed, std::string_view tag, uint64_t index = 0);

// sin and cos from +, -, * only (Cody-Waite reduction, Taylor polynomials): accurate to a few
// units in the last place for |x| < 1e5, and the same bits on every machine.
double det_sin(double x);
double det_cos(double x);

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  uint64_t next() { return gen_.next(); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform in [0, n), n > 0.
  int64_t below(int64_t n) { return static_cast<int64_t>(gen_.below(static_cast<uint64_t>(n))); }
  bool coin(double p = 0.5) { return uniform() < p; }
  // Approximately standard normal: the Irwin-Hall sum of four uniforms, bounded at +-3.46.
  double normal();

 private:
  SplitMix64 gen_;
};

// A random permutation of [0, n) (Fisher-Yates).
std::vector<int64_t> permutation(int64_t n, uint64_t seed);
// n labels, each of `classes` classes n / classes or n / classes + 1 times, in seeded order.
std::vector<int64_t> balanced_labels(int64_t n, int64_t classes, uint64_t seed);

struct Vec2 {
  double x = 0, y = 0;
};
inline Vec2 operator+(Vec2 a, Vec2 b) {
  return {a.x + b.x, a.y + b.y};
}
inline Vec2 operator-(Vec2 a, Vec2 b) {
  return {a.x - b.x, a.y - b.y};
}
inline Vec2 operator*(Vec2 a, double s) {
  return {a.x * s, a.y * s};
}
inline double dot(Vec2 a, Vec2 b) {
  return a.x * b.x + a.y * b.y;
}
inline double length(Vec2 a) {
  return std::sqrt(dot(a, a));
}
// `a` turned by the angle whose cosine and sine are c and s.
inline Vec2 rotate(Vec2 a, double c, double s) {
  return {c * a.x - s * a.y, s * a.x + c * a.y};
}
// The unit vector at `angle` radians.
inline Vec2 direction(double angle) {
  return {det_cos(angle), det_sin(angle)};
}

// Image coordinates: x is the column, y the row (downwards); pixel (r, c) is the unit square
// [c, c + 1) x [r, r + 1), its centre at (c + 0.5, r + 0.5).
inline Vec2 pixel_centre(int r, int c) {
  return {c + 0.5, r + 0.5};
}

// Intensities in [0, 1], row-major; quantised to bytes at the end.
using Canvas = std::array<float, kPixels>;

void fill(Canvas& canvas, double value);
// Adds independent noise of standard deviation `sigma` to every pixel.
void add_noise(Canvas& canvas, double sigma, Rng& rng);
// Clamps to [0, 1] and rounds to bytes.
void quantize(const Canvas& canvas, std::span<uint8_t> out);

// The fraction of a pixel covered by a shape whose signed distance (negative inside, in
// pixels) at the pixel's centre is `sdf`: a one-pixel ramp, cheap anti-aliasing.
inline double coverage(double sdf) {
  return std::clamp(0.5 - sdf, 0.0, 1.0);
}

// Blends `value` into the canvas where sdf(p) < 0, or, with outline > 0, along a band of that
// width centred on the shape's boundary.
template <class Sdf>
void paint(Canvas& canvas, const Sdf& sdf, double value, double outline = 0) {
  for (int r = 0; r < kSide; ++r)
    for (int c = 0; c < kSide; ++c) {
      double d = sdf(pixel_centre(r, c));
      if (outline > 0) d = std::abs(d) - 0.5 * outline;
      const double a = coverage(d);
      float& px = canvas[static_cast<size_t>(r * kSide + c)];
      if (a > 0) px = static_cast<float>(px + (value - px) * a);
    }
}

// Signed distance from p to a simple polygon (even-odd inside test).
double polygon_sdf(std::span<const Vec2> polygon, Vec2 p);
// Distance from p to the segment [a, b].
double segment_distance(Vec2 a, Vec2 b, Vec2 p);
// A regular n-gon around `centre` with circumradius r, first vertex at angle `rotation`.
std::vector<Vec2> regular_polygon(Vec2 centre, double r, int n, double rotation);
// A star of `points` tips (radius r) and as many notches (radius inner).
std::vector<Vec2> star_polygon(Vec2 centre, double r, double inner, int points, double rotation);

// Renders n images of 28x28x1 bytes on all cores: each chunk of images calls make_state()
// once (per-thread resources such as a FreeType library), then draw(state, i, canvas) for
// each of its images on a canvas the draw function fills whole.
template <class MakeState, class Draw>
Tensor render_images(int64_t n, const MakeState& make_state, const Draw& draw) {
  Tensor images = Tensor::zeros(DType::U8, {n, kSide, kSide, 1});
  const std::span<uint8_t> out = images.mutable_data<uint8_t>();
  constexpr int64_t kChunk = 64;
  parallel_for(static_cast<size_t>((n + kChunk - 1) / kChunk), [&](size_t chunk) {
    check_interrupt();
    auto state = make_state();
    Canvas canvas;
    const int64_t end = std::min(n, static_cast<int64_t>(chunk + 1) * kChunk);
    for (int64_t i = static_cast<int64_t>(chunk) * kChunk; i < end; ++i) {
      draw(state, i, canvas);
      quantize(canvas, out.subspan(static_cast<size_t>(i) * kPixels, kPixels));
    }
  });
  return images;
}

// A function drawing an image of class `label` from its generator.
using DrawFn = void (*)(int64_t label, Rng& rng, Canvas& canvas);

// A split of n images with balanced labels, image i drawn from derive_seed(seed, split, i).
TaskSplit generate_split(const std::string& split, int64_t n, int64_t classes, uint64_t seed, DrawFn draw);

}  // namespace amalgam::zoo
