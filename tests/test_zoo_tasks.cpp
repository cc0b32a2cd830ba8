// The zoo's tasks: determinism, split sizes, balance, disjoint splits, that each procedural
// task's label is really in its images (dots counted, grating orientations measured), the
// letters' held-out fonts, the real-data sources' counts, and the pretraining pool.
//
// The real-data sources must be installed (scripts/test.sh runs scripts/setup-deps.sh
// first); a missing source fails its test with the installer's message, it is not skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/task.h"
#include "io/json_file.h"
#include "io/run_inputs.h"
#include "test_util.h"
#include "zoo/letters.h"
#include "zoo/procedural.h"
#include "zoo/raster.h"
#include "zoo/sources.h"
#include "zoo/tasks.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

const std::vector<std::string> kGenerated = {"letters", "shapes", "gratings", "count", "textures"};

// The tests run from the build directory, so the cache is found from the source tree.
fs::path test_data_dir() {
  const char* env = std::getenv("AMALGAM_DATA_DIR");
  return env && *env ? fs::path(env) : fs::path(AMALGAM_SOURCE_DIR) / ".cache" / "zoo-data";
}

ZooDataOptions small_options(uint64_t seed = kZooDefaultSeed) {
  ZooDataOptions o = ZooDataOptions::small();
  o.seed = seed;
  o.data_dir = test_data_dir();
  return o;
}

std::string image_bytes(const TaskSplit& split, int64_t i) {
  const auto img = split.image(i);
  return {reinterpret_cast<const char*>(img.data()), img.size()};
}

std::string all_bytes(const ZooTask& task) {
  std::string s;
  for (const auto& split : task.splits) {
    const auto b = split.images.bytes();
    s.append(reinterpret_cast<const char*>(b.data()), b.size());
    s.append(reinterpret_cast<const char*>(split.labels.data()), split.labels.size() * sizeof(int64_t));
  }
  return s;
}

// A real-data task, or a test failure carrying the installer's message.
ZooTask load_real_task(const std::string& name, const ZooDataOptions& options) {
  try {
    return generate_zoo_task(name, options);
  } catch (const InputError& e) {
    ADD_FAILURE() << "zoo data source for '" << name << "' is missing or unreadable: " << e.what();
    throw;
  }
}

std::vector<int64_t> total_class_counts(const ZooTask& task) {
  std::vector<int64_t> total(static_cast<size_t>(task.info.num_classes()), 0);
  for (const auto& split : task.splits) {
    const auto c = class_counts(split, task.info.num_classes());
    for (size_t k = 0; k < c.size(); ++k) total[k] += c[k];
  }
  return total;
}

// Connected blobs of pixels >= 128, 8-connected.
int count_blobs(std::span<const uint8_t> img) {
  constexpr int n = zoo::kSide;
  std::vector<int> seen(img.size(), 0);
  int blobs = 0;
  for (int start = 0; start < n * n; ++start) {
    if (img[static_cast<size_t>(start)] < 128 || seen[static_cast<size_t>(start)]) continue;
    ++blobs;
    std::vector<int> stack = {start};
    seen[static_cast<size_t>(start)] = 1;
    while (!stack.empty()) {
      const int p = stack.back();
      stack.pop_back();
      for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) {
          const int y = p / n + dy, x = p % n + dx;
          if (y < 0 || y >= n || x < 0 || x >= n) continue;
          const auto q = static_cast<size_t>(y * n + x);
          if (img[q] >= 128 && !seen[q]) {
            seen[q] = 1;
            stack.push_back(static_cast<int>(q));
          }
        }
    }
  }
  return blobs;
}

// The dominant gradient direction in degrees [0, 180), x along columns and y down the rows,
// from the image's structure tensor (central differences).
double dominant_orientation(std::span<const uint8_t> img) {
  constexpr int n = zoo::kSide;
  double jxx = 0, jyy = 0, jxy = 0;
  for (int y = 1; y < n - 1; ++y)
    for (int x = 1; x < n - 1; ++x) {
      const double gx = img[static_cast<size_t>(y * n + x + 1)] - double(img[static_cast<size_t>(y * n + x - 1)]);
      const double gy = img[static_cast<size_t>((y + 1) * n + x)] - double(img[static_cast<size_t>((y - 1) * n + x)]);
      jxx += gx * gx;
      jyy += gy * gy;
      jxy += gx * gy;
    }
  const double deg = 0.5 * std::atan2(2 * jxy, jxx - jyy) * 180 / zoo::kPi;
  return deg < 0 ? deg + 180 : deg;
}

double angle_distance(double a, double b) {
  const double d = std::fmod(std::abs(a - b), 180.0);
  return std::min(d, 180 - d);
}

// ---------------------------------------------------------------------------------------

TEST(ZooRaster, SineAndCosineMatchLibm) {
  for (double x = -200; x < 200; x += 0.01371) {
    EXPECT_NEAR(zoo::det_sin(x), std::sin(x), 1e-14) << x;
    EXPECT_NEAR(zoo::det_cos(x), std::cos(x), 1e-14) << x;
  }
}

TEST(ZooRaster, BalancedLabelsAndSeedStreams) {
  const auto labels = zoo::balanced_labels(103, 8, 7);
  std::map<int64_t, int> counts;
  for (const int64_t l : labels) ++counts[l];
  ASSERT_EQ(counts.size(), 8u);
  for (const auto& [label, count] : counts) EXPECT_TRUE(count == 12 || count == 13) << label;
  EXPECT_NE(labels, zoo::balanced_labels(103, 8, 8));
  EXPECT_NE(zoo::derive_seed(1, "train"), zoo::derive_seed(1, "test"));
  EXPECT_NE(zoo::derive_seed(1, "image", 0), zoo::derive_seed(1, "image", 1));
  EXPECT_NE(zoo::derive_seed(1, "shapes"), zoo::derive_seed(2, "shapes"));
}

TEST(ZooTasks, NamesAndUnknownTask) {
  EXPECT_EQ(zoo_task_names().size(), 8u);
  for (const auto& name : zoo_task_names()) EXPECT_TRUE(is_zoo_task(name));
  EXPECT_FALSE(is_zoo_task("cifar"));
  try {
    generate_zoo_task("cifar", small_options());
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown zoo task 'cifar'"), std::string::npos) << e.what();
  }
}

TEST(ZooGenerated, DeterministicAndSeeded) {
  for (const auto& name : kGenerated) {
    const ZooTask a = generate_zoo_task(name, small_options(1));
    const ZooTask b = generate_zoo_task(name, small_options(1));
    const ZooTask c = generate_zoo_task(name, small_options(2));
    EXPECT_EQ(all_bytes(a), all_bytes(b)) << name << ": same seed, different bytes";
    for (size_t s = 0; s < a.splits.size(); ++s) {
      const auto ia = a.splits[s].images.bytes(), ic = c.splits[s].images.bytes();
      ASSERT_EQ(ia.size(), ic.size());
      EXPECT_NE(std::memcmp(ia.data(), ic.data(), ia.size()), 0) << name << ": another seed, same images";
    }
  }
}

TEST(ZooGenerated, SizesLabelsAndBalance) {
  ZooDataOptions options = small_options();
  options.sizes = {333, 77, 150};
  for (const auto& name : kGenerated) {
    const ZooTask task = generate_zoo_task(name, options);
    ASSERT_EQ(task.splits.size(), 3u) << name;
    EXPECT_EQ(task.info.image, (ImageShape{28, 28, 1}));
    const int64_t classes = task.info.num_classes();
    EXPECT_EQ(classes, name == "letters" ? 26 : 8) << name;
    for (const auto& [split, n] : {std::pair{"train", 333}, {"val", 77}, {"test", 150}}) {
      const TaskSplit& s = task.split(split);
      EXPECT_EQ(s.size(), n) << name << " " << split;
      EXPECT_NO_THROW(validate_split(s, task.info, name + "/" + split));  // labels in range, shapes
      for (const int64_t count : class_counts(s, classes)) {
        EXPECT_GE(count, n / classes) << name << " " << split;
        EXPECT_LE(count, n / classes + 1) << name << " " << split;
      }
    }
  }
}

TEST(ZooGenerated, NoImageSharedBetweenSplits) {
  for (const auto& name : kGenerated) {
    const ZooTask task = generate_zoo_task(name, small_options());
    std::set<std::string> train;
    for (int64_t i = 0; i < task.split("train").size(); ++i) train.insert(image_bytes(task.split("train"), i));
    for (const char* held_out : {"val", "test"}) {
      const TaskSplit& s = task.split(held_out);
      int shared = 0;
      for (int64_t i = 0; i < s.size(); ++i) shared += train.count(image_bytes(s, i)) ? 1 : 0;
      EXPECT_EQ(shared, 0) << name << ": " << held_out << " images identical to train images";
    }
  }
}

TEST(ZooGenerated, CountImagesHoldTheirNumberOfDots) {
  const ZooTask task = generate_zoo_task("count", small_options());
  for (const auto& split : task.splits)
    for (int64_t i = 0; i < split.size(); ++i)
      ASSERT_EQ(count_blobs(split.image(i)), split.labels[static_cast<size_t>(i)] + 1)
          << split.name << " image " << i << " (class '" << task.info.classes[static_cast<size_t>(split.labels[i])]
          << "')";
}

TEST(ZooGenerated, GratingOrientationIsRecoverable) {
  const ZooTask task = generate_zoo_task("gratings", small_options());
  int64_t n = 0, same_class = 0, within_one = 0;
  for (const auto& split : task.splits)
    for (int64_t i = 0; i < split.size(); ++i) {
      const double centre = 22.5 * static_cast<double>(split.labels[static_cast<size_t>(i)]);
      const double d = angle_distance(dominant_orientation(split.image(i)), centre);
      ++n;
      same_class += d <= 11.25 ? 1 : 0;
      within_one += d <= 22.5 + 11.25 ? 1 : 0;
    }
  EXPECT_GE(static_cast<double>(within_one) / static_cast<double>(n), 0.99) << within_one << " of " << n;
  EXPECT_GE(static_cast<double>(same_class) / static_cast<double>(n), 0.85) << same_class << " of " << n;
}

TEST(ZooLetters, HeldOutFontsAreUnseenInTraining) {
  const auto& train = zoo::letters_fonts("train");
  const auto& val = zoo::letters_fonts("val");
  const auto& test = zoo::letters_fonts("test");
  const std::set<std::string> train_set(train.begin(), train.end());
  EXPECT_EQ(train_set.size(), train.size());
  EXPECT_GE(train.size() + val.size() + test.size(), 6u);
  EXPECT_GE(test.size(), 2u);
  for (const auto* held_out : {&val, &test})
    for (const auto& f : *held_out) EXPECT_EQ(train_set.count(f), 0u) << f << " is in train and a held-out split";
  for (const auto& f : val) EXPECT_EQ(std::count(test.begin(), test.end(), f), 0) << f << " is in val and test";

  // The fonts are installed (fonts-dejavu-core, fonts-liberation, fonts-freefont-ttf), and
  // every split's images come from its own fonts, all of them used.
  ASSERT_NO_THROW(zoo::check_letters_fonts(zoo::kDefaultFontDir));
  for (const char* split : {"train", "val", "test"}) {
    const auto letters = zoo::generate_letters_split(split, 400, 5, zoo::kDefaultFontDir);
    const auto& fonts = zoo::letters_fonts(split);
    ASSERT_EQ(letters.font.size(), 400u);
    std::set<int> used(letters.font.begin(), letters.font.end());
    EXPECT_EQ(used.size(), fonts.size()) << split;
    EXPECT_GE(*used.begin(), 0);
    EXPECT_LT(*used.rbegin(), static_cast<int>(fonts.size()));
    // Every image has ink: a rendered glyph, not an empty canvas (pixels well above the
    // median, the background; thin fonts at small sizes are faint, so not an absolute level).
    for (int64_t i = 0; i < letters.split.size(); ++i) {
      const auto img = letters.split.image(i);
      std::vector<uint8_t> sorted(img.begin(), img.end());
      std::nth_element(sorted.begin(), sorted.begin() + 392, sorted.end());
      const int background = sorted[392];
      const auto ink = std::count_if(img.begin(), img.end(), [&](uint8_t v) { return v > background + 50; });
      ASSERT_GE(ink, 15) << split << " image " << i;
    }
  }
}

TEST(ZooLetters, MissingFontIsAClearError) {
  TempDir tmp;
  ZooDataOptions options = small_options();
  options.font_dir = tmp.path();
  try {
    generate_zoo_task("letters", options);
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(tmp.path().string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("setup-deps.sh"), std::string::npos) << msg;
  }
}

// ---------------------------------------------------------------------------------------
// Real data (installed by scripts/setup-deps.sh)

ZooDataOptions full_options() {
  ZooDataOptions o;
  o.data_dir = test_data_dir();
  return o;
}

TEST(ZooSources, MnistFromNpm) {
  const ZooTask task = load_real_task("mnist", full_options());
  EXPECT_EQ(task.split("train").size(), 7000);
  EXPECT_EQ(task.split("val").size(), 1000);
  EXPECT_EQ(task.split("test").size(), 2000);
  // The package's per-digit counts: every image lands in exactly one split.
  EXPECT_EQ(total_class_counts(task), (std::vector<int64_t>{1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978}));
  for (const auto& split : task.splits) {
    const auto counts = class_counts(split, 10);
    for (const int64_t c : counts) EXPECT_GT(c, split.size() / 10 / 2) << split.name;  // shuffled, not sorted
  }
  const auto px = task.split("test").images.data<uint8_t>();
  EXPECT_EQ(*std::max_element(px.begin(), px.end()), 255);
  // Splits are a partition: no image in two of them (MNIST has no exact duplicates).
  std::set<std::string> train;
  for (int64_t i = 0; i < task.split("train").size(); ++i) train.insert(image_bytes(task.split("train"), i));
  for (int64_t i = 0; i < task.split("test").size(); ++i)
    ASSERT_EQ(train.count(image_bytes(task.split("test"), i)), 0u) << i;
}

TEST(ZooSources, FashionFromDebian) {
  const ZooTask task = load_real_task("fashion", full_options());
  EXPECT_EQ(task.split("train").size(), 54000);
  EXPECT_EQ(task.split("val").size(), 6000);
  EXPECT_EQ(task.split("test").size(), 10000);
  EXPECT_EQ(task.info.classes.front(), "T-shirt/top");
  EXPECT_EQ(class_counts(task.split("test"), 10), std::vector<int64_t>(10, 1000));
  const auto train = class_counts(task.split("train"), 10), val = class_counts(task.split("val"), 10);
  for (size_t k = 0; k < 10; ++k) {
    EXPECT_EQ(train[k] + val[k], 6000) << k;
    EXPECT_GT(val[k], 450) << k;
  }
}

TEST(ZooSources, Digits8FromScikitLearn) {
  const ZooTask task = load_real_task("digits8", full_options());
  EXPECT_EQ(task.split("train").size(), 1259);
  EXPECT_EQ(task.split("val").size(), 179);
  EXPECT_EQ(task.split("test").size(), 359);
  EXPECT_EQ(total_class_counts(task), (std::vector<int64_t>{178, 182, 177, 183, 181, 182, 181, 179, 174, 180}));
  // 0..16 scaled to 0..255: full-intensity strokes exist and corners stay dark.
  const auto px = task.split("train").images.data<uint8_t>();
  EXPECT_EQ(*std::max_element(px.begin(), px.end()), 255);
  int64_t dark_corners = 0;
  for (int64_t i = 0; i < task.split("train").size(); ++i) dark_corners += task.split("train").image(i)[0] == 0;
  EXPECT_GT(dark_corners, task.split("train").size() * 9 / 10);
}

TEST(ZooSources, SmallZooCapsRealTasks) {
  for (const char* name : {"mnist", "fashion", "digits8"}) {
    const ZooTask task = load_real_task(name, small_options());
    EXPECT_EQ(task.split("train").size(), 600) << name;
    EXPECT_LE(task.split("val").size(), 200) << name;
    EXPECT_LE(task.split("test").size(), 400) << name;
    EXPECT_GT(task.split("test").size(), 300) << name;
    const ZooTask again = load_real_task(name, small_options());
    EXPECT_EQ(all_bytes(task), all_bytes(again)) << name;
  }
}

TEST(ZooSources, MissingSourceNamesFileAndScript) {
  TempDir tmp;
  ZooDataOptions options = small_options();
  options.data_dir = tmp.path();
  options.fashion_dir = tmp.path() / "fashion";
  for (const char* name : {"mnist", "digits8", "fashion"}) {
    try {
      generate_zoo_task(name, options);
      ADD_FAILURE() << name << ": expected an InputError";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(tmp.path().string()), std::string::npos) << msg;
      EXPECT_NE(msg.find("scripts/setup-deps.sh"), std::string::npos) << msg;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Writing, and the pretraining pool

TEST(ZooData, WritesTaskDirectoriesAtomically) {
  TempDir tmp;
  const fs::path out = tmp / "zoo";
  const std::vector<std::string> tasks = {"shapes", "count"};
  std::vector<std::string> reported;
  const auto reports =
      write_zoo_data(out, small_options(), false, tasks, [&](const ZooTaskReport& r) { reported.push_back(r.name); });
  EXPECT_EQ(reported, tasks);
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[0].train, 600);
  for (const auto& name : tasks) {
    const TaskInfo info = read_task_info(out / name);
    EXPECT_EQ(info.name, name);
    for (const char* split : {"train", "val", "test"}) EXPECT_NO_THROW(load_split(out / name, info, split));
  }
  EXPECT_EQ(read_json_file(out / "zoo-data.json")["tasks"], nlohmann::json(tasks));
  const std::string before = testing::read_bytes(out / "count" / "test.safetensors");

  // No overwrite without force; an unknown task fails before anything is written.
  EXPECT_THROW(write_zoo_data(out, small_options(), false, tasks), InputError);
  const std::vector<std::string> bad = {"shapes", "nope"};
  EXPECT_THROW(write_zoo_data(tmp / "other", small_options(), false, bad), InputError);
  EXPECT_FALSE(fs::exists(tmp / "other"));
  // Rewriting with the same seed reproduces the files byte for byte.
  forget_run_inputs();  // a later run: this one read the tasks it would replace
  write_zoo_data(out, small_options(), true, tasks);
  EXPECT_EQ(testing::read_bytes(out / "count" / "test.safetensors"), before);
}

TEST(ZooData, CommandLine) {
  TempDir tmp;
  const auto ok = testing::run_amalgam("zoo data -o " + (tmp / "z").string() + " --small --tasks shapes,gratings");
  ASSERT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(ok.err.find("gratings"), std::string::npos) << ok.err;
  EXPECT_EQ(read_task_info(tmp / "z" / "gratings").splits.at(2).size, 400);
  const auto missing = testing::run_amalgam("zoo data -o " + (tmp / "y").string() +
                                            " --small --tasks mnist --data-dir " + (tmp / "nothing").string());
  EXPECT_EQ(missing.code, 2);
  EXPECT_NE(missing.err.find("setup-deps.sh"), std::string::npos) << missing.err;
  EXPECT_FALSE(fs::exists(tmp / "y"));
}

TEST(ZooPool, TrainImagesAndExtrasOnly) {
  std::vector<ZooTask> tasks;
  std::vector<TaskSplit> train;
  std::set<std::string> held_out, train_images;
  for (const char* name : {"shapes", "textures", "count"}) {
    tasks.push_back(generate_zoo_task(name, small_options()));
    train.push_back(tasks.back().split("train"));
    for (const char* split : {"val", "test"})
      for (int64_t i = 0; i < tasks.back().split(split).size(); ++i)
        held_out.insert(image_bytes(tasks.back().split(split), i));
    for (int64_t i = 0; i < train.back().size(); ++i) train_images.insert(image_bytes(train.back(), i));
  }
  ZooPoolOptions options;
  options.per_task = 250;
  options.extra = 300;
  const Tensor pool = pretraining_pool(train, options);
  ASSERT_EQ(pool.shape(), (Shape{3 * 250 + 300, 28, 28, 1}));
  const auto bytes = pool.data<uint8_t>();
  int64_t from_train = 0;
  for (int64_t i = 0; i < pool.dim(0); ++i) {
    const std::string img(reinterpret_cast<const char*>(bytes.data()) + i * 784, 784);
    ASSERT_EQ(held_out.count(img), 0u) << "pool image " << i << " is a val or test image";
    from_train += train_images.count(img) ? 1 : 0;
  }
  EXPECT_EQ(from_train, 3 * 250);
  // Shuffled: the first images are not all from one source.
  int64_t first_from_train = 0;
  for (int64_t i = 0; i < 100; ++i)
    first_from_train += train_images.count(std::string(reinterpret_cast<const char*>(bytes.data()) + i * 784, 784));
  EXPECT_GT(first_from_train, 40);
  EXPECT_LT(first_from_train, 100);
  // Deterministic, with or without sources; each source is the split the image is in (3 for
  // the generated ones); only train splits are accepted.
  std::vector<int64_t> sources;
  const Tensor again = pretraining_pool(train, options, &sources);
  EXPECT_EQ(std::memcmp(again.bytes().data(), pool.bytes().data(), pool.nbytes()), 0);
  ASSERT_EQ(sources.size(), static_cast<size_t>(pool.dim(0)));
  std::vector<std::set<std::string>> per_split(3);
  for (size_t k = 0; k < 3; ++k)
    for (int64_t i = 0; i < train[k].size(); ++i) per_split[k].insert(image_bytes(train[k], i));
  std::vector<int64_t> counts(4, 0);
  for (int64_t i = 0; i < pool.dim(0); ++i) {
    const std::string img(reinterpret_cast<const char*>(bytes.data()) + i * 784, 784);
    const int64_t source = sources[static_cast<size_t>(i)];
    ASSERT_GE(source, 0);
    ASSERT_LE(source, 3);
    ++counts[static_cast<size_t>(source)];
    if (source < 3) {
      EXPECT_EQ(per_split[static_cast<size_t>(source)].count(img), 1u) << i;
    } else {
      EXPECT_EQ(train_images.count(img), 0u) << i;
    }
  }
  EXPECT_EQ(counts, (std::vector<int64_t>{250, 250, 250, 300}));
  const std::vector<TaskSplit> test = {tasks[0].split("test")};
  EXPECT_THROW(pretraining_pool(test, options), std::invalid_argument);
}

TEST(ZooPool, ExtrasVaryAndFromDirectory) {
  const Tensor extras = pretraining_extras(200, 3);
  ASSERT_EQ(extras.shape(), (Shape{200, 28, 28, 1}));
  std::set<std::string> distinct;
  const auto b = extras.data<uint8_t>();
  for (int64_t i = 0; i < 200; ++i)
    distinct.insert(std::string(reinterpret_cast<const char*>(b.data()) + i * 784, 784));
  EXPECT_EQ(distinct.size(), 200u);

  TempDir tmp;
  const std::vector<std::string> tasks = {"shapes", "gratings"};
  write_zoo_data(tmp / "zoo", small_options(), false, tasks);
  ZooPoolOptions options;
  options.per_task = 1000;  // more than the split holds: all 600
  options.extra = 10;
  EXPECT_EQ(pretraining_pool(tmp / "zoo", options).dim(0), 2 * 600 + 10);
  EXPECT_THROW(pretraining_pool(tmp.path(), options), InputError);
}

}  // namespace
}  // namespace amalgam
