#include "zoo/corruptions.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <vector>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "zoo/raster.h"

// The JPEG encoder is stb_image_write's, compiled here (static, so that nothing clashes
// with another copy), in this file's no-FMA mode: it works in floats, and a fused
// multiply-add would change a coefficient's rounding here and there between machines. The
// decoder is stb_image's, whose implementation data/importers.cpp compiles; its JPEG path
// is integer-only (the SIMD IDCT is bit-identical to the scalar one). Third-party code: the
// project's warnings are not applied to it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wall"
#pragma GCC diagnostic ignored "-Wextra"
#pragma GCC diagnostic ignored "-Wunused-function"
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STBI_WRITE_NO_STDIO
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

namespace amalgam {

namespace {

using zoo::det_cos;
using zoo::det_sin;
using zoo::kPi;
using zoo::Rng;

constexpr std::array<CorruptionLevel, 5> kLevels = {{
    {0.08, 0.03, 3, 0.60, 0.40, 1.6, 0.6, 80},
    {0.12, 0.06, 4, 0.50, 0.30, 1.3, 0.7, 65},
    {0.18, 0.09, 5, 0.40, 0.20, 1.0, 0.8, 58},
    {0.26, 0.17, 6, 0.30, 0.10, 0.8, 0.9, 50},
    {0.38, 0.27, 7, 0.25, 0.05, 0.6, 1.0, 40},
}};

// ImageNet-C draws the motion direction uniformly within 45 degrees of horizontal.
constexpr double kMaxMotionAngle = kPi / 4;
// The spatter mask's soft edge: a binomial kernel of order 2, [1, 2, 1] / 4.
constexpr int kSpatterEdgeOrder = 2;

struct Image {
  std::span<const uint8_t> in;
  std::span<uint8_t> out;
  int64_t h, w, c;

  size_t at(int64_t r, int64_t col, int64_t ch) const { return static_cast<size_t>((r * w + col) * c + ch); }
};

uint8_t to_byte(double v) {
  return static_cast<uint8_t>(std::clamp(v, 0.0, 255.0) + 0.5);
}

// Natural log from exact operations only (frexp, then atanh's series on [1/sqrt2, sqrt2)),
// for the same reason det_sin exists: libm's results vary between versions and CPUs.
double det_log(double x) {
  constexpr double kSqrtHalf = 0.70710678118654752440;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // fdlibm's split of ln 2
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  int e = 0;
  double m = std::frexp(x, &e);
  if (m < kSqrtHalf) {
    m *= 2;
    --e;
  }
  const double s = (m - 1) / (m + 1);  // |s| < 0.172: 12 terms reach double precision
  const double s2 = s * s;
  double term = s, sum = s;
  for (int k = 3; k <= 25; k += 2) {
    term *= s2;
    sum += term / k;
  }
  return e * kLn2Hi + (2 * sum + e * kLn2Lo);
}

// A standard normal draw (Box-Muller); the Irwin-Hall draws of zoo::Rng::normal() are
// bounded at 3.5 sigma, too light-tailed for a noise corruption.
double gaussian(Rng& rng) {
  const double u1 = 1.0 - rng.uniform();  // in (0, 1], so the log is finite
  const double u2 = rng.uniform();
  return std::sqrt(-2.0 * det_log(u1)) * det_cos(2 * kPi * u2);
}

void gaussian_noise(const Image& im, double sigma, Rng& rng) {
  const double scale = 255.0 * sigma;
  for (size_t i = 0; i < im.in.size(); ++i) {
    const double noise = gaussian(rng);
    im.out[i] = to_byte(im.in[i] + scale * noise);
  }
}

// Salt and pepper on every value independently, as scikit-image's random_noise(mode="s&p").
void impulse_noise(const Image& im, double fraction, Rng& rng) {
  for (size_t i = 0; i < im.in.size(); ++i) {
    const double u = rng.uniform();
    im.out[i] = u < 0.5 * fraction ? 0 : u < fraction ? 255 : im.in[i];
  }
}

struct Tap {
  int dy, dx;
  double weight;
};

// A line of `length` pixels centred on the origin at `angle`: `length` equally weighted
// points one pixel apart, each split bilinearly between its four neighbouring offsets, so
// the weights sum to 1 and the line is symmetric (the blur does not shift the image).
std::vector<Tap> line_kernel(int length, double angle) {
  const int radius = length / 2 + 1;
  const int side = 2 * radius + 1;
  std::vector<double> grid(static_cast<size_t>(side * side), 0.0);
  const double cos_a = det_cos(angle), sin_a = det_sin(angle);
  const auto add = [&](int dy, int dx, double w) {
    grid[static_cast<size_t>((dy + radius) * side + dx + radius)] += w;
  };
  for (int k = 0; k < length; ++k) {
    const double t = k - 0.5 * (length - 1);
    const double x = t * cos_a, y = t * sin_a;
    const double fx = std::floor(x), fy = std::floor(y);
    const double ax = x - fx, ay = y - fy;
    const int ix = static_cast<int>(fx), iy = static_cast<int>(fy);
    const double w = 1.0 / length;
    add(iy, ix, w * (1 - ax) * (1 - ay));
    add(iy, ix + 1, w * ax * (1 - ay));
    add(iy + 1, ix, w * (1 - ax) * ay);
    add(iy + 1, ix + 1, w * ax * ay);
  }
  std::vector<Tap> taps;
  for (int dy = -radius; dy <= radius; ++dy)
    for (int dx = -radius; dx <= radius; ++dx)
      if (const double w = grid[static_cast<size_t>((dy + radius) * side + dx + radius)]; w > 0)
        taps.push_back({dy, dx, w});
  return taps;
}

int64_t clamp_index(int64_t i, int64_t n) {
  return std::clamp<int64_t>(i, 0, n - 1);
}

// Edges are extended (ImageNet-C's Wand blur does the same), so a flat image stays flat.
void motion_blur(const Image& im, int length, Rng& rng) {
  const double angle = rng.uniform(-kMaxMotionAngle, kMaxMotionAngle);
  const std::vector<Tap> taps = line_kernel(length, angle);
  for (int64_t r = 0; r < im.h; ++r)
    for (int64_t col = 0; col < im.w; ++col)
      for (int64_t ch = 0; ch < im.c; ++ch) {
        double sum = 0;
        for (const Tap& t : taps)
          sum += t.weight * im.in[im.at(clamp_index(r + t.dy, im.h), clamp_index(col + t.dx, im.w), ch)];
        im.out[im.at(r, col, ch)] = to_byte(sum);
      }
}

// Pixel i of a side of n pixels lies in block i * blocks / n of `blocks`.
int64_t block_of(int64_t i, int64_t n, int64_t blocks) {
  return i * blocks / n;
}

// Each block of whole pixels becomes its rounded mean: a box-filtered downsample to the
// grid, then a nearest-neighbour upsample back. (ImageNet-C resizes with PIL's box filter,
// whose fractional pixel overlaps would leave no block of constant value at 28 pixels.)
void pixelate(const Image& im, double factor) {
  const int64_t gh = std::max<int64_t>(1, static_cast<int64_t>(std::floor(im.h * factor + 0.5)));
  const int64_t gw = std::max<int64_t>(1, static_cast<int64_t>(std::floor(im.w * factor + 0.5)));
  std::vector<int64_t> sum(static_cast<size_t>(gh * gw * im.c), 0), count(static_cast<size_t>(gh * gw), 0);
  const auto block = [&](int64_t r, int64_t col) { return block_of(r, im.h, gh) * gw + block_of(col, im.w, gw); };
  for (int64_t r = 0; r < im.h; ++r)
    for (int64_t col = 0; col < im.w; ++col) {
      const int64_t b = block(r, col);
      ++count[static_cast<size_t>(b)];
      for (int64_t ch = 0; ch < im.c; ++ch) sum[static_cast<size_t>(b * im.c + ch)] += im.in[im.at(r, col, ch)];
    }
  for (int64_t r = 0; r < im.h; ++r)
    for (int64_t col = 0; col < im.w; ++col) {
      const int64_t b = block(r, col);
      const int64_t n = count[static_cast<size_t>(b)];
      for (int64_t ch = 0; ch < im.c; ++ch)  // round half up, in integers
        im.out[im.at(r, col, ch)] = static_cast<uint8_t>((2 * sum[static_cast<size_t>(b * im.c + ch)] + n) / (2 * n));
    }
}

std::vector<double> channel_means(const Image& im) {
  std::vector<double> mean(static_cast<size_t>(im.c), 0.0);
  for (size_t i = 0; i < im.in.size(); ++i) mean[i % static_cast<size_t>(im.c)] += im.in[i];
  for (double& m : mean) m /= static_cast<double>(im.h * im.w);
  return mean;
}

// ImageNet-C's contrast: every channel blended toward its mean over the image.
void contrast(const Image& im, double factor) {
  const std::vector<double> mean = channel_means(im);
  for (size_t i = 0; i < im.in.size(); ++i) {
    const double m = mean[i % static_cast<size_t>(im.c)];
    im.out[i] = to_byte(m + (im.in[i] - m) * factor);
  }
}

// Binomial weights C(order, k) / 2^order: a Gaussian of variance order / 4, exactly in
// binary, so blurring needs no exp.
std::vector<double> binomial_kernel(int order) {
  std::vector<double> k(static_cast<size_t>(order + 1), 1.0);
  for (int i = 1; i <= order; ++i) k[static_cast<size_t>(i)] = k[static_cast<size_t>(i - 1)] * (order - i + 1) / i;
  for (double& v : k) v /= std::ldexp(1.0, order);
  return k;
}

// Separable blur of an h x w field with a binomial kernel of even order, edges extended.
void binomial_blur(std::vector<double>& field, int64_t h, int64_t w, int order) {
  const std::vector<double> k = binomial_kernel(order);
  const int half = order / 2;
  std::vector<double> tmp(field.size());
  const auto pass = [&](const std::vector<double>& src, std::vector<double>& dst, bool along_rows) {
    for (int64_t r = 0; r < h; ++r)
      for (int64_t c = 0; c < w; ++c) {
        double sum = 0;
        for (int j = -half; j <= half; ++j) {
          const int64_t rr = along_rows ? r : clamp_index(r + j, h);
          const int64_t cc = along_rows ? clamp_index(c + j, w) : c;
          sum += k[static_cast<size_t>(j + half)] * src[static_cast<size_t>(rr * w + cc)];
        }
        dst[static_cast<size_t>(r * w + c)] = sum;
      }
  };
  pass(field, tmp, true);
  pass(tmp, field, false);
}

// The standard deviation of white unit noise after binomial_blur (away from the edges): the
// 2-D kernel k_i k_j's Euclidean norm, sqrt((sum_i k_i^2)^2) = sum_i k_i^2.
double blurred_noise_std(int order) {
  double sum_sq = 0;
  for (const double v : binomial_kernel(order)) sum_sq += v * v;
  return sum_sq;
}

// Drop colour per channel: water on a dark image, mud on a light one.
std::vector<double> drop_colour(const Image& im) {
  double total = 0;
  for (const uint8_t v : im.in) total += v;
  std::vector<double> colour(static_cast<size_t>(im.c));
  const bool dark = total < 127.5 * static_cast<double>(im.in.size());
  for (int64_t ch = 0; ch < im.c; ++ch)
    colour[static_cast<size_t>(ch)] = dark ? kWaterDrop : im.c == 3 ? kMudDrop[static_cast<size_t>(ch)] : kMudDropGray;
  return colour;
}

// ImageNet-C's spatter in the style of its "mud" mode: a blurred Gaussian noise field,
// thresholded into blobs, softened at the edges and blended over the image. The threshold is
// in units of the field's standard deviation, so it sets the blobs' coverage directly.
void spatter(const Image& im, double threshold, double opacity, Rng& rng) {
  std::vector<double> field(static_cast<size_t>(im.h * im.w));
  for (double& v : field) v = gaussian(rng);
  binomial_blur(field, im.h, im.w, kSpatterBlurOrder);
  const double cut = threshold * blurred_noise_std(kSpatterBlurOrder);
  for (double& v : field) v = v > cut ? 1.0 : 0.0;
  binomial_blur(field, im.h, im.w, kSpatterEdgeOrder);
  const std::vector<double> colour = drop_colour(im);
  for (int64_t p = 0; p < im.h * im.w; ++p) {
    const double a = opacity * field[static_cast<size_t>(p)];
    for (int64_t ch = 0; ch < im.c; ++ch) {
      const size_t i = static_cast<size_t>(p * im.c + ch);
      im.out[i] = to_byte(im.in[i] + a * (colour[static_cast<size_t>(ch)] - im.in[i]));
    }
  }
}

// Encodes `pixels` (h x w x comp, comp 1 or 3) as a JPEG of `quality` in memory and decodes
// it back into `out`.
void jpeg_round_trip(std::span<const uint8_t> pixels, int h, int w, int comp, int quality, std::span<uint8_t> out) {
  std::vector<uint8_t> encoded;
  const auto append = [](void* context, void* data, int size) {
    auto* bytes = static_cast<std::vector<uint8_t>*>(context);
    const auto* begin = static_cast<const uint8_t*>(data);
    bytes->insert(bytes->end(), begin, begin + size);
  };
  if (!stbi_write_jpg_to_func(append, &encoded, w, h, comp, pixels.data(), quality))
    throw std::runtime_error("jpeg: stb_image_write could not encode a " + std::to_string(h) + "x" + std::to_string(w) +
                             " image");
  int dw = 0, dh = 0, dn = 0;
  const std::unique_ptr<stbi_uc, decltype(&stbi_image_free)> decoded(
      stbi_load_from_memory(encoded.data(), static_cast<int>(encoded.size()), &dw, &dh, &dn, comp), &stbi_image_free);
  if (!decoded || dw != w || dh != h)
    throw std::runtime_error(std::string("jpeg: stb_image could not decode its own encoding: ") +
                             (decoded ? "size changed" : stbi_failure_reason()));
  std::copy_n(decoded.get(), out.size(), out.begin());
}

// RGB images are encoded as colour JPEGs; any other channel count one gray JPEG per channel.
void jpeg(const Image& im, int quality) {
  constexpr int64_t kMaxJpegSide = 65535;  // the format's 16-bit sizes
  if (im.h > kMaxJpegSide || im.w > kMaxJpegSide)
    throw InputError("jpeg: images of " + std::to_string(im.h) + "x" + std::to_string(im.w) +
                     " pixels are larger than JPEG allows (65535 per side)");
  const int h = static_cast<int>(im.h), w = static_cast<int>(im.w);
  if (im.c == 3 || im.c == 1) return jpeg_round_trip(im.in, h, w, static_cast<int>(im.c), quality, im.out);
  const auto plane_size = static_cast<size_t>(im.h * im.w);
  std::vector<uint8_t> plane(plane_size), decoded(plane_size);
  for (int64_t ch = 0; ch < im.c; ++ch) {
    for (size_t p = 0; p < plane_size; ++p) plane[p] = im.in[p * static_cast<size_t>(im.c) + static_cast<size_t>(ch)];
    jpeg_round_trip(plane, h, w, 1, quality, decoded);
    for (size_t p = 0; p < plane_size; ++p)
      im.out[p * static_cast<size_t>(im.c) + static_cast<size_t>(ch)] = decoded[p];
  }
}

}  // namespace

std::string_view corruption_name(Corruption corruption) {
  switch (corruption) {
    case Corruption::GaussianNoise:
      return "gaussian_noise";
    case Corruption::ImpulseNoise:
      return "impulse_noise";
    case Corruption::MotionBlur:
      return "motion_blur";
    case Corruption::Pixelate:
      return "pixelate";
    case Corruption::Spatter:
      return "spatter";
    case Corruption::Contrast:
      return "contrast";
    case Corruption::Jpeg:
      return "jpeg";
  }
  throw std::invalid_argument("corruption_name: unknown corruption");
}

Corruption parse_corruption(std::string_view name) {
  std::string names;
  for (const Corruption c : kAllCorruptions) {
    if (corruption_name(c) == name) return c;
    names += (names.empty() ? "" : ", ") + std::string(corruption_name(c));
  }
  throw InputError("unknown corruption '" + std::string(name) + "' (known: " + names + ")");
}

bool is_random(Corruption corruption) {
  return corruption == Corruption::GaussianNoise || corruption == Corruption::ImpulseNoise ||
         corruption == Corruption::MotionBlur || corruption == Corruption::Spatter;
}

const CorruptionLevel& corruption_level(int severity) {
  if (severity < kMinSeverity || severity > kMaxSeverity)
    throw InputError("corruption severity " + std::to_string(severity) + " is not in [1, 5]");
  return kLevels[static_cast<size_t>(severity - 1)];
}

std::string corruption_parameter(Corruption corruption, int severity) {
  const CorruptionLevel& l = corruption_level(severity);
  const auto fixed = [](double v) {
    char text[32];
    std::snprintf(text, sizeof text, "%.2f", v);
    return std::string(text);
  };
  switch (corruption) {
    case Corruption::GaussianNoise:
      return "sigma " + fixed(l.gaussian_sigma);
    case Corruption::ImpulseNoise:
      return "fraction " + fixed(l.impulse_fraction);
    case Corruption::MotionBlur:
      return "length " + std::to_string(l.motion_length) + " px";
    case Corruption::Pixelate:
      return "factor " + fixed(l.pixelate_factor);
    case Corruption::Spatter:
      return "threshold " + fixed(l.spatter_threshold) + ", opacity " + fixed(l.spatter_opacity);
    case Corruption::Contrast:
      return "factor " + fixed(l.contrast_factor);
    case Corruption::Jpeg:
      return "quality " + std::to_string(l.jpeg_quality);
  }
  throw std::invalid_argument("corruption_parameter: unknown corruption");
}

uint64_t corruption_image_seed(uint64_t seed, Corruption corruption, int64_t index) {
  return zoo::derive_seed(seed, corruption_name(corruption), static_cast<uint64_t>(index));
}

void corrupt_image(Corruption corruption, int severity, uint64_t image_seed, std::span<const uint8_t> in,
                   ImageShape shape, std::span<uint8_t> out) {
  const CorruptionLevel& level = corruption_level(severity);
  if (shape.height < 1 || shape.width < 1 || shape.channels < 1 || in.size() != static_cast<size_t>(shape.bytes()) ||
      out.size() != in.size())
    throw std::invalid_argument("corrupt_image: buffer sizes do not match the image shape " + to_string(shape));
  const Image im{in, out, shape.height, shape.width, shape.channels};
  Rng rng(image_seed);
  switch (corruption) {
    case Corruption::GaussianNoise:
      return gaussian_noise(im, level.gaussian_sigma, rng);
    case Corruption::ImpulseNoise:
      return impulse_noise(im, level.impulse_fraction, rng);
    case Corruption::MotionBlur:
      return motion_blur(im, level.motion_length, rng);
    case Corruption::Pixelate:
      return pixelate(im, level.pixelate_factor);
    case Corruption::Spatter:
      return spatter(im, level.spatter_threshold, level.spatter_opacity, rng);
    case Corruption::Contrast:
      return contrast(im, level.contrast_factor);
    case Corruption::Jpeg:
      return jpeg(im, level.jpeg_quality);
  }
}

Tensor corrupt_images(const Tensor& images, Corruption corruption, int severity, uint64_t seed) {
  corruption_level(severity);  // a bad severity fails before any work
  if (images.dtype() != DType::U8 || images.rank() != 4)
    throw std::invalid_argument("corrupt_images: images must be U8 [N, H, W, C]");
  const int64_t n = images.dim(0);
  const ImageShape shape{images.dim(1), images.dim(2), images.dim(3)};
  const auto bytes = static_cast<size_t>(shape.bytes());
  Tensor out = Tensor::uninitialized(DType::U8, images.shape());
  const std::span<uint8_t> dst = out.mutable_data<uint8_t>();
  const std::span<const uint8_t> src = images.data<uint8_t>();
  constexpr int64_t kChunk = 64;
  parallel_for(static_cast<size_t>((n + kChunk - 1) / kChunk), [&](size_t chunk) {
    check_interrupt();
    const int64_t end = std::min(n, static_cast<int64_t>(chunk + 1) * kChunk);
    for (int64_t i = static_cast<int64_t>(chunk) * kChunk; i < end; ++i) {
      const size_t offset = static_cast<size_t>(i) * bytes;
      corrupt_image(corruption, severity, corruption_image_seed(seed, corruption, i), src.subspan(offset, bytes), shape,
                    dst.subspan(offset, bytes));
    }
  });
  return out;
}

TaskSplit corrupt_split(const TaskSplit& split, Corruption corruption, int severity, uint64_t seed) {
  TaskSplit out;
  out.name = split.name;
  out.labels = split.labels;
  out.images = corrupt_images(split.images, corruption, severity, seed);
  return out;
}

}  // namespace amalgam
