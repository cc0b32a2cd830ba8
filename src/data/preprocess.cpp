#include "data/preprocess.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numbers>
#include <optional>
#include <stdexcept>
#include <string>

#include "core/error.h"
#include "core/parallel.h"
#include "io/json_file.h"

namespace amalgam {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int64_t kMaxSide = 1 << 16;

[[noreturn]] void bad_key(const fs::path& file, const std::string& key, const std::string& problem) {
  throw InputError(file, "key '" + key + "': " + problem);
}

// The value of `key` when present and not null.
const json* find(const json& j, const char* key) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

void read_bool(const json& j, const char* key, bool& out, const fs::path& file) {
  const json* v = find(j, key);
  if (!v) return;
  if (!v->is_boolean()) bad_key(file, key, v->dump() + " is not true or false");
  out = v->get<bool>();
}

int64_t side(const json& v, const fs::path& file, const std::string& key) {
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > kMaxSide)
    bad_key(file, key, v.dump() + " is not a size in pixels (1 to " + std::to_string(kMaxSide) + ")");
  return v.get<int64_t>();
}

// {"height": h, "width": w} or [h, w].
std::optional<std::pair<int64_t, int64_t>> height_width(const json& v, const fs::path& file, const std::string& key) {
  if (v.is_array() && v.size() == 2) return std::pair{side(v[0], file, key + "[0]"), side(v[1], file, key + "[1]")};
  if (v.is_object() && v.contains("height") && v.contains("width"))
    return std::pair{side(v["height"], file, key + ".height"), side(v["width"], file, key + ".width")};
  return std::nullopt;
}

// HF's `size`: an int or {"shortest_edge": n} (shortest edge, aspect kept), or
// {"height", "width"} / [h, w] (exact).
void read_size(const json& j, ImageProcessorConfig& c, const fs::path& file) {
  const json* v = find(j, "size");
  if (!v) return;
  if (v->is_number()) {
    c.shortest_edge = side(*v, file, "size");
  } else if (v->is_object() && v->contains("shortest_edge") && !v->contains("longest_edge")) {
    c.shortest_edge = side((*v)["shortest_edge"], file, "size.shortest_edge");
  } else if (const auto hw = height_width(*v, file, "size")) {
    c.shortest_edge = 0;
    std::tie(c.resize_height, c.resize_width) = *hw;
  } else {
    bad_key(file, "size", v->dump() + " is not N, {\"shortest_edge\": N} or {\"height\": H, \"width\": W}");
  }
}

void read_crop_size(const json& j, ImageProcessorConfig& c, const fs::path& file) {
  const json* v = find(j, "crop_size");
  if (!v) return;
  if (v->is_number()) {
    c.crop_height = c.crop_width = side(*v, file, "crop_size");
  } else if (const auto hw = height_width(*v, file, "crop_size")) {
    std::tie(c.crop_height, c.crop_width) = *hw;
  } else {
    bad_key(file, "crop_size", v->dump() + " is not N or {\"height\": H, \"width\": W}");
  }
}

// A number (every channel) or a non-empty array of numbers.
std::vector<double> read_per_channel(const json& v, const fs::path& file, const char* key, bool nonzero) {
  const json values = v.is_array() ? v : json::array({v});
  if (values.empty()) bad_key(file, key, "is empty");
  std::vector<double> out;
  for (const auto& x : values) {
    if (!x.is_number() || !std::isfinite(x.get<double>()) || (nonzero && x.get<double>() == 0))
      bad_key(file, key, x.dump() + " is not a " + (nonzero ? "non-zero " : "") + "finite number");
    out.push_back(x.get<double>());
  }
  return out;
}

// PIL's filters (Resample.c), evaluated exactly as PIL does so that the quantized weights,
// and so the output bytes, are the same. Fused multiply-adds would change the last bits of
// the weights, so contraction is off for the coefficient code.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * std::numbers::pi;
  return std::sin(x) / x;
}

double filter_weight(Resample filter, double x) {
  switch (filter) {
    case Resample::Box:
      return x > -0.5 && x <= 0.5 ? 1.0 : 0.0;
    case Resample::Bilinear:
      x = std::fabs(x);
      return x < 1.0 ? 1.0 - x : 0.0;
    case Resample::Hamming:
      x = std::fabs(x);
      if (x == 0.0) return 1.0;
      if (x >= 1.0) return 0.0;
      x = x * std::numbers::pi;
      // PIL writes these constants as floats.
      return std::sin(x) / x * (static_cast<double>(0.54f) + static_cast<double>(0.46f) * std::cos(x));
    case Resample::Bicubic: {
      constexpr double a = -0.5;  // PIL's (and Keys') choice
      x = std::fabs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    }
    case Resample::Lanczos:
      return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0;
  }
  return 0.0;
}

double filter_support(Resample filter) {
  switch (filter) {
    case Resample::Box:
      return 0.5;
    case Resample::Bilinear:
    case Resample::Hamming:
      return 1.0;
    case Resample::Bicubic:
      return 2.0;
    case Resample::Lanczos:
      return 3.0;
  }
  throw std::invalid_argument("unknown resampling filter");
}

}  // namespace

// PIL's precompute_coeffs + normalize_coeffs_8bpc.
ImageResizer::Pass ImageResizer::plan(int64_t in_size, int64_t out_size, Resample filter) {
  constexpr double kOne = 1 << 22;  // PIL's PRECISION_BITS
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filterscale = std::max(scale, 1.0);  // downscaling widens the kernel: antialiasing
  const double support = filter_support(filter) * filterscale;
  Pass p;
  p.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  p.first.resize(static_cast<size_t>(out_size));
  p.count.resize(static_cast<size_t>(out_size));
  p.weights.assign(static_cast<size_t>(out_size * p.ksize), 0);
  std::vector<double> k(static_cast<size_t>(p.ksize));
  for (int64_t xx = 0; xx < out_size; ++xx) {
    const double center = (static_cast<double>(xx) + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // C's truncating conversions, as PIL rounds these.
    const int64_t xmin = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    const int64_t xmax = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), in_size) - xmin;
    double ww = 0.0;
    for (int64_t x = 0; x < xmax; ++x) {
      const double w = filter_weight(filter, (static_cast<double>(x + xmin) - center + 0.5) * ss);
      k[static_cast<size_t>(x)] = w;
      ww += w;
    }
    int32_t* out = &p.weights[static_cast<size_t>(xx * p.ksize)];
    for (int64_t x = 0; x < xmax; ++x) {
      double w = k[static_cast<size_t>(x)];
      if (ww != 0.0) w /= ww;
      out[x] = static_cast<int32_t>(w < 0 ? -0.5 + w * kOne : 0.5 + w * kOne);
    }
    p.first[static_cast<size_t>(xx)] = xmin;
    p.count[static_cast<size_t>(xx)] = xmax;
  }
  return p;
}

#pragma GCC pop_options

namespace {

// PIL's clip8: drop the fraction bits (rounding was folded into the accumulator's start).
inline uint8_t clip8(int32_t acc) {
  return static_cast<uint8_t>(std::clamp(acc >> 22, 0, 255));
}

constexpr int32_t kHalf = 1 << 21;

}  // namespace

ImageResizer::ImageResizer(int64_t in_height, int64_t in_width, int64_t out_height, int64_t out_width, Resample filter)
    : in_h_(in_height), in_w_(in_width), out_h_(out_height), out_w_(out_width) {
  for (const int64_t s : {in_height, in_width, out_height, out_width})
    if (s < 1 || s > kMaxSide) throw std::invalid_argument("ImageResizer: size out of range");
  horizontal_ = plan(in_width, out_width, filter);
  vertical_ = plan(in_height, out_height, filter);
}

void ImageResizer::resize(std::span<const uint8_t> src, int64_t channels, std::span<uint8_t> dst) const {
  const auto c = static_cast<size_t>(channels);
  if (src.size() != static_cast<size_t>(in_h_ * in_w_) * c || dst.size() != static_cast<size_t>(out_h_ * out_w_) * c)
    throw std::invalid_argument("ImageResizer::resize: buffer sizes do not match the planned sizes");
  // PIL skips a pass whose size does not change (its weights would be the identity anyway)
  // and runs the horizontal pass only over the rows the vertical pass reads.
  const bool need_h = out_w_ != in_w_, need_v = out_h_ != in_h_;
  const int64_t row_first = need_v ? vertical_.first.front() : 0;
  const int64_t row_last = need_v ? vertical_.first.back() + vertical_.count.back() : in_h_;
  std::vector<uint8_t> tmp;
  const uint8_t* rows = src.data();  // rows [row_first, row_last) of the horizontally resized image
  if (need_h) {
    tmp.resize(static_cast<size_t>((row_last - row_first) * out_w_) * c);
    for (int64_t y = row_first; y < row_last; ++y) {
      const uint8_t* in = src.data() + static_cast<size_t>(y * in_w_) * c;
      uint8_t* out = tmp.data() + static_cast<size_t>((y - row_first) * out_w_) * c;
      for (int64_t xx = 0; xx < out_w_; ++xx) {
        const int32_t* k = &horizontal_.weights[static_cast<size_t>(xx * horizontal_.ksize)];
        const uint8_t* px = in + static_cast<size_t>(horizontal_.first[static_cast<size_t>(xx)]) * c;
        const int64_t n = horizontal_.count[static_cast<size_t>(xx)];
        for (size_t ch = 0; ch < c; ++ch) {
          int32_t acc = kHalf;
          for (int64_t x = 0; x < n; ++x) acc += px[static_cast<size_t>(x) * c + ch] * k[x];
          out[static_cast<size_t>(xx) * c + ch] = clip8(acc);
        }
      }
    }
    rows = tmp.data();
  } else {
    rows += static_cast<size_t>(row_first * in_w_) * c;
  }
  const auto row_len = static_cast<size_t>(out_w_) * c;
  if (!need_v) {
    std::copy_n(rows, dst.size(), dst.data());
    return;
  }
  std::vector<int32_t> acc(row_len);
  for (int64_t yy = 0; yy < out_h_; ++yy) {
    const int32_t* k = &vertical_.weights[static_cast<size_t>(yy * vertical_.ksize)];
    const int64_t first = vertical_.first[static_cast<size_t>(yy)] - row_first;
    std::fill(acc.begin(), acc.end(), kHalf);
    for (int64_t y = 0; y < vertical_.count[static_cast<size_t>(yy)]; ++y) {
      const uint8_t* in = rows + static_cast<size_t>(first + y) * row_len;
      const int32_t w = k[y];
      for (size_t j = 0; j < row_len; ++j) acc[j] += in[j] * w;
    }
    uint8_t* out = dst.data() + static_cast<size_t>(yy) * row_len;
    for (size_t j = 0; j < row_len; ++j) out[j] = clip8(acc[j]);
  }
}

std::vector<uint8_t> resize_image(std::span<const uint8_t> image, ImageShape shape, int64_t height, int64_t width,
                                  Resample filter) {
  std::vector<uint8_t> out(static_cast<size_t>(height * width * shape.channels));
  ImageResizer(shape.height, shape.width, height, width, filter).resize(image, shape.channels, out);
  return out;
}

std::vector<uint8_t> convert_channels(std::span<const uint8_t> image, ImageShape shape, int64_t channels) {
  const auto pixels = static_cast<size_t>(shape.height * shape.width);
  if (image.size() != pixels * static_cast<size_t>(shape.channels))
    throw std::invalid_argument("convert_channels: buffer size does not match the shape");
  if (shape.channels == channels) return {image.begin(), image.end()};
  std::vector<uint8_t> out(pixels * static_cast<size_t>(channels));
  if (shape.channels == 1 && channels == 3) {
    for (size_t i = 0; i < pixels; ++i) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = image[i];
  } else if (shape.channels == 3 && channels == 1) {
    for (size_t i = 0; i < pixels; ++i) {
      const uint32_t r = image[3 * i], g = image[3 * i + 1], b = image[3 * i + 2];
      out[i] = static_cast<uint8_t>((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
    }
  } else {
    throw std::invalid_argument("convert_channels: only gray (1) <-> RGB (3)");
  }
  return out;
}

ImageProcessorConfig ImageProcessorConfig::from_json(const json& j, const fs::path& file) {
  if (!j.is_object()) throw InputError(file, "not a preprocessor config (expected a JSON object)");
  ImageProcessorConfig c;
  read_bool(j, "do_convert_rgb", c.do_convert_rgb, file);
  read_bool(j, "do_resize", c.do_resize, file);
  read_bool(j, "do_center_crop", c.do_center_crop, file);
  read_bool(j, "do_rescale", c.do_rescale, file);
  read_bool(j, "do_normalize", c.do_normalize, file);
  read_size(j, c, file);
  read_crop_size(j, c, file);
  if (const json* v = find(j, "resample")) {
    if (!v->is_number_integer() || v->get<int64_t>() < 1 || v->get<int64_t>() > 5)
      bad_key(file, "resample",
              v->dump() + " is not a supported PIL filter (1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)");
    c.resample = static_cast<Resample>(v->get<int>());
  }
  if (const json* v = find(j, "rescale_factor")) {
    if (!v->is_number() || !(v->get<double>() > 0) || !std::isfinite(v->get<double>()))
      bad_key(file, "rescale_factor", v->dump() + " is not a positive number");
    c.rescale_factor = v->get<double>();
  }
  if (const json* v = find(j, "image_mean")) c.image_mean = read_per_channel(*v, file, "image_mean", false);
  if (const json* v = find(j, "image_std")) c.image_std = read_per_channel(*v, file, "image_std", true);
  return c;
}

nlohmann::ordered_json ImageProcessorConfig::to_json() const {
  nlohmann::ordered_json j;
  j["image_processor_type"] = "CLIPImageProcessor";
  j["do_convert_rgb"] = do_convert_rgb;
  j["do_resize"] = do_resize;
  if (shortest_edge > 0)
    j["size"] = {{"shortest_edge", shortest_edge}};
  else
    j["size"] = {{"height", resize_height}, {"width", resize_width}};
  j["resample"] = static_cast<int>(resample);
  j["do_center_crop"] = do_center_crop;
  j["crop_size"] = {{"height", crop_height}, {"width", crop_width}};
  j["do_rescale"] = do_rescale;
  j["rescale_factor"] = rescale_factor;
  j["do_normalize"] = do_normalize;
  j["image_mean"] = image_mean;
  j["image_std"] = image_std;
  return j;
}

void ImageProcessorConfig::check_channels(int64_t channels) const {
  if (channels != 1 && channels != 3)
    throw InputError("the model has " + std::to_string(channels) +
                     " input channels; amalgam feeds 1 (gray) or 3 (RGB)");
  for (const auto* values : {&image_mean, &image_std})
    if (do_normalize && values->size() != 1 && values->size() != static_cast<size_t>(channels))
      throw InputError(std::string("preprocessor config: ") + (values == &image_mean ? "image_mean" : "image_std") +
                       " has " + std::to_string(values->size()) + " values but the model has " +
                       std::to_string(channels) + " input channels");
}

ImageProcessorConfig load_image_processor_config(const fs::path& checkpoint_dir) {
  const fs::path file = checkpoint_dir / kPreprocessorConfigFile;
  std::error_code ec;
  if (!fs::exists(file, ec)) return {};
  return ImageProcessorConfig::from_json(read_json_file(file), file);
}

std::pair<int64_t, int64_t> resize_output_size(const ImageProcessorConfig& config, int64_t height, int64_t width) {
  if (!config.do_resize) return {height, width};
  if (config.shortest_edge <= 0) return {config.resize_height, config.resize_width};
  const int64_t short_side = std::min(height, width), long_side = std::max(height, width);
  // Python's int(a * b / c): a correctly rounded double quotient, truncated.
  const auto new_long =
      static_cast<int64_t>(static_cast<double>(config.shortest_edge * long_side) / static_cast<double>(short_side));
  if (width <= height) return {new_long, config.shortest_edge};
  return {config.shortest_edge, new_long};
}

ImageShape preprocessed_shape(const ImageProcessorConfig& config, ImageShape input, int64_t channels) {
  if (config.do_center_crop) return {config.crop_height, config.crop_width, channels};
  const auto [h, w] = resize_output_size(config, input.height, input.width);
  return {h, w, channels};
}

namespace {

// The pipeline for one input shape, planned once per batch.
class Pipeline {
 public:
  Pipeline(const ImageProcessorConfig& config, ImageShape input, int64_t channels)
      : input_(input), channels_(channels), out_(preprocessed_shape(config, input, channels)) {
    config.check_channels(channels);
    if (input.channels != 1 && input.channels != 3)
      throw std::invalid_argument("preprocess: images must have 1 or 3 channels");
    // Gray to RGB replicates one plane, and every later step treats planes alike, so the
    // work is done on the gray plane and replicated at the end: the same bytes, a third
    // of the work.
    work_channels_ = input.channels == 3 && channels == 3 ? 3 : 1;
    std::tie(resized_h_, resized_w_) = resize_output_size(config, input.height, input.width);
    if (resized_h_ != input.height || resized_w_ != input.width)
      resizer_.emplace(input.height, input.width, resized_h_, resized_w_, config.resample);
    // HF's center_crop: top = (h - crop_h) // 2 (floor, so negative when padding).
    top_ = floor_half(resized_h_ - out_.height);
    left_ = floor_half(resized_w_ - out_.width);
    build_lookup(config);
  }

  const ImageShape& output() const { return out_; }

  void run(std::span<const uint8_t> image, std::span<float> out) const {
    if (out.size() != static_cast<size_t>(out_.bytes()))
      throw std::invalid_argument("preprocess: output buffer does not match the preprocessed shape");
    std::vector<uint8_t> converted, resized;
    std::span<const uint8_t> work = image;
    if (input_.channels != work_channels_) {
      converted = convert_channels(image, input_, work_channels_);
      work = converted;
    }
    if (resizer_) {
      resized.resize(static_cast<size_t>(resized_h_ * resized_w_ * work_channels_));
      resizer_->resize(work, work_channels_, resized);
      work = resized;
    }
    crop_and_normalize(work, out);
  }

 private:
  static int64_t floor_half(int64_t x) { return x >= 0 ? x / 2 : -((-x + 1) / 2); }

  // Every output value is a function of (channel, byte): rescale and normalize in exactly
  // HF's arithmetic (float64 rescale cast to float32, then float32 (x - mean) / std).
  void build_lookup(const ImageProcessorConfig& config) {
    lookup_.resize(static_cast<size_t>(channels_));
    for (int64_t c = 0; c < channels_; ++c) {
      const auto pick = [c](const std::vector<double>& v) { return v.size() == 1 ? v[0] : v[static_cast<size_t>(c)]; };
      const auto mean = static_cast<float>(pick(config.image_mean));
      const auto stddev = static_cast<float>(pick(config.image_std));
      for (int v = 0; v < 256; ++v) {
        float x = config.do_rescale ? static_cast<float>(v * config.rescale_factor) : static_cast<float>(v);
        if (config.do_normalize) x = (x - mean) / stddev;
        lookup_[static_cast<size_t>(c)][static_cast<size_t>(v)] = x;
      }
    }
  }

  void crop_and_normalize(std::span<const uint8_t> work, std::span<float> out) const {
    const auto wc = static_cast<size_t>(work_channels_);
    for (int64_t c = 0; c < channels_; ++c) {
      const auto& lut = lookup_[static_cast<size_t>(c)];
      const size_t plane_channel = work_channels_ == 1 ? 0 : static_cast<size_t>(c);
      float* dst = out.data() + static_cast<size_t>(c * out_.height * out_.width);
      for (int64_t y = 0; y < out_.height; ++y) {
        const int64_t sy = top_ + y;
        for (int64_t x = 0; x < out_.width; ++x) {
          const int64_t sx = left_ + x;
          const bool inside = sy >= 0 && sy < resized_h_ && sx >= 0 && sx < resized_w_;
          const uint8_t v = inside ? work[static_cast<size_t>(sy * resized_w_ + sx) * wc + plane_channel] : 0;
          *dst++ = lut[v];
        }
      }
    }
  }

  ImageShape input_;
  int64_t channels_;
  ImageShape out_;
  int64_t work_channels_ = 1;
  int64_t resized_h_ = 0, resized_w_ = 0;
  std::optional<ImageResizer> resizer_;
  int64_t top_ = 0, left_ = 0;
  std::vector<std::array<float, 256>> lookup_;
};

}  // namespace

void preprocess_image(std::span<const uint8_t> image, ImageShape shape, const ImageProcessorConfig& config,
                      int64_t channels, std::span<float> out) {
  if (image.size() != static_cast<size_t>(shape.bytes()))
    throw std::invalid_argument("preprocess_image: buffer size does not match the shape");
  Pipeline(config, shape, channels).run(image, out);
}

void preprocess_batch(const Tensor& images, std::span<const int64_t> indices, const ImageProcessorConfig& config,
                      int64_t channels, std::span<float> out) {
  if (images.dtype() != DType::U8 || images.rank() != 4)
    throw std::invalid_argument("preprocess_batch: images must be U8 [N, H, W, C]");
  const ImageShape input{images.dim(1), images.dim(2), images.dim(3)};
  const Pipeline pipeline(config, input, channels);
  const auto per_image = static_cast<size_t>(pipeline.output().bytes());
  if (out.size() != indices.size() * per_image)
    throw std::invalid_argument("preprocess_batch: output buffer does not match the batch");
  const auto image_bytes = static_cast<size_t>(input.bytes());
  const auto* base = reinterpret_cast<const uint8_t*>(images.bytes().data());
  parallel_for(indices.size(), [&](size_t b) {
    const int64_t i = indices[b];
    if (i < 0 || i >= images.dim(0)) throw std::out_of_range("preprocess_batch: index " + std::to_string(i));
    pipeline.run({base + static_cast<size_t>(i) * image_bytes, image_bytes}, out.subspan(b * per_image, per_image));
  });
}

std::vector<float> preprocess_batch(const Tensor& images, std::span<const int64_t> indices,
                                    const ImageProcessorConfig& config, int64_t channels) {
  if (images.rank() != 4) throw std::invalid_argument("preprocess_batch: images must be U8 [N, H, W, C]");
  const ImageShape input{images.dim(1), images.dim(2), images.dim(3)};
  std::vector<float> out(indices.size() * static_cast<size_t>(preprocessed_shape(config, input, channels).bytes()));
  preprocess_batch(images, indices, config, channels, out);
  return out;
}

}  // namespace amalgam
