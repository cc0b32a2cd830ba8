// Image preprocessing as Hugging Face's CLIPImageProcessor does it, so that a model sees in
// amalgam the pixel values it saw in training:
//
//   U8 HWC image -> channels of the model (gray <-> RGB as PIL converts)
//                -> resize (shortest edge, aspect kept; PIL's resampling, in uint8)
//                -> center crop (zero padding where the image is smaller)
//                -> rescale (x 1/255) -> normalize ((x - mean) / std, in float32)
//                -> F32 CHW
//
// The resize reproduces Pillow's Image.resize bit for bit: a separable convolution
// (horizontal pass, then vertical) whose kernel support widens with the downscale factor,
// coefficients normalized per output pixel and quantized to 22 fractional bits, results
// rounded to uint8 after each pass.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <span>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "data/task.h"

namespace amalgam {

inline constexpr const char* kPreprocessorConfigFile = "preprocessor_config.json";

// PIL's resampling filters, numbered as PIL.Image.Resampling (HF's `resample`). NEAREST (0)
// is a different algorithm in PIL and is not supported.
enum class Resample : int { Lanczos = 1, Bilinear = 2, Bicubic = 3, Box = 4, Hamming = 5 };

// The fields of a preprocessor_config.json that change pixel values; CLIP's defaults.
struct ImageProcessorConfig {
  bool do_convert_rgb = true;
  bool do_resize = true;
  int64_t shortest_edge = 224;  // > 0: resize the shortest side to this, keeping the aspect
  int64_t resize_height = 0;    // used when shortest_edge == 0: resize to exactly this
  int64_t resize_width = 0;
  Resample resample = Resample::Bicubic;
  bool do_center_crop = true;
  int64_t crop_height = 224;
  int64_t crop_width = 224;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  // One value per channel; a single value applies to every channel.
  std::vector<double> image_mean = {0.48145466, 0.4578275, 0.40821073};
  std::vector<double> image_std = {0.26862954, 0.26130258, 0.27577711};

  // Parses a preprocessor_config.json; keys it does not know are ignored (HF configs carry
  // many), known keys of the wrong type are InputErrors naming `file` and the key.
  static ImageProcessorConfig from_json(const nlohmann::json& j, const std::filesystem::path& file);
  // A CLIPImageProcessor config that transformers loads unchanged.
  nlohmann::ordered_json to_json() const;

  // InputError when this config cannot feed a model with `channels` input channels (the
  // mean and std have another number of values).
  void check_channels(int64_t channels) const;
};

// CHECKPOINT/preprocessor_config.json when present, CLIP's defaults otherwise.
ImageProcessorConfig load_image_processor_config(const std::filesystem::path& checkpoint_dir);

// (height, width) after the resize step, as HF's get_resize_output_image_size computes it:
// the short side becomes shortest_edge and the long side int(shortest_edge * long / short).
std::pair<int64_t, int64_t> resize_output_size(const ImageProcessorConfig& config, int64_t height, int64_t width);
// The preprocessed image's shape (stored CHW: channels, then height, width).
ImageShape preprocessed_shape(const ImageProcessorConfig& config, ImageShape input, int64_t channels);

// Gray (1) <-> RGB (3): gray is replicated; RGB becomes ITU-R 601-2 luma in PIL's
// fixed point, (19595 R + 38470 G + 7471 B + 2^15) >> 16, as PIL's convert("L").
std::vector<uint8_t> convert_channels(std::span<const uint8_t> image, ImageShape shape, int64_t channels);

// PIL's Image.resize for uint8 images with any number of interleaved channels. The
// coefficients depend only on the sizes, so one resizer serves a whole batch.
class ImageResizer {
 public:
  ImageResizer(int64_t in_height, int64_t in_width, int64_t out_height, int64_t out_width, Resample filter);
  // `src` is in_height x in_width x channels, `dst` out_height x out_width x channels.
  void resize(std::span<const uint8_t> src, int64_t channels, std::span<uint8_t> dst) const;

 private:
  // One pass's coefficients: for each output position, the first input index and the
  // fixed-point weights of the inputs from there.
  struct Pass {
    int64_t ksize = 0;
    std::vector<int64_t> first;
    std::vector<int64_t> count;
    std::vector<int32_t> weights;  // [out][ksize]
  };
  static Pass plan(int64_t in_size, int64_t out_size, Resample filter);

  int64_t in_h_, in_w_, out_h_, out_w_;
  Pass horizontal_, vertical_;
};

std::vector<uint8_t> resize_image(std::span<const uint8_t> image, ImageShape shape, int64_t height, int64_t width,
                                  Resample filter);

// Preprocesses one U8 HWC image into `out` (channels x H x W floats, preprocessed_shape).
void preprocess_image(std::span<const uint8_t> image, ImageShape shape, const ImageProcessorConfig& config,
                      int64_t channels, std::span<float> out);

// Preprocesses images[indices] (images: U8 [N, H, W, C]) on all cores into a [B, C, H, W]
// batch, as HF's pixel_values.
std::vector<float> preprocess_batch(const Tensor& images, std::span<const int64_t> indices,
                                    const ImageProcessorConfig& config, int64_t channels);
// The same into `out` (B * preprocessed_shape(...).bytes() floats): a buffer reused across
// batches saves zero-filling and page-faulting a fresh one each time, which costs as much
// as the preprocessing itself.
void preprocess_batch(const Tensor& images, std::span<const int64_t> indices, const ImageProcessorConfig& config,
                      int64_t channels, std::span<float> out);

}  // namespace amalgam
