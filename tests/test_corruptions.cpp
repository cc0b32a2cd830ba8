// Corruptions (zoo/corruptions): each corruption's defining property checked against an
// independent computation, determinism and seeding, severity ordering, and `amalgam task
// corrupt` end to end.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "data/task.h"
#include "io/json_file.h"
#include "test_util.h"
#include "zoo/corruptions.h"
#include "zoo/procedural.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::run_amalgam;
using testing::TempDir;

// N images of one shape and their bytes, for building inputs by hand.
struct Images {
  ImageShape shape;
  int64_t n = 0;
  std::vector<uint8_t> bytes;

  Images(int64_t count, ImageShape s, uint8_t value = 0)
      : shape(s), n(count), bytes(static_cast<size_t>(count * s.bytes()), value) {}
  uint8_t& at(int64_t i, int64_t r, int64_t c, int64_t ch = 0) {
    return bytes[static_cast<size_t>(((i * shape.height + r) * shape.width + c) * shape.channels + ch)];
  }
  Tensor tensor() const {
    Tensor t = Tensor::uninitialized(DType::U8, {n, shape.height, shape.width, shape.channels});
    std::memcpy(t.mutable_bytes().data(), bytes.data(), bytes.size());
    return t;
  }
};

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const auto s = t.data<uint8_t>();
  return {s.begin(), s.end()};
}

std::vector<uint8_t> corrupt(const Images& im, Corruption c, int severity, uint64_t seed = 7) {
  return bytes_of(corrupt_images(im.tensor(), c, severity, seed));
}

// Deterministic pseudo-random bytes (an LCG independent of the library's generators).
Images random_images(int64_t n, ImageShape shape, uint32_t seed) {
  Images im(n, shape);
  uint32_t s = seed * 2654435761u + 1;
  for (auto& b : im.bytes) {
    s = s * 1664525u + 1013904223u;
    b = static_cast<uint8_t>(s >> 24);
  }
  return im;
}

// Images like the zoo's: a few of each procedural task, drawn by its own generator.
Images zoo_like_images() {
  const std::vector<std::string> tasks = {"shapes", "gratings", "count", "textures"};
  constexpr int kPerTask = 6;
  Images im(static_cast<int64_t>(tasks.size()) * kPerTask, {zoo::kSide, zoo::kSide, 1});
  int64_t i = 0;
  for (const auto& name : tasks)
    for (int k = 0; k < kPerTask; ++k, ++i) {
      zoo::Rng rng(1000 + static_cast<uint64_t>(i));
      zoo::Canvas canvas;
      zoo::find_procedural_task(name)->draw(k % 8, rng, canvas);
      zoo::quantize(canvas, std::span(im.bytes).subspan(static_cast<size_t>(i * zoo::kPixels), zoo::kPixels));
    }
  return im;
}

double mean_abs_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += std::abs(int(a[i]) - int(b[i]));
  return sum / static_cast<double>(a.size());
}

double psnr(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  double se = 0;
  for (size_t i = 0; i < a.size(); ++i) se += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return 10 * std::log10(255.0 * 255.0 / (se / static_cast<double>(a.size())));
}

TEST(Corruptions, NamesSeveritiesAndTable) {
  std::set<std::string_view> names;
  for (const Corruption c : kAllCorruptions) {
    names.insert(corruption_name(c));
    EXPECT_EQ(parse_corruption(corruption_name(c)), c);
  }
  EXPECT_EQ(names, (std::set<std::string_view>{"gaussian_noise", "impulse_noise", "motion_blur", "pixelate", "spatter",
                                               "contrast", "jpeg"}));
  try {
    parse_corruption("fog");
    ADD_FAILURE() << "no InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'fog'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("motion_blur"), std::string::npos);
  }
  EXPECT_THROW(corruption_level(0), InputError);
  EXPECT_THROW(corruption_level(6), InputError);
  EXPECT_EQ(corruption_parameter(Corruption::Jpeg, 3), "quality 58");
  EXPECT_EQ(corruption_parameter(Corruption::GaussianNoise, 1), "sigma 0.08");
  // Every parameter moves towards more damage with severity.
  for (int s = kMinSeverity; s < kMaxSeverity; ++s) {
    const CorruptionLevel &a = corruption_level(s), &b = corruption_level(s + 1);
    EXPECT_LT(a.gaussian_sigma, b.gaussian_sigma);
    EXPECT_LT(a.impulse_fraction, b.impulse_fraction);
    EXPECT_LT(a.motion_length, b.motion_length);
    EXPECT_GT(a.pixelate_factor, b.pixelate_factor);
    EXPECT_GT(a.contrast_factor, b.contrast_factor);
    EXPECT_GT(a.spatter_threshold, b.spatter_threshold);
    EXPECT_LT(a.spatter_opacity, b.spatter_opacity);
    EXPECT_GT(a.jpeg_quality, b.jpeg_quality);
  }
}

TEST(Corruptions, GaussianNoiseHasTheSeveritysSigma) {
  // Mid-gray, so that at severities 1 and 2 (sigma 20 and 31 levels) clipping at 0 and 255,
  // more than 4 sigma away, is negligible.
  const Images flat(64, {32, 32, 1}, 128);
  for (const int severity : {1, 2}) {
    const double sigma = 255 * corruption_level(severity).gaussian_sigma;
    const auto out = corrupt(flat, Corruption::GaussianNoise, severity);
    double sum = 0, sum_sq = 0;
    size_t beyond_two_sigma = 0;
    for (const uint8_t v : out) {
      const double d = v - 128.0;
      sum += d;
      sum_sq += d * d;
      beyond_two_sigma += std::abs(d) > 2 * sigma;
    }
    const auto n = static_cast<double>(out.size());
    EXPECT_NEAR(sum / n, 0.0, 0.5);
    // Rounding to bytes adds variance 1/12.
    EXPECT_NEAR(std::sqrt(sum_sq / n - 1.0 / 12), sigma, 0.02 * sigma) << "severity " << severity;
    // Gaussian tails: 4.55% beyond two sigma (a sum of a few uniforms would have fewer).
    EXPECT_NEAR(beyond_two_sigma / n, 0.0455, 0.005);
  }
}

TEST(Corruptions, ImpulseNoiseReplacesTheFractionWithBlackOrWhite) {
  const Images flat(64, {32, 32, 1}, 128);
  for (int severity = kMinSeverity; severity <= kMaxSeverity; ++severity) {
    const double p = corruption_level(severity).impulse_fraction;
    const auto out = corrupt(flat, Corruption::ImpulseNoise, severity);
    size_t black = 0, white = 0;
    for (const uint8_t v : out) {
      ASSERT_TRUE(v == 128 || v == 0 || v == 255) << int(v);
      black += v == 0;
      white += v == 255;
    }
    const auto n = static_cast<double>(out.size());
    const double tolerance = 4 * std::sqrt(p * (1 - p) / n);  // 4 binomial standard deviations
    EXPECT_NEAR((black + white) / n, p, tolerance) << "severity " << severity;
    EXPECT_NEAR(black / n, p / 2, tolerance);
  }
}

// Checks that every block of rows [r0, r1) x columns [c0, c1) of image 0 holds the rounded
// mean of the input's block, for the block boundaries `rows` and `cols`.
void expect_blocks_hold_means(Images& in, const std::vector<uint8_t>& out, const std::vector<int64_t>& rows,
                              const std::vector<int64_t>& cols) {
  Images result(1, in.shape);
  result.bytes = out;
  for (size_t br = 0; br + 1 < rows.size(); ++br)
    for (size_t bc = 0; bc + 1 < cols.size(); ++bc)
      for (int64_t ch = 0; ch < in.shape.channels; ++ch) {
        double sum = 0;
        for (int64_t r = rows[br]; r < rows[br + 1]; ++r)
          for (int64_t c = cols[bc]; c < cols[bc + 1]; ++c) sum += in.at(0, r, c, ch);
        const double mean = sum / static_cast<double>((rows[br + 1] - rows[br]) * (cols[bc + 1] - cols[bc]));
        const int expected = static_cast<int>(std::floor(mean + 0.5));
        for (int64_t r = rows[br]; r < rows[br + 1]; ++r)
          for (int64_t c = cols[bc]; c < cols[bc + 1]; ++c)
            ASSERT_EQ(result.at(0, r, c, ch), expected) << "block " << br << "," << bc << " pixel " << r << "," << c;
      }
}

TEST(Corruptions, PixelateBlocksHoldTheirRoundedMean) {
  // 20 pixels at factor 0.5 (severity 2): a 10x10 grid of 2x2 blocks.
  Images even = random_images(1, {20, 20, 1}, 3);
  std::vector<int64_t> two;
  for (int64_t b = 0; b <= 20; b += 2) two.push_back(b);
  expect_blocks_hold_means(even, corrupt(even, Corruption::Pixelate, 2), two, two);

  // 28 pixels at factor 0.4 (severity 3): an 11x11 grid whose blocks are 2 or 3 pixels wide,
  // the first pixel of block b being ceil(28 b / 11); three channels averaged separately.
  Images odd = random_images(1, {28, 28, 3}, 4);
  std::vector<int64_t> bounds;
  for (int64_t b = 0; b <= 11; ++b) bounds.push_back((28 * b + 10) / 11);
  expect_blocks_hold_means(odd, corrupt(odd, Corruption::Pixelate, 3), bounds, bounds);
}

TEST(Corruptions, ContrastKeepsTheMeanAndScalesDeviations) {
  Images im = random_images(1, {28, 28, 3}, 5);
  for (int severity = kMinSeverity; severity <= kMaxSeverity; ++severity) {
    const double f = corruption_level(severity).contrast_factor;
    const auto out = corrupt(im, Corruption::Contrast, severity);
    for (int64_t ch = 0; ch < 3; ++ch) {
      double in_sum = 0, out_sum = 0;
      for (size_t i = static_cast<size_t>(ch); i < out.size(); i += 3) {
        in_sum += im.bytes[i];
        out_sum += out[i];
      }
      const double mean = in_sum / (28 * 28);
      EXPECT_NEAR(out_sum / (28 * 28), mean, 0.5) << "severity " << severity;
      for (size_t i = static_cast<size_t>(ch); i < out.size(); i += 3)
        ASSERT_NEAR(out[i], mean + f * (im.bytes[i] - mean), 0.5 + 1e-9);
    }
  }
}

TEST(Corruptions, MotionBlurKeepsAFlatImageFlat) {
  const Images flat(8, {28, 28, 3}, 77);
  for (int severity = kMinSeverity; severity <= kMaxSeverity; ++severity)
    for (const uint8_t v : corrupt(flat, Corruption::MotionBlur, severity, severity)) ASSERT_EQ(v, 77);
}

TEST(Corruptions, MotionBlurSpreadsAPointAlongALine) {
  constexpr int64_t kCentre = 14;
  for (int severity = kMinSeverity; severity <= kMaxSeverity; ++severity)
    for (uint64_t seed = 0; seed < 8; ++seed) {
      Images point(1, {28, 28, 1});
      point.at(0, kCentre, kCentre) = 255;
      Images out(1, point.shape);
      out.bytes = corrupt(point, Corruption::MotionBlur, severity, seed);
      // Mass and its second moments about the point.
      double mass = 0, xx = 0, yy = 0, xy = 0;
      int lit = 0;
      for (int64_t r = 0; r < 28; ++r)
        for (int64_t c = 0; c < 28; ++c) {
          const double v = out.at(0, r, c);
          const double dy = double(r - kCentre), dx = double(c - kCentre);
          mass += v;
          xx += v * dx * dx;
          yy += v * dy * dy;
          xy += v * dx * dy;
          lit += v > 0;
        }
      // Each lit pixel is rounded by at most half a level.
      EXPECT_NEAR(mass, 255, 0.5 * lit);
      xx /= mass, yy /= mass, xy /= mass;
      const double mid = (xx + yy) / 2, half_gap = std::sqrt((xx - yy) * (xx - yy) / 4 + xy * xy);
      const double along = mid + half_gap, across = mid - half_gap;
      // A uniform line of L points one pixel apart has variance (L^2 - 1) / 12 along it; the
      // bilinear split adds at most 1/4 in either direction.
      const int L = corruption_level(severity).motion_length;
      const double line = (L * L - 1) / 12.0;
      EXPECT_GT(along, 0.9 * line) << "severity " << severity << " seed " << seed;
      EXPECT_LT(along, line + 0.3);
      EXPECT_LT(across, 0.3);
      // The line's direction is within 45 degrees of horizontal: |dx| >= |dy| along it.
      EXPECT_GE(xx + 0.05, yy);
    }
}

TEST(Corruptions, JpegOfAFlatImageIsNearlyTheImage) {
  for (const int channels : {1, 3})
    for (int severity = kMinSeverity; severity <= kMaxSeverity; ++severity) {
      const Images flat(2, {28, 28, channels}, 100);
      for (const uint8_t v : corrupt(flat, Corruption::Jpeg, severity)) ASSERT_NEAR(v, 100, 2);
    }
}

// PSNRs measured on these images (stb's encoder, 28x28): zoo-like 32 to 26 dB and noise 30 to
// 21 dB from severity 1 to 5; the bounds leave a margin and check the ordering.
TEST(Corruptions, JpegOfBusyImagesIsCloseAndDeterministic) {
  const Images zoo = zoo_like_images();
  const Images noise = random_images(4, {28, 28, 1}, 6);
  double previous_zoo = 1e9, previous_noise = 1e9;
  for (int severity = kMinSeverity; severity <= kMaxSeverity; ++severity) {
    const auto out = corrupt(zoo, Corruption::Jpeg, severity);
    EXPECT_EQ(out, corrupt(zoo, Corruption::Jpeg, severity, 99)) << "the seed plays no part in JPEG";
    const double p = psnr(zoo.bytes, out);
    EXPECT_GT(p, 24) << "severity " << severity;
    EXPECT_LT(p, 35) << "severity " << severity;
    EXPECT_LT(p, previous_zoo);
    previous_zoo = p;
    // Uniform noise is JPEG's worst case, yet far closer than its mean (10.8 dB) would be.
    const double q = psnr(noise.bytes, corrupt(noise, Corruption::Jpeg, severity));
    EXPECT_GT(q, 18) << "severity " << severity;
    EXPECT_LT(q, 33) << "severity " << severity;
    EXPECT_LT(q, previous_noise);
    previous_noise = q;
  }
}

TEST(Corruptions, JpegOfAGrayRgbImageMatchesTheGrayPath) {
  // A colour JPEG of an image with R = G = B has no chroma to lose: it decodes to (nearly)
  // the gray JPEG in every channel.
  const Images gray = zoo_like_images();
  Images rgb(gray.n, {gray.shape.height, gray.shape.width, 3});
  for (size_t i = 0; i < rgb.bytes.size(); ++i) rgb.bytes[i] = gray.bytes[i / 3];
  const auto g = corrupt(gray, Corruption::Jpeg, 3), c = corrupt(rgb, Corruption::Jpeg, 3);
  for (size_t i = 0; i < c.size(); ++i) ASSERT_NEAR(c[i], g[i / 3], 2) << i;
}

TEST(Corruptions, SpatterCoversABoundedFractionWithDrops) {
  for (const uint8_t background : {40, 200}) {
    const Images flat(64, {28, 28, 1}, background);
    const int drop = background < 128 ? kWaterDrop : kMudDropGray;  // light drops on dark, dark on light
    for (int severity = kMinSeverity; severity <= kMaxSeverity; ++severity) {
      const CorruptionLevel& level = corruption_level(severity);
      const auto out = corrupt(flat, Corruption::Spatter, severity);
      // Drop cores are where the unit-variance field exceeds the threshold; the [1, 2, 1]
      // soft edge keeps at least half the opacity exactly there (to within a pixel's
      // rounding), and touches nothing beyond a core's 3x3 neighbourhood.
      const double core = 0.5 * std::erfc(level.spatter_threshold / std::sqrt(2.0));
      const double full = level.spatter_opacity * std::abs(drop - background);
      size_t touched = 0, strong = 0;
      for (const uint8_t v : out) {
        ASSERT_LE(std::abs(v - background), full + 0.5);
        ASSERT_GE((v - background) * (drop - background), 0) << "drops move towards their colour";
        touched += v != background;
        strong += std::abs(v - background) >= 0.5 * full;
      }
      const auto n = static_cast<double>(out.size());
      EXPECT_NEAR(strong / n, core, 0.25 * core) << "severity " << severity;
      EXPECT_GT(touched / n, core);
      EXPECT_LT(touched / n, std::min(9 * core, 0.7)) << "severity " << severity;
    }
  }
}

TEST(Corruptions, DeterministicSeededAndThreadIndependent) {
  const Images zoo = zoo_like_images();
  const Tensor images = zoo.tensor();
  const int threads = omp_get_max_threads();
  for (const Corruption c : kAllCorruptions) {
    const auto a = bytes_of(corrupt_images(images, c, 3, 11));
    omp_set_num_threads(1);
    const auto serial = bytes_of(corrupt_images(images, c, 3, 11));
    omp_set_num_threads(threads);
    EXPECT_EQ(a, serial) << corruption_name(c);
    const auto other_seed = bytes_of(corrupt_images(images, c, 3, 12));
    if (is_random(c))
      EXPECT_NE(a, other_seed) << corruption_name(c);
    else
      EXPECT_EQ(a, other_seed) << corruption_name(c);
    EXPECT_NE(a, zoo.bytes) << corruption_name(c);
    // Image i depends only on (seed, corruption, i): corrupting it alone gives the same bytes.
    const auto bytes = static_cast<size_t>(zoo.shape.bytes());
    std::vector<uint8_t> alone(bytes);
    corrupt_image(c, 3, corruption_image_seed(11, c, 5), std::span(zoo.bytes).subspan(5 * bytes, bytes), zoo.shape,
                  alone);
    EXPECT_TRUE(std::equal(alone.begin(), alone.end(), a.begin() + 5 * bytes)) << corruption_name(c);
  }
}

// FNV-1a of the bytes: a fingerprint of each corruption's output, so that a change of
// compiler flags, CPU or library that alters the benchmark's data fails here. (The values
// were the same with the file built for generic x86-64, for -march=native with
// -ffp-contract=fast, and at -O0.) Update them only for a deliberate change of a corruption.
uint64_t fingerprint(const std::vector<uint8_t>& bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const uint8_t b : bytes) h = (h ^ b) * 0x100000001b3ULL;
  return h;
}

TEST(Corruptions, SameBytesEverywhere) {
  // Inputs independent of the zoo's generators: gray images, dark and light alternately
  // (spatter's two drop colours), and RGB ones (JPEG's colour path).
  Images gray = random_images(8, {28, 28, 1}, 2025);
  for (size_t i = 0; i < gray.bytes.size(); ++i)
    gray.bytes[i] = static_cast<uint8_t>(gray.bytes[i] / 2 + (i / 784 % 2) * 100);
  const Images rgb = random_images(2, {28, 28, 3}, 2026);
  const std::vector<std::pair<Corruption, uint64_t>> expected = {
      {Corruption::GaussianNoise, 3351026378993211328ULL}, {Corruption::ImpulseNoise, 15270429648478702652ULL},
      {Corruption::MotionBlur, 6920841966636894089ULL},    {Corruption::Pixelate, 5155560618918404937ULL},
      {Corruption::Spatter, 5404391825385007791ULL},       {Corruption::Contrast, 1040307900779398225ULL},
      {Corruption::Jpeg, 1468163645803839356ULL}};
  for (const auto& [c, hash] : expected) {
    auto bytes = corrupt(gray, c, 3, 2025);
    const auto colour = corrupt(rgb, c, 3, 2025);
    bytes.insert(bytes.end(), colour.begin(), colour.end());
    EXPECT_EQ(fingerprint(bytes), hash) << corruption_name(c);
  }
}

TEST(Corruptions, DistortionGrowsWithSeverity) {
  const Images zoo = zoo_like_images();
  for (const Corruption c : kAllCorruptions) {
    double previous = 0;
    for (int severity = kMinSeverity; severity <= kMaxSeverity; ++severity) {
      const double d = mean_abs_diff(zoo.bytes, corrupt(zoo, c, severity));
      EXPECT_GT(d, previous) << corruption_name(c) << " severity " << severity;
      previous = d;
    }
  }
}

TEST(Corruptions, BadArguments) {
  const Images im(1, {4, 4, 1});
  std::vector<uint8_t> out(15);
  EXPECT_THROW(corrupt_image(Corruption::Contrast, 3, 0, im.bytes, im.shape, out), std::invalid_argument);
  out.resize(16);
  EXPECT_THROW(corrupt_image(Corruption::Contrast, 0, 0, im.bytes, im.shape, out), InputError);
  EXPECT_THROW(corrupt_images(im.tensor(), Corruption::Jpeg, 6, 0), InputError);
  EXPECT_THROW(corrupt_images(Tensor::zeros(DType::U8, {4, 4}), Corruption::Jpeg, 3, 0), std::invalid_argument);
  // An empty split stays empty.
  EXPECT_EQ(corrupt_images(Tensor::zeros(DType::U8, {0, 4, 4, 1}), Corruption::Jpeg, 3, 0).dim(0), 0);
}

// A 3-class task of 28x28 gray images with train and test splits.
fs::path make_task(const TempDir& tmp) {
  TaskInfo info;
  info.name = "toy";
  info.classes = {"a", "b", "c"};
  info.image = {28, 28, 1};
  std::vector<TaskSplit> splits;
  for (const auto& [name, n] : {std::pair{"train", 6}, std::pair{"test", 9}}) {
    TaskSplit s;
    s.name = name;
    const Images im = random_images(n, info.image, static_cast<uint32_t>(n));
    s.images = im.tensor();
    for (int i = 0; i < n; ++i) s.labels.push_back(i % 3);
    splits.push_back(std::move(s));
  }
  const fs::path dir = tmp / "task";
  write_task(dir, info, splits, false);
  return dir;
}

TEST(CorruptionsCli, WritesTheCorruptedSplitAsATask) {
  TempDir tmp;
  const fs::path dir = make_task(tmp);
  const fs::path out = tmp / "jpeg";
  const auto r = run_amalgam("task corrupt " + dir.string() + " --corruption jpeg --severity 2 -o " + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("jpeg"), std::string::npos);

  const TaskInfo source = read_task_info(dir), info = read_task_info(out);
  EXPECT_EQ(info.name, "toy");
  EXPECT_EQ(info.classes, source.classes);
  EXPECT_EQ(info.image, source.image);
  ASSERT_EQ(info.splits.size(), 1u);
  EXPECT_EQ(info.splits[0].name, "test");
  const TaskSplit clean = load_split(dir, source, "test"), corrupted = load_split(out, info, "test");
  EXPECT_EQ(corrupted.images.shape(), clean.images.shape());
  EXPECT_EQ(corrupted.labels, clean.labels);
  EXPECT_EQ(bytes_of(corrupted.images), bytes_of(corrupt_images(clean.images, Corruption::Jpeg, 2, 0)));
  const auto meta = read_json_file(out / "corruption.json");
  EXPECT_EQ(meta["corruption"], "jpeg");
  EXPECT_EQ(meta["severity"], 2);
  EXPECT_EQ(meta["split"], "test");
  EXPECT_EQ(meta["parameter"], "quality 65");

  // No overwrite without --force.
  const std::string again = "task corrupt " + dir.string() + " --corruption contrast -o " + out.string();
  EXPECT_EQ(run_amalgam(again).code, 2);
  EXPECT_EQ(read_json_file(out / "corruption.json")["corruption"], "jpeg");
  ASSERT_EQ(run_amalgam(again + " --force").code, 0);
  EXPECT_EQ(read_json_file(out / "corruption.json")["corruption"], "contrast");
}

TEST(CorruptionsCli, AllCorruptionsOfAnotherSplit) {
  TempDir tmp;
  const fs::path dir = make_task(tmp);
  const fs::path out = tmp / "all";
  const auto r =
      run_amalgam("task corrupt " + dir.string() + " --corruption all --split train --seed 5 -o " + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  const TaskInfo source = read_task_info(dir);
  const TaskSplit clean = load_split(dir, source, "train");
  for (const Corruption c : kAllCorruptions) {
    const fs::path sub = out / std::string(corruption_name(c));
    const TaskInfo info = read_task_info(sub);
    const TaskSplit split = load_split(sub, info, "train");
    EXPECT_EQ(split.labels, clean.labels);
    EXPECT_EQ(bytes_of(split.images), bytes_of(corrupt_images(clean.images, c, 3, 5))) << corruption_name(c);
    EXPECT_EQ(read_json_file(sub / "corruption.json")["seed"], 5);
  }
}

TEST(CorruptionsCli, BadArgumentsExitTwoAndWriteNothing) {
  TempDir tmp;
  const fs::path dir = make_task(tmp);
  const std::string base = "task corrupt " + dir.string() + " -o " + (tmp / "out").string();
  const auto unknown = run_amalgam(base + " --corruption fog");
  EXPECT_EQ(unknown.code, 2);
  EXPECT_NE(unknown.err.find("spatter"), std::string::npos) << unknown.err;
  EXPECT_EQ(run_amalgam(base + " --corruption jpeg --severity 6").code, 2);
  const auto no_split = run_amalgam(base + " --corruption jpeg --split val");
  EXPECT_EQ(no_split.code, 2);
  EXPECT_NE(no_split.err.find("val"), std::string::npos) << no_split.err;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

}  // namespace
}  // namespace amalgam
