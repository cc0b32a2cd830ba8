// Task data (src/data/task, importers, preprocess): task directories, IDX and image-folder
// importers, deterministic sampling, and preprocessing checked against Pillow and NumPy
// (tests/reference/pil_resize.py) and hand-worked values.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "data/importers.h"
#include "data/preprocess.h"
#include "data/task.h"
#include "io/run_inputs.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::read_bytes;
using testing::run_amalgam;
using testing::TempDir;
using testing::write_bytes;

// The message of the InputError `fn` throws ("" if it throws none).
template <class Fn>
std::string input_error(Fn&& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_INPUT_ERROR(stmt, ...)                                                                     \
  do {                                                                                                    \
    const std::string msg_ = input_error([&] { (void)(stmt); });                                          \
    EXPECT_FALSE(msg_.empty()) << #stmt " did not throw InputError";                                      \
    for (const std::string part_ : {__VA_ARGS__}) EXPECT_NE(msg_.find(part_), std::string::npos) << msg_; \
  } while (0)

// Deterministic pseudo-random bytes (a small LCG), for test images.
std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t s = seed * 2654435761u + 1;
  for (auto& b : v) {
    s = s * 1664525u + 1013904223u;
    b = static_cast<uint8_t>(s >> 24);
  }
  return v;
}

std::string str(const std::vector<uint8_t>& v) {
  return {v.begin(), v.end()};
}

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

std::string idx_images(uint32_t n, uint32_t rows, uint32_t cols, const std::vector<uint8_t>& pixels) {
  return be32(0x803) + be32(n) + be32(rows) + be32(cols) + str(pixels);
}

std::string idx_labels(const std::vector<uint8_t>& labels) {
  return be32(0x801) + be32(static_cast<uint32_t>(labels.size())) + str(labels);
}

void write_gzip(const fs::path& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

// A PNG written from the specification: signature, IHDR, one zlib-compressed IDAT of
// filter-0 rows, IEND. color_type 0 = gray, 2 = RGB.
std::string png(uint32_t w, uint32_t h, int color_type, const std::vector<uint8_t>& pixels) {
  const auto chunk = [](const std::string& type, const std::string& data) {
    std::string body = type + data;
    const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
    return be32(static_cast<uint32_t>(data.size())) + body + be32(static_cast<uint32_t>(crc));
  };
  const size_t row = w * (color_type == 2 ? 3 : 1);
  std::string raw;
  for (uint32_t y = 0; y < h; ++y) raw += '\0' + str({pixels.begin() + y * row, pixels.begin() + (y + 1) * row});
  uLongf size = compressBound(raw.size());
  std::string z(size, '\0');
  compress(reinterpret_cast<Bytef*>(z.data()), &size, reinterpret_cast<const Bytef*>(raw.data()), raw.size());
  z.resize(size);
  const std::string ihdr = be32(w) + be32(h) + std::string{8, static_cast<char>(color_type), 0, 0, 0};
  return std::string("\x89PNG\r\n\x1a\n", 8) + chunk("IHDR", ihdr) + chunk("IDAT", z) + chunk("IEND", "");
}

std::string le(uint32_t v, int bytes) {
  std::string s;
  for (int i = 0; i < bytes; ++i) s += static_cast<char>(v >> (8 * i));
  return s;
}

// A 24-bit BMP from the specification: bottom-up rows of B, G, R padded to 4 bytes.
std::string bmp(uint32_t w, uint32_t h, const std::vector<uint8_t>& rgb) {
  const uint32_t row = (3 * w + 3) / 4 * 4;
  std::string data;
  for (uint32_t y = h; y-- > 0;) {
    std::string r;
    for (uint32_t x = 0; x < w; ++x) {
      const size_t i = 3 * (y * w + x);
      r += {static_cast<char>(rgb[i + 2]), static_cast<char>(rgb[i + 1]), static_cast<char>(rgb[i])};
    }
    r.resize(row, '\0');
    data += r;
  }
  const std::string info = le(40, 4) + le(w, 4) + le(h, 4) + le(1, 2) + le(24, 2) + le(0, 4) +
                           le(static_cast<uint32_t>(data.size()), 4) + le(2835, 4) + le(2835, 4) + le(0, 4) + le(0, 4);
  return "BM" + le(static_cast<uint32_t>(14 + info.size() + data.size()), 4) + le(0, 4) + le(54, 4) + info + data;
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const auto* p = reinterpret_cast<const uint8_t*>(t.bytes().data());
  return {p, p + t.nbytes()};
}

TaskSplit make_split(const std::string& name, ImageShape shape, std::vector<int64_t> labels, uint32_t seed) {
  TaskSplit s;
  s.name = name;
  const auto n = static_cast<int64_t>(labels.size());
  s.images = Tensor::zeros(DType::U8, {n, shape.height, shape.width, shape.channels});
  const auto px = pattern(s.images.nbytes(), seed);
  std::memcpy(s.images.mutable_bytes().data(), px.data(), px.size());
  s.labels = std::move(labels);
  return s;
}

TaskInfo make_info() {
  TaskInfo info;
  info.name = "toy";
  info.classes = {"cat", "dog", "eel"};
  info.image = {4, 5, 3};
  return info;
}

// Runs tests/reference/pil_resize.py on `jobs` (one operation per line) in one Python
// process; fails the test when it fails.
void reference(const std::vector<std::string>& jobs, const TempDir& tmp) {
  std::string text;
  for (const auto& job : jobs) text += job + "\n";
  write_bytes(tmp / "jobs", text);
  const std::string cmd = "/usr/bin/python3 " + std::string(AMALGAM_SOURCE_DIR) +
                          "/tests/reference/pil_resize.py --jobs " + (tmp / "jobs").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << " failed (python3-pil and python3-numpy: scripts/setup-deps.sh)";
}

// ---------------------------------------------------------------- IDX

TEST(Idx, ReadsPlainAndGzippedFiles) {
  TempDir tmp;
  const std::vector<uint8_t> pixels = {0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255};  // 2 images of 2x3
  write_bytes(tmp / "img", idx_images(2, 2, 3, pixels));
  write_gzip(tmp / "img.gz", idx_images(2, 2, 3, pixels));
  write_bytes(tmp / "lab", idx_labels({7, 3}));
  write_gzip(tmp / "lab.gz", idx_labels({7, 3}));
  for (const char* name : {"img", "img.gz"}) {
    const Tensor t = read_idx_images(tmp / name);
    EXPECT_EQ(t.dtype(), DType::U8);
    EXPECT_EQ(t.shape(), (Shape{2, 2, 3, 1}));
    EXPECT_EQ(bytes_of(t), pixels) << name;
  }
  EXPECT_EQ(read_idx_labels(tmp / "lab"), (std::vector<int64_t>{7, 3}));
  EXPECT_EQ(read_idx_labels(tmp / "lab.gz"), (std::vector<int64_t>{7, 3}));
  const TaskSplit s = import_idx_split("train", tmp / "img.gz", tmp / "lab");
  EXPECT_EQ(s.name, "train");
  EXPECT_EQ(s.size(), 2);
  EXPECT_EQ(s.image_shape(), (ImageShape{2, 3, 1}));
  EXPECT_EQ(s.image(1)[0], 250);
}

TEST(Idx, RejectsBadFilesNamingThem) {
  TempDir tmp;
  const auto pixels = pattern(2 * 2 * 3, 1);
  const std::string good = idx_images(2, 2, 3, pixels);
  const auto at = [&](const std::string& name, const std::string& bytes) {
    write_bytes(tmp / name, bytes);
    return (tmp / name).string();
  };
  EXPECT_INPUT_ERROR(read_idx_images(at("labels-as-images", idx_labels({1, 2}))), "labels-as-images",
                     "magic 0x00000801", "expected 0x00000803");
  EXPECT_INPUT_ERROR(read_idx_images(at("int-type", be32(0x0C03) + good.substr(4))), "int-type", "magic 0x00000c03");
  EXPECT_INPUT_ERROR(read_idx_labels(at("images-as-labels", good)), "images-as-labels", "expected 0x00000801");
  EXPECT_INPUT_ERROR(read_idx_images(at("short-data", good.substr(0, good.size() - 1))), "short-data", "truncated");
  EXPECT_INPUT_ERROR(read_idx_images(at("short-header", good.substr(0, 10))), "short-header", "truncated");
  EXPECT_INPUT_ERROR(read_idx_images(at("trailing", good + "x")), "trailing", "unexpected bytes");
  EXPECT_INPUT_ERROR(read_idx_images(at("zero-rows", idx_images(2, 0, 3, {}))), "zero-rows", "dimension 1 is 0");
  EXPECT_INPUT_ERROR(read_idx_images(at("huge", idx_images(0xffffffffu, 28, 28, {}))), "huge", "truncated");
  EXPECT_INPUT_ERROR(read_idx_images(tmp / "absent"), "absent", "no such file");

  write_gzip(tmp / "full.gz", good);
  const std::string gz = read_bytes(tmp / "full.gz");
  EXPECT_INPUT_ERROR(read_idx_images(at("cut.gz", gz.substr(0, gz.size() - 12))), "cut.gz", "truncated");
  std::string flipped = gz;
  flipped[flipped.size() - 6] ^= 0x55;  // the CRC-32 of the uncompressed data
  EXPECT_INPUT_ERROR(read_idx_images(at("crc.gz", flipped)), "crc.gz", "corrupt");

  write_bytes(tmp / "img", good);
  write_bytes(tmp / "three-labels", idx_labels({1, 2, 3}));
  EXPECT_INPUT_ERROR(import_idx_split("train", tmp / "img", tmp / "three-labels"), "three-labels", "3 labels",
                     "2 images");
}

// ---------------------------------------------------------------- task directories

TEST(Task, WritesAndReadsBack) {
  TempDir tmp;
  const TaskInfo info = make_info();
  const std::vector<TaskSplit> splits = {make_split("test", info.image, {2, 0}, 2),
                                         make_split("train", info.image, {0, 1, 2, 1}, 1)};
  write_task(tmp / "task", info, splits, false);

  const TaskInfo back = read_task_info(tmp / "task");
  EXPECT_EQ(back.name, "toy");
  EXPECT_EQ(back.classes, info.classes);
  EXPECT_EQ(back.image, info.image);
  ASSERT_EQ(back.splits.size(), 2u);
  EXPECT_EQ(back.splits[0].name, "train");  // train before test, whatever the order given
  EXPECT_EQ(back.splits[0].size, 4);
  EXPECT_EQ(back.splits[1].name, "test");
  EXPECT_EQ(back.splits[1].size, 2);
  const auto j = nlohmann::json::parse(read_bytes(tmp / "task" / "task.json"));
  EXPECT_EQ(j["image_shape"], nlohmann::json::parse("[4,5,3]"));
  EXPECT_EQ(j["splits"]["train"], 4);

  const TaskSplit train = load_split(tmp / "task", back, "train");
  EXPECT_EQ(train.labels, (std::vector<int64_t>{0, 1, 2, 1}));
  EXPECT_EQ(bytes_of(train.images), bytes_of(splits[1].images));
  EXPECT_EQ(train.image(3).size(), 60u);
  EXPECT_EQ(train.image(3)[59], pattern(240, 1)[239]);
  EXPECT_EQ(class_counts(train, 3), (std::vector<int64_t>{1, 2, 1}));
  const SafetensorsReader raw(split_path(tmp / "task", "test"));
  EXPECT_EQ(raw.find("labels")->dtype, DType::I64);

  // No overwrite without force; with force, the old task is replaced whole.
  EXPECT_INPUT_ERROR(write_task(tmp / "task", info, splits, false), "already exists");
  // The run that read it cannot replace it even with force (it holds an input); a later run can.
  EXPECT_INPUT_ERROR(write_task(tmp / "task", info, std::span(splits).first(1), true), "an input of this run");
  forget_run_inputs();
  write_task(tmp / "task", info, std::span(splits).first(1), true);
  EXPECT_EQ(read_task_info(tmp / "task").splits.size(), 1u);
  EXPECT_FALSE(fs::exists(tmp / "task" / "train.safetensors"));
  // A split that does not fit the task leaves nothing behind.
  std::vector<TaskSplit> bad = {make_split("train", {4, 4, 3}, {0}, 1)};
  EXPECT_INPUT_ERROR(write_task(tmp / "other", info, bad, false), "images", "[1, 4, 5, 3]");
  EXPECT_FALSE(fs::exists(tmp / "other"));
}

// A task directory written by hand, so that load_split meets files it did not write.
struct HandTask {
  TempDir tmp;
  fs::path dir = tmp / "t";
  HandTask(const std::string& task_json, const Tensor& images, const std::vector<int64_t>& labels) {
    fs::create_directories(dir);
    write_bytes(dir / "task.json", task_json);
    Tensor l = Tensor::zeros(DType::I64, {static_cast<int64_t>(labels.size())});
    std::copy(labels.begin(), labels.end(), l.mutable_data<int64_t>().begin());
    save_safetensors(dir / "train.safetensors", {{"images", images}, {"labels", l}});
  }
  TaskSplit load(const std::string& split = "train") const { return load_split(dir, read_task_info(dir), split); }
};

constexpr const char* kTaskJson = R"({"name":"t","classes":["a","b","c"],"image_shape":[2,2,1],"splits":{"train":2}})";

TEST(Task, RejectsBadSplitsNamingFileAndTensor) {
  const Tensor images = Tensor::zeros(DType::U8, {2, 2, 2, 1});
  EXPECT_EQ(HandTask(kTaskJson, images, {0, 2}).load().labels, (std::vector<int64_t>{0, 2}));
  EXPECT_INPUT_ERROR(HandTask(kTaskJson, images, {0, 3}).load(), "train.safetensors", "'labels'", "label 3 at index 1",
                     "outside [0, 3)");
  EXPECT_INPUT_ERROR(HandTask(kTaskJson, images, {-1, 0}).load(), "train.safetensors", "label -1");
  EXPECT_INPUT_ERROR(HandTask(kTaskJson, Tensor::zeros(DType::U8, {2, 3, 2, 1}), {0, 1}).load(), "train.safetensors",
                     "'images'", "[2, 3, 2, 1]", "2x2x1");
  EXPECT_INPUT_ERROR(HandTask(kTaskJson, Tensor::zeros(DType::F32, {2, 2, 2, 1}), {0, 1}).load(), "'images'",
                     "dtype F32");
  EXPECT_INPUT_ERROR(HandTask(kTaskJson, Tensor::zeros(DType::U8, {3, 2, 2, 1}), {0, 1, 1}).load(), "train.safetensors",
                     "3 examples", "has 2");
  EXPECT_INPUT_ERROR(HandTask(kTaskJson, images, {0}).load(), "train.safetensors", "1 examples");
  EXPECT_INPUT_ERROR(HandTask(kTaskJson, images, {0, 1}).load("val"), "task.json", "no split 'val'");

  const HandTask missing(R"({"name":"t","classes":["a"],"image_shape":[2,2,1],"splits":{"train":2,"test":5}})", images,
                         {0, 0});
  EXPECT_INPUT_ERROR(missing.load("test"), "test.safetensors", "missing");
  const HandTask no_labels(kTaskJson, images, {0, 1});
  save_safetensors(no_labels.dir / "train.safetensors", {{"images", images}});
  EXPECT_INPUT_ERROR(no_labels.load(), "train.safetensors", "'labels'", "no such tensor");
}

TEST(Task, RejectsBadTaskJsonNamingTheKey) {
  const Tensor images = Tensor::zeros(DType::U8, {2, 2, 2, 1});
  const auto error_for = [&](const std::string& json) {
    return input_error([&] { HandTask(json, images, {0, 0}).load(); });
  };
  const std::string base = R"("name":"t","image_shape":[2,2,1],"splits":{"train":2})";
  EXPECT_NE(error_for("{" + base + "}").find("key 'classes': missing"), std::string::npos);
  EXPECT_NE(error_for(R"({"classes":[],)" + base + "}").find("key 'classes'"), std::string::npos);
  EXPECT_NE(error_for(R"({"classes":["a","a"],)" + base + "}").find("appears twice"), std::string::npos);
  const std::string c = R"("name":"t","classes":["a"],)";
  EXPECT_NE(error_for("{" + c + R"("image_shape":[2,2],"splits":{"train":2}})").find("key 'image_shape'"),
            std::string::npos);
  EXPECT_NE(error_for("{" + c + R"("image_shape":[2,2,4],"splits":{"train":2}})").find("key 'image_shape[2]'"),
            std::string::npos);
  EXPECT_NE(error_for("{" + c + R"("image_shape":[2,-2,1],"splits":{"train":2}})").find("key 'image_shape[1]'"),
            std::string::npos);
  EXPECT_NE(error_for("{" + c + R"("image_shape":[2,2,1],"splits":{"../x":2}})").find("key 'splits'"),
            std::string::npos);
  EXPECT_NE(error_for("{" + c + R"("image_shape":[2,2,1],"splits":{"train":"2"}})").find("key 'splits.train'"),
            std::string::npos);
  EXPECT_NE(error_for(R"({"version":2,)" + c + R"("image_shape":[2,2,1],"splits":{"train":2}})").find("key 'version'"),
            std::string::npos);
  const std::string e = error_for("[1]");
  EXPECT_NE(e.find("task.json"), std::string::npos) << e;
  TempDir tmp;
  EXPECT_INPUT_ERROR(read_task_info(tmp.path()), "task.json", "missing");
}

// ---------------------------------------------------------------- sampling

TEST(Sampling, SplitMix64MatchesTheReferenceSequence) {
  // From the published SplitMix64 (Steele, Lea, Flood 2014; Vigna's splitmix64.c).
  SplitMix64 a(1234567);
  for (uint64_t expected : {6457827717110365317ULL, 3203168211198807973ULL, 9817491932198370423ULL,
                            4593380528125082431ULL, 16408922859458223821ULL})
    EXPECT_EQ(a.next(), expected);
  SplitMix64 b(0);
  EXPECT_EQ(b.next(), 16294208416658607535ULL);
}

TEST(Sampling, IsDeterministicAndUniformlyDistinct) {
  // Expected lists from an independent Python implementation (full-array Fisher-Yates with
  // SplitMix64 and rejection sampling), hard-coded so that any change of stream shows.
  EXPECT_EQ(sample_indices(100, 10, 42), (std::vector<int64_t>{2, 9, 13, 27, 28, 45, 65, 83, 86, 87}));
  EXPECT_EQ(sample_indices(1000, 12, 7),
            (std::vector<int64_t>{158, 201, 212, 263, 285, 487, 575, 580, 720, 727, 813, 842}));
  EXPECT_EQ(sample_indices(5, 3, 0), (std::vector<int64_t>{0, 1, 3}));
  EXPECT_EQ(sample_indices(10, 10, 1), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(sample_indices(3, 99, 1), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_TRUE(sample_indices(5, 0, 1).empty());

  const auto a = sample_indices(60000, 500, 9);
  EXPECT_EQ(a, sample_indices(60000, 500, 9));
  EXPECT_NE(a, sample_indices(60000, 500, 10));
  EXPECT_EQ(std::set<int64_t>(a.begin(), a.end()).size(), 500u);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_GE(a.front(), 0);
  EXPECT_LT(a.back(), 60000);
  // Roughly uniform: each half of the range gets about half of the draws.
  const auto low = std::count_if(a.begin(), a.end(), [](int64_t i) { return i < 30000; });
  EXPECT_NEAR(static_cast<double>(low), 250.0, 50.0);
}

// ---------------------------------------------------------------- preprocessing

TEST(Preprocess, ParsesHuggingFaceConfigs) {
  TempDir tmp;
  // openai/clip-vit-base-patch32's file: ints for size and crop_size.
  write_bytes(tmp / "preprocessor_config.json",
              R"({"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
                  "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
                  "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224})");
  const auto openai = load_image_processor_config(tmp.path());
  EXPECT_EQ(openai.shortest_edge, 224);
  EXPECT_EQ(openai.crop_height, 224);
  EXPECT_EQ(openai.crop_width, 224);
  EXPECT_EQ(openai.resample, Resample::Bicubic);
  EXPECT_DOUBLE_EQ(openai.rescale_factor, 1.0 / 255);

  const auto modern = ImageProcessorConfig::from_json(
      nlohmann::json::parse(R"({"size": {"height": 32, "width": 48}, "crop_size": {"height": 16, "width": 8},
        "resample": 2, "do_rescale": false, "image_mean": 0.5, "image_std": [0.25]})"),
      "p.json");
  EXPECT_EQ(modern.shortest_edge, 0);
  EXPECT_EQ(modern.resize_height, 32);
  EXPECT_EQ(modern.resize_width, 48);
  EXPECT_EQ(modern.crop_height, 16);
  EXPECT_EQ(modern.crop_width, 8);
  EXPECT_EQ(modern.resample, Resample::Bilinear);
  EXPECT_FALSE(modern.do_rescale);
  EXPECT_EQ(modern.image_mean, std::vector<double>{0.5});
  modern.check_channels(3);  // one value serves every channel

  // Defaults when the file is absent; to_json reads back to the same config.
  TempDir empty;
  const auto defaults = load_image_processor_config(empty.path());
  EXPECT_EQ(defaults.shortest_edge, 224);
  EXPECT_EQ(defaults.image_std[2], 0.27577711);
  for (const auto& c : {defaults, modern}) {
    const auto back = ImageProcessorConfig::from_json(nlohmann::json::parse(c.to_json().dump()), "x");
    EXPECT_EQ(back.to_json(), c.to_json());
  }
  EXPECT_EQ(defaults.to_json()["size"], nlohmann::json::parse(R"({"shortest_edge": 224})"));
  EXPECT_EQ(defaults.to_json()["image_processor_type"], "CLIPImageProcessor");

  const auto bad = [](const std::string& j) {
    return input_error([&] { ImageProcessorConfig::from_json(nlohmann::json::parse(j), "pp.json"); });
  };
  EXPECT_NE(bad(R"({"size": "big"})").find("pp.json: key 'size'"), std::string::npos);
  EXPECT_NE(bad(R"({"size": {"longest_edge": 5}})").find("key 'size'"), std::string::npos);
  EXPECT_NE(bad(R"({"crop_size": {"height": 0, "width": 4}})").find("key 'crop_size.height'"), std::string::npos);
  EXPECT_NE(bad(R"({"resample": 0})").find("key 'resample'"), std::string::npos);
  EXPECT_NE(bad(R"({"image_std": [0.5, 0]})").find("key 'image_std'"), std::string::npos);
  EXPECT_NE(bad(R"({"do_resize": "yes"})").find("key 'do_resize'"), std::string::npos);
  EXPECT_INPUT_ERROR(defaults.check_channels(1), "image_mean has 3 values", "1 input channels");
}

TEST(Preprocess, ResizeOutputSizeFollowsHuggingFace) {
  const ImageProcessorConfig c;
  EXPECT_EQ(resize_output_size(c, 28, 28), (std::pair<int64_t, int64_t>{224, 224}));
  EXPECT_EQ(resize_output_size(c, 480, 640), (std::pair<int64_t, int64_t>{224, 298}));  // int(298.67)
  EXPECT_EQ(resize_output_size(c, 640, 480), (std::pair<int64_t, int64_t>{298, 224}));
  ImageProcessorConfig s16;
  s16.shortest_edge = 16;
  EXPECT_EQ(resize_output_size(s16, 37, 53), (std::pair<int64_t, int64_t>{16, 22}));  // int(22.92)
  EXPECT_EQ(preprocessed_shape(c, {37, 53, 1}, 3), (ImageShape{224, 224, 3}));
  s16.do_center_crop = false;
  EXPECT_EQ(preprocessed_shape(s16, {37, 53, 1}, 3), (ImageShape{16, 22, 3}));
}

TEST(Preprocess, GrayAndRgbConvertAsPil) {
  const std::vector<uint8_t> rgb = {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 10, 20, 30};
  // (19595 R + 38470 G + 7471 B + 32768) >> 16, worked by hand.
  EXPECT_EQ(convert_channels(rgb, {1, 5, 3}, 1), (std::vector<uint8_t>{76, 150, 29, 255, 18}));
  EXPECT_EQ(convert_channels(std::vector<uint8_t>{7, 200}, {1, 2, 1}, 3),
            (std::vector<uint8_t>{7, 7, 7, 200, 200, 200}));

  TempDir tmp;
  const auto img = pattern(9 * 11 * 3, 5);
  write_bytes(tmp / "rgb", str(img));
  reference({"gray " + (tmp / "rgb").string() + " 9 11 " + (tmp / "gray").string()}, tmp);
  EXPECT_EQ(str(convert_channels(img, {9, 11, 3}, 1)), read_bytes(tmp / "gray"));
}

TEST(Preprocess, ResizeMatchesPillowExactly) {
  TempDir tmp;
  struct Case {
    ImageShape in;
    int64_t out_h, out_w;
    Resample filter;
  };
  const Case cases[] = {
      {{37, 53, 1}, 16, 22, Resample::Bicubic},    // downscale: the kernel widens (antialiasing)
      {{37, 53, 3}, 16, 22, Resample::Bicubic},    //
      {{28, 28, 1}, 224, 224, Resample::Bicubic},  // upscale, as MNIST into CLIP
      {{20, 30, 3}, 13, 47, Resample::Bilinear},   // down one way, up the other
      {{20, 30, 3}, 20, 11, Resample::Lanczos},    // one pass only
      {{25, 17, 1}, 9, 17, Resample::Hamming},    {{25, 17, 3}, 8, 6, Resample::Box},
  };
  std::vector<std::string> jobs;
  for (size_t n = 0; n < std::size(cases); ++n) {
    const Case& c = cases[n];
    const fs::path in = tmp / ("in" + std::to_string(n)), out = tmp / ("out" + std::to_string(n));
    write_bytes(in, str(pattern(static_cast<size_t>(c.in.bytes()), static_cast<uint32_t>(n))));
    jobs.push_back("resize " + in.string() + " " + std::to_string(c.in.height) + " " + std::to_string(c.in.width) +
                   " " + std::to_string(c.in.channels) + " " + std::to_string(c.out_h) + " " + std::to_string(c.out_w) +
                   " " + std::to_string(static_cast<int>(c.filter)) + " " + out.string());
  }
  reference(jobs, tmp);
  for (size_t n = 0; n < std::size(cases); ++n) {
    const Case& c = cases[n];
    const auto img = pattern(static_cast<size_t>(c.in.bytes()), static_cast<uint32_t>(n));
    const auto mine = resize_image(img, c.in, c.out_h, c.out_w, c.filter);
    EXPECT_EQ(str(mine), read_bytes(tmp / ("out" + std::to_string(n)))) << "case " << n;
  }
}

TEST(Preprocess, CenterCropAndNormalizeByHand) {
  ImageProcessorConfig c;
  c.do_resize = false;
  c.crop_height = 2;
  c.crop_width = 2;
  c.image_mean = {0.5};
  c.image_std = {0.5};
  // A 4x6 gray image; the crop starts at row (4-2)//2 = 1, column (6-2)//2 = 2.
  std::vector<uint8_t> img(24, 0);
  img[1 * 6 + 2] = 255;
  img[1 * 6 + 3] = 51;
  img[2 * 6 + 2] = 0;
  img[2 * 6 + 3] = 102;
  std::vector<float> out(4);
  preprocess_image(img, {4, 6, 1}, c, 1, out);
  // (v / 255 - 0.5) / 0.5
  EXPECT_FLOAT_EQ(out[0], 1.0f);
  EXPECT_FLOAT_EQ(out[1], -0.6f);
  EXPECT_FLOAT_EQ(out[2], -1.0f);
  EXPECT_FLOAT_EQ(out[3], -0.2f);

  // Smaller than the crop: HF pads with zeros around, the image at ceil((5 - 2) / 2) = 2.
  c.crop_height = c.crop_width = 5;
  c.image_mean = {0.0, 0.5, 1.0};
  c.image_std = {1.0, 0.5, 0.25};
  std::vector<float> padded(75);
  preprocess_image(std::vector<uint8_t>{255, 255, 255, 255}, {2, 2, 1}, c, 3, padded);
  for (int ch = 0; ch < 3; ++ch)
    for (int y = 0; y < 5; ++y)
      for (int x = 0; x < 5; ++x) {
        const bool image = y >= 2 && y < 4 && x >= 2 && x < 4;
        const float v = image ? 1.0f : 0.0f;
        const float expected = (v - static_cast<float>(c.image_mean[ch])) / static_cast<float>(c.image_std[ch]);
        EXPECT_FLOAT_EQ(padded[static_cast<size_t>(ch * 25 + y * 5 + x)], expected) << ch << " " << y << " " << x;
      }
}

TEST(Preprocess, BatchMatchesTransformersPipeline) {
  TempDir tmp;
  // Gray 28x28 into a 3-channel CLIP (upscale, as MNIST), RGB 300x260 (downscale with
  // antialiasing, crop of the long side), RGB 53x37 into a 1-channel model.
  struct Case {
    ImageShape in;
    int64_t channels;
  };
  const Case cases[] = {{{28, 28, 1}, 3}, {{300, 260, 3}, 3}, {{53, 37, 3}, 1}};
  const std::vector<int64_t> indices = {2, 0};
  std::vector<std::vector<float>> batches;
  std::vector<std::string> jobs;
  for (size_t n = 0; n < std::size(cases); ++n) {
    const Case& c = cases[n];
    Tensor images = Tensor::zeros(DType::U8, {3, c.in.height, c.in.width, c.in.channels});
    const auto px = pattern(images.nbytes(), static_cast<uint32_t>(10 + n));
    std::memcpy(images.mutable_bytes().data(), px.data(), px.size());
    ImageProcessorConfig config;
    if (c.channels == 1) {
      config.image_mean.resize(1);
      config.image_std.resize(1);
    }
    batches.push_back(preprocess_batch(images, indices, config, c.channels));
    for (size_t b = 0; b < indices.size(); ++b) {
      const std::string name = std::to_string(n) + "_" + std::to_string(b);
      const auto image = std::span(px).subspan(static_cast<size_t>(indices[b] * c.in.bytes()), c.in.bytes());
      write_bytes(tmp / ("in" + name), str({image.begin(), image.end()}));
      jobs.push_back("clip " + (tmp / ("in" + name)).string() + " " + std::to_string(c.in.height) + " " +
                     std::to_string(c.in.width) + " " + std::to_string(c.in.channels) + " " +
                     std::to_string(c.channels) + " " + (tmp / ("out" + name)).string());
    }
  }
  reference(jobs, tmp);
  for (size_t n = 0; n < std::size(cases); ++n) {
    const size_t per = static_cast<size_t>(224 * 224 * cases[n].channels);
    ASSERT_EQ(batches[n].size(), indices.size() * per);
    for (size_t b = 0; b < indices.size(); ++b) {
      const std::string expected = read_bytes(tmp / ("out" + std::to_string(n) + "_" + std::to_string(b)));
      ASSERT_EQ(expected.size(), per * sizeof(float));
      EXPECT_EQ(std::memcmp(expected.data(), batches[n].data() + b * per, expected.size()), 0) << n << " " << b;
    }
  }
  // Already the target size: resize and crop are identities.
  Tensor same = Tensor::zeros(DType::U8, {1, 224, 224, 3});
  same.mutable_bytes()[5] = std::byte{200};
  const auto direct = preprocess_batch(same, std::vector<int64_t>{0}, ImageProcessorConfig{}, 3);
  EXPECT_FLOAT_EQ(direct[224 * 224 * 2 + 1], (200 / 255.0f - 0.40821073f) / 0.27577711f);  // channel 2, pixel 1
  EXPECT_FLOAT_EQ(direct[0], -0.48145466f / 0.26862954f);
  EXPECT_THROW(preprocess_batch(same, std::vector<int64_t>{1}, ImageProcessorConfig{}, 3), std::out_of_range);
  // Into a caller's buffer: the same values.
  std::vector<float> reused(direct.size());
  preprocess_batch(same, std::vector<int64_t>{0}, ImageProcessorConfig{}, 3, reused);
  EXPECT_EQ(reused, direct);
  reused.pop_back();
  EXPECT_THROW(preprocess_batch(same, std::vector<int64_t>{0}, ImageProcessorConfig{}, 3, reused),
               std::invalid_argument);
}

// ---------------------------------------------------------------- image folders

TEST(ImageFolder, DecodesClassesInOrder) {
  TempDir tmp;
  const fs::path root = tmp / "train";
  fs::create_directories(root / "b_dog");
  fs::create_directories(root / "a_cat");
  fs::create_directories(root / ".hidden");
  // 2x3 RGB images with known pixels; row-major, top row first.
  const std::vector<uint8_t> black(18, 0), mixed = {255, 0, 0, 0, 255, 0, 0, 0, 255, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::vector<uint8_t> reds = black;
  for (size_t i = 0; i < 18; i += 3) reds[i] = 200;
  write_bytes(root / "a_cat" / "2.bmp", bmp(3, 2, mixed));
  write_bytes(root / "a_cat" / "1.png", png(3, 2, 2, reds));
  write_bytes(root / "a_cat" / "notes.txt", "not an image");
  write_bytes(root / "b_dog" / "x.PNG", png(3, 2, 2, black));

  const auto classes = folder_class_names(root);
  EXPECT_EQ(classes, (std::vector<std::string>{"a_cat", "b_dog"}));
  const TaskSplit s = import_image_folder(root, "train", classes, {});
  EXPECT_EQ(s.labels, (std::vector<int64_t>{0, 0, 1}));
  EXPECT_EQ(s.image_shape(), (ImageShape{2, 3, 3}));
  EXPECT_EQ(std::vector<uint8_t>(s.image(0).begin(), s.image(0).end()), reds);   // 1.png
  EXPECT_EQ(std::vector<uint8_t>(s.image(1).begin(), s.image(1).end()), mixed);  // 2.bmp
  EXPECT_EQ(std::vector<uint8_t>(s.image(2).begin(), s.image(2).end()), black);

  // Forced to gray: PIL's luma.
  ImageFolderOptions gray;
  gray.channels = 1;
  const TaskSplit g = import_image_folder(root, "train", classes, gray);
  EXPECT_EQ(g.image_shape(), (ImageShape{2, 3, 1}));
  EXPECT_EQ(std::vector<uint8_t>(g.image(1).begin(), g.image(1).end()), convert_channels(mixed, {2, 3, 3}, 1));

  // A gray PNG stays gray by default, and the importer resizes when asked.
  const fs::path digits = tmp / "digits";
  fs::create_directories(digits / "7");
  const auto px = pattern(12 * 10, 3);
  write_bytes(digits / "7" / "a.png", png(10, 12, 0, px));
  ImageFolderOptions resize;
  resize.height = 6;
  resize.width = 4;
  resize.resize = true;
  const TaskSplit r = import_image_folder(digits, "train", {"0", "7"}, resize);
  EXPECT_EQ(r.labels, (std::vector<int64_t>{1}));
  EXPECT_EQ(r.image_shape(), (ImageShape{6, 4, 1}));
  EXPECT_EQ(std::vector<uint8_t>(r.image(0).begin(), r.image(0).end()),
            resize_image(px, {12, 10, 1}, 6, 4, Resample::Bicubic));
}

TEST(ImageFolder, RejectsBadInputNamingTheFile) {
  TempDir tmp;
  const fs::path root = tmp / "train";
  fs::create_directories(root / "a");
  write_bytes(root / "a" / "1.png", png(3, 2, 0, pattern(6, 1)));
  write_bytes(root / "a" / "2.png", png(4, 2, 0, pattern(8, 1)));
  EXPECT_INPUT_ERROR(import_image_folder(root, "train", {"a"}, {}), "2.png", "2x4", "2x3", "--size");
  write_bytes(root / "a" / "2.png", "garbage");
  EXPECT_INPUT_ERROR(import_image_folder(root, "train", {"a"}, {}), "2.png", "cannot decode");
  fs::remove(root / "a" / "2.png");
  EXPECT_INPUT_ERROR(import_image_folder(root, "test", {"b"}, {}), "train/a", "not one of the task's classes");
  fs::create_directories(tmp / "empty" / "a");
  EXPECT_INPUT_ERROR(import_image_folder(tmp / "empty", "train", {"a"}, {}), "empty", "no images");
  EXPECT_INPUT_ERROR(folder_class_names(tmp / "nowhere"), "nowhere", "not a directory");
}

// ---------------------------------------------------------------- the CLI

TEST(TaskCli, ImportIdxAndInfo) {
  TempDir tmp;
  // 5 training images of 3x2 with labels 0 1 1 2 1, 2 test images, gzipped as distributed.
  write_gzip(tmp / "train-images.gz", idx_images(5, 3, 2, pattern(30, 1)));
  write_gzip(tmp / "train-labels.gz", idx_labels({0, 1, 1, 2, 1}));
  write_bytes(tmp / "test-images", idx_images(2, 3, 2, pattern(12, 2)));
  write_bytes(tmp / "test-labels", idx_labels({2, 2}));
  const std::string task = (tmp / "task").string();
  const std::string args = "task import-idx --images " + (tmp / "train-images.gz").string() + " --labels " +
                           (tmp / "train-labels.gz").string() + " --test-images " + (tmp / "test-images").string() +
                           " --test-labels " + (tmp / "test-labels").string() + " --name toy -o " + task;
  const auto r = run_amalgam(args + " --classes zero,one,two");
  ASSERT_EQ(r.code, 0) << r.err;

  const auto info = run_amalgam("task info --json " + task);
  ASSERT_EQ(info.code, 0) << info.err;
  const auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["name"], "toy");
  EXPECT_EQ(j["classes"], nlohmann::json::parse(R"(["zero","one","two"])"));
  EXPECT_EQ(j["image_shape"], nlohmann::json::parse("[3,2,1]"));
  EXPECT_EQ(j["splits"]["train"]["size"], 5);
  EXPECT_EQ(j["splits"]["train"]["class_counts"], nlohmann::json::parse("[1,3,1]"));
  EXPECT_EQ(j["splits"]["test"]["class_counts"], nlohmann::json::parse("[0,0,2]"));
  const TaskSplit train = load_split(task, read_task_info(task), "train");
  EXPECT_EQ(bytes_of(train.images), pattern(30, 1));

  const auto table = run_amalgam("task info " + task);
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("3 classes, images 3x2x1"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("one: 3"), std::string::npos) << table.out;

  // An existing output needs --force; too few class names, or a bad file, exit 2 with one line.
  const auto again = run_amalgam(args);
  EXPECT_EQ(again.code, 2);
  EXPECT_NE(again.err.find("already exists"), std::string::npos) << again.err;
  EXPECT_EQ(run_amalgam(args + " --force").code, 0);
  EXPECT_EQ(nlohmann::json::parse(read_bytes(tmp / "task" / "task.json"))["classes"][2], "2");
  const auto few = run_amalgam(args + " --force --classes a,b");
  EXPECT_EQ(few.code, 2);
  EXPECT_NE(few.err.find("train-labels.gz: label 2"), std::string::npos) << few.err;
  write_bytes(tmp / "test-labels", idx_labels({2}));
  const auto bad = run_amalgam(args + " --force");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("test-labels: has 1 labels"), std::string::npos) << bad.err;
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1);
}

TEST(TaskCli, ImportFolder) {
  TempDir tmp;
  for (const char* split : {"train", "test"})
    for (const char* cls : {"ant", "bee"}) fs::create_directories(tmp / split / cls);
  write_bytes(tmp / "train" / "ant" / "1.png", png(4, 4, 2, pattern(48, 1)));
  write_bytes(tmp / "train" / "bee" / "1.png", png(4, 4, 2, pattern(48, 2)));
  write_bytes(tmp / "train" / "bee" / "2.png", png(4, 4, 2, pattern(48, 3)));
  write_bytes(tmp / "test" / "bee" / "1.png", png(8, 8, 2, pattern(192, 4)));
  const std::string base = "task import-folder " + (tmp / "train").string() + " --test " + (tmp / "test").string() +
                           " --name bugs -o " + (tmp / "task").string();
  const auto mismatch = run_amalgam(base);
  EXPECT_EQ(mismatch.code, 2);
  EXPECT_NE(mismatch.err.find("test/bee/1.png"), std::string::npos) << mismatch.err;
  const auto r = run_amalgam(base + " --size 2x2 --channels 1");
  ASSERT_EQ(r.code, 0) << r.err;
  const TaskInfo info = read_task_info(tmp / "task");
  EXPECT_EQ(info.classes, (std::vector<std::string>{"ant", "bee"}));
  EXPECT_EQ(info.image, (ImageShape{2, 2, 1}));
  EXPECT_EQ(load_split(tmp / "task", info, "test").labels, (std::vector<int64_t>{1}));
  EXPECT_EQ(run_amalgam(base + " --size 2by2 --force").code, 2);
}

}  // namespace
}  // namespace amalgam
