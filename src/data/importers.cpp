#include "data/importers.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "data/preprocess.h"
#include "io/json_file.h"

// stb_image is a single-header library: its implementation is compiled here, once, with
// only the decoders amalgam accepts. It is third-party code, so the project's warnings are
// not applied to it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wall"
#pragma GCC diagnostic ignored "-Wextra"
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_NO_STDIO
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

namespace amalgam {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kMaxSide = 1 << 16;
constexpr uint8_t kIdxUnsignedByte = 0x08;
// Deflate cannot compress better than about 1032:1, so a gzipped file whose header
// promises more data than that is truncated or lying; checked before allocating.
constexpr uint64_t kMaxDeflateRatio = 1032;

// Reads an IDX file, gzipped or not (zlib's gz* functions read both).
class IdxReader {
 public:
  explicit IdxReader(const fs::path& path) : path_(path) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) throw InputError(path, "no such file");
    file_bytes_ = fs::file_size(path, ec);
    gzip_ = starts_with_gzip_magic(path);
    gz_.reset(gzopen(path.c_str(), "rb"));
    if (!gz_) throw InputError(path, std::string("cannot open: ") + std::strerror(errno));
    gzbuffer(gz_.get(), 1 << 20);
  }

  const fs::path& path() const { return path_; }

  // The most data bytes the file can hold after a header of `header` bytes.
  uint64_t capacity(uint64_t header) const {
    if (gzip_) return file_bytes_ * kMaxDeflateRatio + 1024;
    return file_bytes_ > header ? file_bytes_ - header : 0;
  }

  void read(void* dst, uint64_t n, const std::string& what) {
    auto* p = static_cast<char*>(dst);
    while (n > 0) {
      const auto chunk = static_cast<unsigned>(std::min<uint64_t>(n, 1u << 30));
      const int got = gzread(gz_.get(), p, chunk);
      if (got < 0) throw InputError(path_, "corrupt gzip data while reading " + what + ": " + error_text());
      if (got == 0) throw InputError(path_, "truncated: the file ends in the middle of the " + what);
      p += got;
      n -= static_cast<uint64_t>(got);
    }
  }

  // After the data: nothing may follow, and a gzip stream must have ended cleanly (its
  // checksum is verified at its end).
  void expect_end() {
    char extra[256];
    const int got = gzread(gz_.get(), extra, sizeof extra);
    int errnum = Z_OK;
    gzerror(gz_.get(), &errnum);
    if (got < 0 || (errnum != Z_OK && errnum != Z_BUF_ERROR))
      throw InputError(path_, "corrupt gzip data: " + error_text());
    if (errnum == Z_BUF_ERROR) throw InputError(path_, "truncated: the gzip stream ends early");
    if (got > 0) throw InputError(path_, "unexpected bytes after the data the header describes");
  }

 private:
  static bool starts_with_gzip_magic(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    unsigned char magic[2] = {0, 0};
    in.read(reinterpret_cast<char*>(magic), 2);
    return in && magic[0] == 0x1f && magic[1] == 0x8b;
  }

  std::string error_text() {
    int errnum = Z_OK;
    const char* msg = gzerror(gz_.get(), &errnum);
    return msg && *msg ? msg : "zlib error " + std::to_string(errnum);
  }

  struct GzClose {
    void operator()(gzFile f) const { gzclose(f); }
  };

  fs::path path_;
  uint64_t file_bytes_ = 0;
  bool gzip_ = false;
  std::unique_ptr<gzFile_s, GzClose> gz_;
};

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// Reads the magic and dimensions; returns the dimensions and checks the payload fits.
std::vector<int64_t> read_idx_header(IdxReader& in, int ndims, const char* kind) {
  unsigned char b[4];
  in.read(b, 4, "header");
  const uint32_t magic = (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
  const uint32_t expected = (uint32_t{kIdxUnsignedByte} << 8) | static_cast<uint32_t>(ndims);
  if (magic != expected)
    throw InputError(in.path(), std::string("not an IDX ") + kind + " file: magic " + hex32(magic) + ", expected " +
                                    hex32(expected) + " (unsigned bytes, " + std::to_string(ndims) + " dimensions)");
  std::vector<int64_t> dims;
  uint64_t total = 1;
  for (int d = 0; d < ndims; ++d) {
    in.read(b, 4, "header");
    const uint32_t v = (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
    if (v == 0 || (d > 0 && v > kMaxSide))
      throw InputError(in.path(), "dimension " + std::to_string(d) + " is " + std::to_string(v) + ", not a valid size");
    dims.push_back(v);
    total *= v;  // at most 2^32 * 2^16 * 2^16: no overflow
  }
  const uint64_t header = 4 + 4 * static_cast<uint64_t>(ndims);
  if (total > in.capacity(header))
    throw InputError(in.path(), "truncated: the header promises " + std::to_string(total) +
                                    " bytes of data, more than the file can hold");
  return dims;
}

// Drops an alpha channel: gray+alpha -> gray, RGBA -> RGB.
std::vector<uint8_t> drop_alpha(const uint8_t* pixels, size_t count, int channels) {
  const int keep = channels - 1;
  std::vector<uint8_t> out(count * static_cast<size_t>(keep));
  for (size_t i = 0; i < count; ++i)
    for (int c = 0; c < keep; ++c)
      out[i * static_cast<size_t>(keep) + static_cast<size_t>(c)] = pixels[i * static_cast<size_t>(channels) + c];
  return out;
}

bool is_image_file(const fs::directory_entry& entry) {
  const std::string name = entry.path().filename().string();
  if (name.empty() || name[0] == '.') return false;
  std::error_code ec;
  if (!entry.is_regular_file(ec)) return false;
  std::string ext = entry.path().extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

std::vector<fs::path> image_files(const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (is_image_file(entry)) files.push_back(entry.path());
  if (ec) throw InputError(dir, "cannot list: " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

// The image as the task stores it: `channels` channels and height x width.
std::vector<uint8_t> fit_image(DecodedImage image, const ImageShape& target, bool resize, const fs::path& file) {
  std::vector<uint8_t> pixels = convert_channels(image.pixels, image.shape, target.channels);
  const ImageShape converted{image.shape.height, image.shape.width, target.channels};
  if (converted == target) return pixels;
  if (!resize)
    throw InputError(file, "image is " + std::to_string(image.shape.height) + "x" + std::to_string(image.shape.width) +
                               " but the task's images are " + std::to_string(target.height) + "x" +
                               std::to_string(target.width) + " (pass --size HxW to resize on import)");
  return resize_image(pixels, converted, target.height, target.width, Resample::Bicubic);
}

}  // namespace

Tensor read_idx_images(const fs::path& file) {
  IdxReader in(file);
  const auto dims = read_idx_header(in, 3, "image");
  Tensor images = Tensor::uninitialized(DType::U8, {dims[0], dims[1], dims[2], 1});
  in.read(images.mutable_bytes().data(), images.nbytes(), "image data");
  in.expect_end();
  return images;
}

std::vector<int64_t> read_idx_labels(const fs::path& file) {
  IdxReader in(file);
  const auto dims = read_idx_header(in, 1, "label");
  std::vector<uint8_t> bytes(static_cast<size_t>(dims[0]));
  in.read(bytes.data(), bytes.size(), "label data");
  in.expect_end();
  return {bytes.begin(), bytes.end()};
}

TaskSplit import_idx_split(std::string split, const fs::path& images, const fs::path& labels) {
  TaskSplit out;
  out.name = std::move(split);
  out.images = read_idx_images(images);
  out.labels = read_idx_labels(labels);
  if (out.size() != out.images.dim(0))
    throw InputError(labels, "has " + std::to_string(out.size()) + " labels but " + images.string() + " has " +
                                 std::to_string(out.images.dim(0)) + " images");
  return out;
}

DecodedImage decode_image_file(const fs::path& file) {
  const std::string bytes = read_text_file(file, 1u << 30);
  int w = 0, h = 0, n = 0;
  std::unique_ptr<uint8_t, decltype(&stbi_image_free)> pixels(
      stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &w, &h, &n,
                            0),
      &stbi_image_free);
  if (!pixels) throw InputError(file, std::string("cannot decode image: ") + stbi_failure_reason());
  if (w < 1 || h < 1 || w > kMaxSide || h > kMaxSide || n < 1 || n > 4)
    throw InputError(file, "image of " + std::to_string(w) + "x" + std::to_string(h) + " pixels is not supported");
  DecodedImage out;
  const auto count = static_cast<size_t>(w) * static_cast<size_t>(h);
  if (n == 2 || n == 4) {
    out.pixels = drop_alpha(pixels.get(), count, n);
    --n;
  } else {
    out.pixels.assign(pixels.get(), pixels.get() + count * static_cast<size_t>(n));
  }
  out.shape = {h, w, n};
  return out;
}

std::vector<std::string> folder_class_names(const fs::path& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw InputError(root, "not a directory");
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.empty() && name[0] != '.' && entry.is_directory(ec)) names.push_back(name);
  }
  if (ec) throw InputError(root, "cannot list: " + ec.message());
  if (names.empty()) throw InputError(root, "no class directories (expected ROOT/<class>/<image>)");
  std::sort(names.begin(), names.end());
  return names;
}

TaskSplit import_image_folder(const fs::path& root, std::string split, const std::vector<std::string>& classes,
                              const ImageFolderOptions& options) {
  if (options.channels != 0 && options.channels != 1 && options.channels != 3)
    throw InputError("--channels must be 1 or 3, not " + std::to_string(options.channels));
  std::vector<fs::path> files;
  std::vector<int64_t> labels;
  for (const auto& dir : folder_class_names(root)) {
    const auto it = std::find(classes.begin(), classes.end(), dir);
    if (it == classes.end()) throw InputError(root / dir, "is not one of the task's classes");
    for (auto& f : image_files(root / dir)) {
      files.push_back(std::move(f));
      labels.push_back(it - classes.begin());
    }
  }
  // Files were gathered in directory-name order; the task orders examples by label.
  std::vector<size_t> order(files.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return labels[a] < labels[b]; });
  if (files.empty()) throw InputError(root, "no images (.png, .jpg, .jpeg, .bmp) in its class directories");

  DecodedImage first = decode_image_file(files[order[0]]);
  ImageShape target;
  target.channels = options.channels != 0 ? options.channels : (first.shape.channels == 1 ? 1 : 3);
  target.height = options.height != 0 ? options.height : first.shape.height;
  target.width = options.width != 0 ? options.width : first.shape.width;

  TaskSplit out;
  out.name = std::move(split);
  const auto n = static_cast<int64_t>(files.size());
  out.images = Tensor::uninitialized(DType::U8, {n, target.height, target.width, target.channels});
  out.labels.resize(files.size());
  auto* dst = reinterpret_cast<uint8_t*>(out.images.mutable_bytes().data());
  const auto image_bytes = static_cast<size_t>(target.bytes());
  parallel_for(files.size(), [&](size_t i) {
    check_interrupt();
    const fs::path& file = files[order[i]];
    const auto pixels = fit_image(i == 0 ? std::move(first) : decode_image_file(file), target, options.resize, file);
    std::copy(pixels.begin(), pixels.end(), dst + i * image_bytes);
    out.labels[i] = labels[order[i]];
  });
  return out;
}

}  // namespace amalgam
