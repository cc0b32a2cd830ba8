#include "zoo/raster.h"

namespace amalgam::zoo {

namespace {

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// pi/2 split in two (fdlibm's pio2_1 and pio2_1t): the first has 33 significant bits, so
// k * kPio2Hi is exact for the |k| < 2^20 this file meets.
constexpr double kPio2Hi = 1.57079632673412561417e+00;
constexpr double kPio2Lo = 6.07710050650619224932e-11;
constexpr double kTwoOverPi = 0.63661977236758134308;

// Taylor series on |r| <= pi/4; the first omitted terms are below 1e-16.
double sin_poly(double r) {
  const double r2 = r * r;
  const double p =
      -1.0 / 6 +
      r2 * (1.0 / 120 +
            r2 * (-1.0 / 5040 + r2 * (1.0 / 362880 +
                                      r2 * (-1.0 / 39916800 + r2 * (1.0 / 6227020800 + r2 * (-1.0 / 1307674368000))))));
  return r + r * r2 * p;
}

double cos_poly(double r) {
  const double r2 = r * r;
  const double p =
      1.0 / 24 +
      r2 * (-1.0 / 720 +
            r2 * (1.0 / 40320 + r2 * (-1.0 / 3628800 + r2 * (1.0 / 479001600 + r2 * (-1.0 / 87178291200 +
                                                                                     r2 * (1.0 / 20922789888000))))));
  return 1.0 - 0.5 * r2 + r2 * r2 * p;
}

// x = k * pi/2 + r with |r| <= pi/4; returns r and the quadrant k mod 4.
double reduce(double x, int& quadrant) {
  const double k = std::floor(x * kTwoOverPi + 0.5);
  quadrant = static_cast<int>(static_cast<int64_t>(k) & 3);
  return (x - k * kPio2Hi) - k * kPio2Lo;
}

}  // namespace

uint64_t derive_seed(uint64_t seed, std::string_view tag, uint64_t index) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a of the tag
  for (const char c : tag) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return mix64(mix64(seed ^ h) + (index + 1) * 0x9e3779b97f4a7c15ULL);
}

double det_sin(double x) {
  int q = 0;
  const double r = reduce(x, q);
  switch (q) {
    case 0:
      return sin_poly(r);
    case 1:
      return cos_poly(r);
    case 2:
      return -sin_poly(r);
    default:
      return -cos_poly(r);
  }
}

double det_cos(double x) {
  int q = 0;
  const double r = reduce(x, q);
  switch (q) {
    case 0:
      return cos_poly(r);
    case 1:
      return -sin_poly(r);
    case 2:
      return -cos_poly(r);
    default:
      return sin_poly(r);
  }
}

double Rng::normal() {
  double sum = uniform();
  sum += uniform();
  sum += uniform();
  sum += uniform();
  // The sum has mean 2 and variance 1/3.
  return (sum - 2.0) * 1.7320508075688772;
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  SplitMix64 rng(seed);
  return amalgam::permutation(n, rng);
}

std::vector<int64_t> balanced_labels(int64_t n, int64_t classes, uint64_t seed) {
  std::vector<int64_t> labels(static_cast<size_t>(n));
  const std::vector<int64_t> order = permutation(n, seed);
  for (int64_t i = 0; i < n; ++i) labels[static_cast<size_t>(order[static_cast<size_t>(i)])] = i % classes;
  return labels;
}

void fill(Canvas& canvas, double value) {
  canvas.fill(static_cast<float>(value));
}

void add_noise(Canvas& canvas, double sigma, Rng& rng) {
  for (float& px : canvas) px = static_cast<float>(px + sigma * rng.normal());
}

void quantize(const Canvas& canvas, std::span<uint8_t> out) {
  for (size_t i = 0; i < canvas.size(); ++i) {
    const double v = std::clamp(static_cast<double>(canvas[i]), 0.0, 1.0);
    out[i] = static_cast<uint8_t>(v * 255.0 + 0.5);
  }
}

double segment_distance(Vec2 a, Vec2 b, Vec2 p) {
  const Vec2 e = b - a, w = p - a;
  const double ee = dot(e, e);
  const double t = ee > 0 ? std::clamp(dot(w, e) / ee, 0.0, 1.0) : 0.0;
  return length(w - e * t);
}

double polygon_sdf(std::span<const Vec2> polygon, Vec2 p) {
  double d = 1e30;
  bool inside = false;
  for (size_t i = 0, j = polygon.size() - 1; i < polygon.size(); j = i++) {
    const Vec2 a = polygon[j], b = polygon[i];
    d = std::min(d, segment_distance(a, b, p));
    if ((b.y > p.y) != (a.y > p.y) && p.x < (a.x - b.x) * (p.y - b.y) / (a.y - b.y) + b.x) inside = !inside;
  }
  return inside ? -d : d;
}

std::vector<Vec2> regular_polygon(Vec2 centre, double r, int n, double rotation) {
  std::vector<Vec2> v;
  for (int k = 0; k < n; ++k) v.push_back(centre + direction(rotation + 2 * kPi * k / n) * r);
  return v;
}

std::vector<Vec2> star_polygon(Vec2 centre, double r, double inner, int points, double rotation) {
  std::vector<Vec2> v;
  for (int k = 0; k < 2 * points; ++k)
    v.push_back(centre + direction(rotation + kPi * k / points) * (k % 2 ? inner : r));
  return v;
}

TaskSplit generate_split(const std::string& split, int64_t n, int64_t classes, uint64_t seed, DrawFn draw) {
  TaskSplit out;
  out.name = split;
  const uint64_t split_seed = derive_seed(seed, split);
  out.labels = balanced_labels(n, classes, derive_seed(split_seed, "labels"));
  const auto stateless = [] { return 0; };
  out.images = render_images(n, stateless, [&](int, int64_t i, Canvas& canvas) {
    Rng rng(derive_seed(split_seed, "image", static_cast<uint64_t>(i)));
    draw(out.labels[static_cast<size_t>(i)], rng, canvas);
  });
  return out;
}

}  // namespace amalgam::zoo
