#include "zoo/procedural.h"

#include <algorithm>
#include <cmath>

namespace amalgam::zoo {

namespace {

constexpr Vec2 kCentre{kSide / 2.0, kSide / 2.0};

double frac(double x) {
  return x - std::floor(x);
}

void paint_polygon(Canvas& canvas, const std::vector<Vec2>& polygon, double value, double outline) {
  paint(
      canvas, [&](Vec2 p) { return polygon_sdf(polygon, p); }, value, outline);
}

// ---------------------------------------------------------------------------------------
// shapes

enum Shape { kCircle, kTriangle, kSquare, kPentagon, kHexagon, kStar, kCross, kCrescent };

// A plus sign of half-length r and half-width arm.
std::vector<Vec2> cross_polygon(Vec2 centre, double r, double arm, double rotation) {
  const Vec2 corners[] = {{arm, r},   {arm, arm},   {r, arm},   {r, -arm}, {arm, -arm}, {arm, -r},
                          {-arm, -r}, {-arm, -arm}, {-r, -arm}, {-r, arm}, {-arm, arm}, {-arm, r}};
  const double c = det_cos(rotation), s = det_sin(rotation);
  std::vector<Vec2> v;
  for (const Vec2& corner : corners) v.push_back(centre + rotate(corner, c, s));
  return v;
}

void draw_shape(int64_t label, Rng& rng, Canvas& canvas) {
  const double bg = rng.uniform(0.0, 0.3);
  const double fg = rng.uniform(0.65, 1.0);
  const double r = rng.uniform(7.0, 12.0);
  const double x = rng.uniform(r + 1, kSide - r - 1);
  const double y = rng.uniform(r + 1, kSide - r - 1);
  const double rotation = rng.uniform(0.0, 2 * kPi);
  const double outline = rng.coin() ? 0.0 : rng.uniform(1.5, 3.0);
  const double noise = rng.uniform(0.0, 0.06);
  const Vec2 c{x, y};
  fill(canvas, bg);
  switch (label) {
    case kCircle:
      paint(
          canvas, [&](Vec2 p) { return length(p - c) - r; }, fg, outline);
      break;
    case kTriangle:
    case kSquare:
    case kPentagon:
    case kHexagon:
      paint_polygon(canvas, regular_polygon(c, r, static_cast<int>(label) + 2, rotation), fg, outline);
      break;
    case kStar: {
      const double inner = rng.uniform(0.38, 0.5) * r;
      paint_polygon(canvas, star_polygon(c, r, inner, 5, rotation), fg, outline);
      break;
    }
    case kCross: {
      const double arm = rng.uniform(0.22, 0.34) * r;
      paint_polygon(canvas, cross_polygon(c, r, arm, rotation), fg, outline);
      break;
    }
    default: {  // kCrescent: the disc minus a smaller disc shifted towards `rotation`
      const Vec2 bite = c + direction(rotation) * (0.5 * r);
      const double bite_r = 0.8 * r;
      paint(
          canvas, [&](Vec2 p) { return std::max(length(p - c) - r, bite_r - length(p - bite)); }, fg, outline);
    }
  }
  add_noise(canvas, noise, rng);
}

// ---------------------------------------------------------------------------------------
// gratings

void draw_grating(int64_t label, Rng& rng, Canvas& canvas) {
  const double jitter = rng.uniform(-kGratingJitterDegrees, kGratingJitterDegrees);
  const double period = rng.uniform(4.0, 10.0);
  const double phase = rng.uniform(0.0, 2 * kPi);
  const double contrast = rng.uniform(0.15, 0.45);
  const double mean = rng.uniform(0.35, 0.65);
  const double noise = rng.uniform(0.0, 0.08);
  const Vec2 wave = direction((22.5 * static_cast<double>(label) + jitter) * kPi / 180) * (2 * kPi / period);
  for (int r = 0; r < kSide; ++r)
    for (int c = 0; c < kSide; ++c)
      canvas[static_cast<size_t>(r * kSide + c)] =
          static_cast<float>(mean + contrast * det_sin(dot(wave, pixel_centre(r, c) - kCentre) + phase));
  add_noise(canvas, noise, rng);
}

// ---------------------------------------------------------------------------------------
// count

struct Dot {
  Vec2 centre;
  double r = 0;
};

bool fits(const std::vector<Dot>& dots, const Dot& d) {
  for (const Dot& o : dots)
    if (length(o.centre - d.centre) < o.r + d.r + kDotGap) return false;
  return true;
}

// n dots at least kDotGap apart. Random sequential placement can jam when the dots are
// large, so after a failed attempt the largest radius shrinks and placement starts over.
std::vector<Dot> place_dots(int64_t n, Rng& rng) {
  constexpr double kMinR = 1.5;
  double max_r = 3.6 - 0.2 * static_cast<double>(n - 1);
  for (;;) {
    std::vector<Dot> dots;
    for (int tries = 0; tries < 200 && static_cast<int64_t>(dots.size()) < n; ++tries) {
      Dot d;
      d.r = rng.uniform(kMinR, std::max(kMinR, max_r));
      d.centre.x = rng.uniform(d.r + 1, kSide - d.r - 1);
      d.centre.y = rng.uniform(d.r + 1, kSide - d.r - 1);
      if (fits(dots, d)) dots.push_back(d);
    }
    if (static_cast<int64_t>(dots.size()) == n) return dots;
    max_r *= 0.9;
  }
}

void draw_count(int64_t label, Rng& rng, Canvas& canvas) {
  // Bounded intensities and noise keep every dot's centre above mid-grey and the background
  // below it, so the dots stay countable by thresholding.
  const double bg = rng.uniform(0.0, 0.25);
  const double fg = rng.uniform(0.7, 1.0);
  const double noise = rng.uniform(0.0, 0.04);
  const std::vector<Dot> dots = place_dots(label + 1, rng);
  fill(canvas, bg);
  paint(
      canvas,
      [&](Vec2 p) {
        double d = 1e30;
        for (const Dot& dot : dots) d = std::min(d, length(p - dot.centre) - dot.r);
        return d;
      },
      fg);
  add_noise(canvas, noise, rng);
}

// ---------------------------------------------------------------------------------------
// textures

enum Texture { kChecker, kStripes, kDots, kWaves, kFineNoise, kCoarseNoise, kRings, kGrid };

// mean + contrast * f, f in [-1, 1] averaged over 2x2 samples per pixel (anti-aliasing the
// hard-edged families).
template <class F>
void shade(Canvas& canvas, const F& f, double mean, double contrast) {
  for (int r = 0; r < kSide; ++r)
    for (int c = 0; c < kSide; ++c) {
      double sum = 0;
      for (const double dy : {0.25, 0.75})
        for (const double dx : {0.25, 0.75}) sum += f(Vec2{c + dx, r + dy});
      canvas[static_cast<size_t>(r * kSide + c)] = static_cast<float>(mean + contrast * 0.25 * sum);
    }
}

// Smoothly interpolated random values on a lattice of cell `cell` pixels ("value noise").
class ValueNoise {
 public:
  ValueNoise(double cell, Rng& rng) : cell_(cell) {
    n_ = static_cast<int>(kSide / cell) + 3;
    const double ox = rng.uniform();
    const double oy = rng.uniform();
    offset_ = {ox, oy};
    for (int i = 0; i < n_ * n_; ++i) values_.push_back(rng.uniform(-1.0, 1.0));
  }
  double operator()(Vec2 p) const {
    const Vec2 q = p * (1 / cell_) + offset_;
    const int ix = static_cast<int>(q.x), iy = static_cast<int>(q.y);
    const double fx = smooth(q.x - ix), fy = smooth(q.y - iy);
    const double top = at(ix, iy) + (at(ix + 1, iy) - at(ix, iy)) * fx;
    const double bottom = at(ix, iy + 1) + (at(ix + 1, iy + 1) - at(ix, iy + 1)) * fx;
    return top + (bottom - top) * fy;
  }

 private:
  static double smooth(double t) { return t * t * (3 - 2 * t); }
  double at(int x, int y) const { return values_[static_cast<size_t>(std::min(y, n_ - 1) * n_ + std::min(x, n_ - 1))]; }

  double cell_;
  int n_ = 0;
  Vec2 offset_;
  std::vector<double> values_;
};

// Draws family `family` over the whole canvas.
void draw_texture_family(int64_t family, double mean, double contrast, Rng& rng, Canvas& canvas) {
  const double angle = rng.uniform(0.0, kPi);
  const double ox = rng.uniform(0.0, kSide);
  const double oy = rng.uniform(0.0, kSide);
  const Vec2 origin{ox, oy};
  const double c = det_cos(angle), s = det_sin(angle);
  // Coordinates along and across the pattern's axes.
  const auto uv = [=](Vec2 p) { return rotate(p - origin, c, -s); };
  switch (family) {
    case kChecker: {
      const double cell = rng.uniform(3.0, 7.0);
      shade(
          canvas,
          [&](Vec2 p) {
            const Vec2 q = uv(p) * (1 / cell);
            return (static_cast<int64_t>(std::floor(q.x) + std::floor(q.y)) & 1) ? 1.0 : -1.0;
          },
          mean, contrast);
      break;
    }
    case kStripes: {
      const double period = rng.uniform(3.5, 8.0);
      const double duty = rng.uniform(0.35, 0.65);
      shade(
          canvas, [&](Vec2 p) { return frac(uv(p).x / period) < duty ? 1.0 : -1.0; }, mean, contrast);
      break;
    }
    case kDots: {
      const double spacing = rng.uniform(4.5, 8.0);
      const double radius = rng.uniform(0.22, 0.35) * spacing;
      shade(
          canvas,
          [&](Vec2 p) {
            const Vec2 q = uv(p) * (1 / spacing);
            const Vec2 off{q.x - std::floor(q.x + 0.5), q.y - std::floor(q.y + 0.5)};
            return length(off) * spacing < radius ? 1.0 : -1.0;
          },
          mean, contrast);
      break;
    }
    case kWaves: {
      const double period = rng.uniform(3.5, 7.0);
      const double amplitude = rng.uniform(1.5, 3.5);
      const double wavelength = rng.uniform(9.0, 18.0);
      const double phase = rng.uniform(0.0, 2 * kPi);
      shade(
          canvas,
          [&](Vec2 p) {
            const Vec2 q = uv(p);
            return det_sin(2 * kPi * (q.x + amplitude * det_sin(2 * kPi * q.y / wavelength + phase)) / period);
          },
          mean, contrast);
      break;
    }
    case kFineNoise:
      shade(
          canvas, [&](Vec2) { return rng.uniform(-1.0, 1.0); }, mean, contrast * 1.6);
      break;
    case kCoarseNoise: {
      const ValueNoise noise(rng.uniform(4.5, 8.0), rng);
      shade(
          canvas, [&](Vec2 p) { return std::clamp(1.6 * noise(p), -1.0, 1.0); }, mean, contrast);
      break;
    }
    case kRings: {
      const double period = rng.uniform(3.5, 8.0);
      const double cx = rng.uniform(-4.0, kSide + 4.0);
      const double cy = rng.uniform(-4.0, kSide + 4.0);
      const Vec2 centre{cx, cy};
      shade(
          canvas, [&](Vec2 p) { return det_sin(2 * kPi * length(p - centre) / period); }, mean, contrast);
      break;
    }
    default: {  // kGrid
      const double spacing = rng.uniform(5.0, 9.0);
      const double width = rng.uniform(1.2, 2.2);
      shade(
          canvas,
          [&](Vec2 p) {
            const Vec2 q = uv(p) * (1 / spacing);
            return frac(q.x) * spacing < width || frac(q.y) * spacing < width ? 1.0 : -1.0;
          },
          mean, contrast);
    }
  }
}

void draw_texture(int64_t label, Rng& rng, Canvas& canvas) {
  const double mean = rng.uniform(0.35, 0.65);
  const double contrast = rng.uniform(0.2, 0.45);
  const double noise = rng.uniform(0.0, 0.05);
  draw_texture_family(label, mean, contrast, rng, canvas);
  add_noise(canvas, noise, rng);
}

// ---------------------------------------------------------------------------------------
// pretraining extras

Vec2 random_point(Rng& rng, double margin) {
  const double x = rng.uniform(margin, kSide - margin);
  const double y = rng.uniform(margin, kSide - margin);
  return {x, y};
}

// A quadratic Bezier stroke of width `width`, as a polyline of 12 segments.
void paint_stroke(Canvas& canvas, Rng& rng, double value) {
  const Vec2 a = random_point(rng, 2), b = random_point(rng, 0), e = random_point(rng, 2);
  const double width = rng.uniform(1.0, 3.0);
  std::vector<Vec2> line;
  for (int k = 0; k <= 12; ++k) {
    const double t = k / 12.0;
    line.push_back(a * ((1 - t) * (1 - t)) + b * (2 * t * (1 - t)) + e * (t * t));
  }
  paint(
      canvas,
      [&](Vec2 p) {
        double d = 1e30;
        for (size_t k = 1; k < line.size(); ++k) d = std::min(d, segment_distance(line[k - 1], line[k], p));
        return d - 0.5 * width;
      },
      value);
}

void paint_random_polygon(Canvas& canvas, Rng& rng, double value) {
  const double r = rng.uniform(3.0, 10.0);
  const Vec2 c = random_point(rng, 1);
  const auto sides = static_cast<int>(3 + rng.below(6));
  const double rotation = rng.uniform(0.0, 2 * kPi);
  const double outline = rng.coin() ? 0.0 : rng.uniform(1.0, 2.5);
  // Irregular: every vertex at its own radius.
  std::vector<Vec2> polygon = regular_polygon(c, r, sides, rotation);
  for (Vec2& v : polygon) v = c + (v - c) * rng.uniform(0.6, 1.2);
  paint_polygon(canvas, polygon, value, outline);
}

void paint_random_dots(Canvas& canvas, Rng& rng, double value) {
  const int64_t n = 1 + rng.below(5);
  for (int64_t k = 0; k < n; ++k) {
    const double r = rng.uniform(1.0, 3.5);
    const Vec2 c = random_point(rng, 0);
    paint(
        canvas, [&](Vec2 p) { return length(p - c) - r; }, value);
  }
}

}  // namespace

const std::vector<ProceduralTask>& procedural_tasks() {
  static const std::vector<ProceduralTask> tasks = {
      {"shapes", {"circle", "triangle", "square", "pentagon", "hexagon", "star", "cross", "crescent"}, draw_shape},
      {"gratings", {"0deg", "22.5deg", "45deg", "67.5deg", "90deg", "112.5deg", "135deg", "157.5deg"}, draw_grating},
      {"count", {"1", "2", "3", "4", "5", "6", "7", "8"}, draw_count},
      {"textures",
       {"checkerboard", "stripes", "dots", "waves", "fine_noise", "coarse_noise", "rings", "grid"},
       draw_texture},
  };
  return tasks;
}

const ProceduralTask* find_procedural_task(std::string_view name) {
  for (const auto& t : procedural_tasks())
    if (t.name == name) return &t;
  return nullptr;
}

void draw_pretraining_extra(Rng& rng, Canvas& canvas) {
  if (rng.coin(0.35)) {
    const int64_t family = rng.below(8);
    const double mean = rng.uniform(0.1, 0.4);
    const double contrast = rng.uniform(0.05, 0.2);
    draw_texture_family(family, mean, contrast, rng, canvas);
  } else {
    fill(canvas, rng.uniform(0.0, 0.35));
  }
  const int64_t strokes = rng.below(4), polygons = rng.below(3);
  for (int64_t k = 0; k < strokes; ++k) paint_stroke(canvas, rng, rng.uniform(0.5, 1.0));
  for (int64_t k = 0; k < polygons; ++k) paint_random_polygon(canvas, rng, rng.uniform(0.5, 1.0));
  if (strokes + polygons == 0 || rng.coin(0.3)) paint_random_dots(canvas, rng, rng.uniform(0.5, 1.0));
  add_noise(canvas, rng.uniform(0.0, 0.06), rng);
}

}  // namespace amalgam::zoo
