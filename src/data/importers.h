// Importers that turn common image-classification data into task splits (data/task.h).
//
// IDX is the MNIST format: a 4-byte magic (0, 0, type 0x08 = unsigned bytes, number of
// dimensions), big-endian uint32 dimensions, then the bytes; images are [N, rows, cols],
// labels [N]. Files may be gzipped (as distributed) or not.
//
// Image folders are ROOT/<class name>/<image>.{png,jpg,jpeg,bmp}: classes sorted by name,
// files sorted by name within a class. Images are decoded with stb_image; its JPEG decoder
// may differ from libjpeg's (PIL's) by a level or so in some pixels, PNG and BMP are exact.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/task.h"

namespace amalgam {

// Images of an IDX file (magic 0x00000803) as U8 [N, rows, cols, 1].
Tensor read_idx_images(const std::filesystem::path& file);
// Labels of an IDX file (magic 0x00000801).
std::vector<int64_t> read_idx_labels(const std::filesystem::path& file);
// A split from an IDX image file and its label file; their counts must match.
TaskSplit import_idx_split(std::string split, const std::filesystem::path& images, const std::filesystem::path& labels);

// A decoded image file: 1 channel (gray) or 3 (RGB); an alpha channel is dropped, as PIL's
// convert("RGB") and convert("L") drop it.
struct DecodedImage {
  ImageShape shape;
  std::vector<uint8_t> pixels;  // HWC
};
DecodedImage decode_image_file(const std::filesystem::path& file);

struct ImageFolderOptions {
  int64_t channels = 0;  // 1 or 3; 0: gray if the first image is gray, RGB otherwise
  int64_t height = 0;    // 0: the first image's height and width
  int64_t width = 0;
  // Images of another size are an error unless this is set; then they are resized to
  // height x width with preprocessing's bicubic (PIL's).
  bool resize = false;
};

// The class directories under `root`, sorted by name (hidden entries skipped).
std::vector<std::string> folder_class_names(const std::filesystem::path& root);

// Decodes root/<class>/<image> for every class in `classes` (label = index in `classes`);
// a class without a directory has no examples, a directory that is not a class is an
// error. Decoding runs on all cores.
TaskSplit import_image_folder(const std::filesystem::path& root, std::string split,
                              const std::vector<std::string>& classes, const ImageFolderOptions& options);

}  // namespace amalgam
