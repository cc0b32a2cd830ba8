// Image corruptions for robustness benchmarks (experiment 3 of `amalgam bench`): seven of
// Hendrycks & Dietterich's ImageNet-C corruptions, the set the RegMean++ paper evaluates,
// adapted to small uint8 images [N, H, W, C] as task splits store them.
//
// The file is named zoo_* so that it is compiled like the zoo's generators (without fused
// multiply-adds, see CMakeLists.txt): corrupted test sets are benchmark data, and every
// machine must produce the same bytes. For the same reason only +, -, *, /, sqrt, floor and
// frexp/ldexp touch the pixels (sine, cosine and log are computed without libm), and every
// image draws from its own generator, seeded from (seed, corruption, image index), so the
// bytes do not depend on the thread count.
//
// Severity 1..5. ImageNet-C's parameters are used as they are where they are relative to the
// image (noise levels, fractions, factors); where they are sizes in pixels of a 224x224 image
// they are scaled for 28x28 (a 1/8 scale would make motion blur sub-pixel, so its lengths
// follow CIFAR-10-C, ImageNet-C's own 32x32 variant); JPEG's 8x8 blocks are a fixed size in
// pixels, which makes a 28x28 image far more sensitive to quality, so its qualities are also
// CIFAR-10-C's.
//
//   severity                       1     2     3     4     5
//   gaussian_noise  sigma / 255    0.08  0.12  0.18  0.26  0.38   (ImageNet-C)
//   impulse_noise   fraction       0.03  0.06  0.09  0.17  0.27   (ImageNet-C)
//   motion_blur     length (px)    3     4     5     6     7      (CIFAR-10-C's spread)
//   pixelate        grid / size    0.60  0.50  0.40  0.30  0.25   (ImageNet-C)
//   contrast        factor         0.40  0.30  0.20  0.10  0.05   (ImageNet-C)
//   spatter         threshold (z)  1.6   1.3   1.0   0.8   0.6    (own: drop cores cover
//                   opacity        0.6   0.7   0.8   0.9   1.0     5% to 27% of the image)
//   jpeg            quality        80    65    58    50    40     (CIFAR-10-C)
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/tensor.h"
#include "data/task.h"

namespace amalgam {

enum class Corruption { GaussianNoise, ImpulseNoise, MotionBlur, Pixelate, Spatter, Contrast, Jpeg };

inline constexpr std::array<Corruption, 7> kAllCorruptions = {
    Corruption::GaussianNoise, Corruption::ImpulseNoise, Corruption::MotionBlur, Corruption::Pixelate,
    Corruption::Spatter,       Corruption::Contrast,     Corruption::Jpeg};

inline constexpr int kMinSeverity = 1;
inline constexpr int kMaxSeverity = 5;

// "gaussian_noise", "impulse_noise", "motion_blur", "pixelate", "spatter", "contrast", "jpeg".
std::string_view corruption_name(Corruption corruption);
// The corruption named `name`; InputError listing the names otherwise.
Corruption parse_corruption(std::string_view name);
// False for the corruptions that use no random draws (pixelate, contrast, jpeg).
bool is_random(Corruption corruption);

// One severity's row of the table above.
struct CorruptionLevel {
  double gaussian_sigma;     // noise standard deviation, as a fraction of 255
  double impulse_fraction;   // values replaced, half by 0 and half by 255
  int motion_length;         // pixels along the blur line
  double pixelate_factor;    // block grid size / image size, per side
  double contrast_factor;    // deviations from the image mean are scaled by this
  double spatter_threshold;  // the noise field (unit variance) is a drop where above this
  double spatter_opacity;    // of a drop's centre
  int jpeg_quality;          // 1..100, stb_image_write's scale (the IJG one)
};

// InputError unless 1 <= severity <= 5.
const CorruptionLevel& corruption_level(int severity);
// "sigma 0.18", "quality 58", ...: the parameter of one corruption at one severity, for humans.
std::string corruption_parameter(Corruption corruption, int severity);

// The spatter field's blur: a binomial kernel of this order, a Gaussian of sigma 1 pixel.
inline constexpr int kSpatterBlurOrder = 4;
// Spatter drop colours: light "water" drops on a dark image, dark "mud" drops on a light
// one (ImageNet-C's two modes), so that drops show whatever the background; mud is
// ImageNet-C's brown (63, 42, 20), its luma on gray images.
inline constexpr uint8_t kWaterDrop = 238;
inline constexpr std::array<uint8_t, 3> kMudDrop = {63, 42, 20};
inline constexpr uint8_t kMudDropGray = 46;

// The generator seed of image `index` under `corruption`: the same whatever the severity, so
// a higher severity corrupts the same image with the same draws, only more strongly.
uint64_t corruption_image_seed(uint64_t seed, Corruption corruption, int64_t index);

// Corrupts one image (shape.bytes() values, HWC interleaved) from `in` into `out`, drawing
// from a generator seeded with `image_seed`. Throws std::runtime_error if the JPEG codec fails.
void corrupt_image(Corruption corruption, int severity, uint64_t image_seed, std::span<const uint8_t> in,
                   ImageShape shape, std::span<uint8_t> out);

// Every image of `images` (U8 [N, H, W, C]) corrupted on all cores, image i with
// corruption_image_seed(seed, corruption, i).
Tensor corrupt_images(const Tensor& images, Corruption corruption, int severity, uint64_t seed);
// The split with its images corrupted; name and labels unchanged.
TaskSplit corrupt_split(const TaskSplit& split, Corruption corruption, int severity, uint64_t seed);

}  // namespace amalgam
