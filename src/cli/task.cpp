// `amalgam task`: build task directories from IDX files or image folders, describe them, and
// make corrupted copies of their splits.
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "data/importers.h"
#include "data/task.h"
#include "io/atomic_output.h"
#include "io/json_file.h"
#include "zoo/corruptions.h"

namespace amalgam::cli {

namespace {

namespace fs = std::filesystem;

struct IdxArgs {
  std::string images, labels, test_images, test_labels, name, output;
  std::vector<std::string> classes;
  bool force = false;
};

struct CorruptArgs {
  std::string dir, corruption, split = "test", output;
  int severity = 3;
  uint64_t seed = 0;
  bool force = false;
};

struct FolderArgs {
  std::string root, test, name, output, size;
  int64_t channels = 0;
  bool force = false;
};

// Class names for labels 0..max: the given ones (enough of them), or the labels' numbers.
std::vector<std::string> idx_classes(const std::vector<TaskSplit>& splits, const std::vector<std::string>& given,
                                     const std::vector<std::string>& label_files) {
  int64_t max_label = 0;
  for (size_t s = 0; s < splits.size(); ++s) {
    const auto& labels = splits[s].labels;
    const auto it = std::max_element(labels.begin(), labels.end());
    if (it == labels.end()) continue;
    max_label = std::max(max_label, *it);
    if (!given.empty() && *it >= static_cast<int64_t>(given.size()))
      throw InputError(label_files[s], "label " + std::to_string(*it) + " at index " +
                                           std::to_string(it - labels.begin()) + " has no name: --classes gives " +
                                           std::to_string(given.size()) + " classes");
  }
  if (!given.empty()) return given;
  std::vector<std::string> classes;
  for (int64_t c = 0; c <= max_label; ++c) classes.push_back(std::to_string(c));
  return classes;
}

void report(const TaskInfo& info, std::span<const TaskSplit> splits, const std::string& output) {
  std::cerr << "amalgam: wrote task '" << info.name << "' (" << info.num_classes() << " classes, images "
            << to_string(splits.front().image_shape());
  for (const auto& s : splits) std::cerr << ", " << s.name << " " << s.size();
  std::cerr << ") to " << output << "\n";
}

void import_idx(const IdxArgs& a) {
  if (a.test_images.empty() != a.test_labels.empty()) throw InputError("--test-images and --test-labels go together");
  std::vector<TaskSplit> splits = {import_idx_split("train", a.images, a.labels)};
  std::vector<std::string> label_files = {a.labels};
  if (!a.test_images.empty()) {
    splits.push_back(import_idx_split("test", a.test_images, a.test_labels));
    label_files.push_back(a.test_labels);
    if (splits[1].image_shape() != splits[0].image_shape())
      throw InputError(a.test_images, "images are " + to_string(splits[1].image_shape()) + " but " + a.images +
                                          " has " + to_string(splits[0].image_shape()));
  }
  TaskInfo info;
  info.name = a.name;
  info.classes = idx_classes(splits, a.classes, label_files);
  info.image = splits[0].image_shape();
  write_task(a.output, info, splits, a.force);
  report(info, splits, a.output);
}

// "HxW" -> (H, W).
std::pair<int64_t, int64_t> parse_size(const std::string& text) {
  const auto x = text.find('x');
  try {
    size_t used_h = 0, used_w = 0;
    const int64_t h = std::stoll(text.substr(0, x), &used_h);
    const int64_t w = x == std::string::npos ? -1 : std::stoll(text.substr(x + 1), &used_w);
    if (used_h == x && used_w == text.size() - x - 1 && h > 0 && w > 0 && h <= 65536 && w <= 65536) return {h, w};
  } catch (const std::exception&) {
  }
  throw InputError("--size: '" + text + "' is not HxW (e.g. 224x224)");
}

void import_folder(const FolderArgs& a) {
  ImageFolderOptions options;
  options.channels = a.channels;
  if (!a.size.empty()) {
    std::tie(options.height, options.width) = parse_size(a.size);
    options.resize = true;
  }
  TaskInfo info;
  info.name = a.name;
  info.classes = folder_class_names(a.root);
  std::vector<TaskSplit> splits = {import_image_folder(a.root, "train", info.classes, options)};
  info.image = splits[0].image_shape();
  if (!a.test.empty()) {
    // The test images must look like the training images: same channels, same size.
    options.channels = info.image.channels;
    options.height = info.image.height;
    options.width = info.image.width;
    splits.push_back(import_image_folder(a.test, "test", info.classes, options));
  }
  write_task(a.output, info, splits, a.force);
  report(info, splits, a.output);
}

nlohmann::ordered_json task_summary(const std::string& dir) {
  const TaskInfo info = read_task_info(dir);
  nlohmann::ordered_json j;
  j["path"] = dir;
  j["name"] = info.name;
  j["classes"] = info.classes;
  j["image_shape"] = {info.image.height, info.image.width, info.image.channels};
  auto& splits = j["splits"] = nlohmann::ordered_json::object();
  for (const auto& s : info.splits) {
    const TaskSplit split = load_split(dir, info, s.name);
    splits[s.name] = {{"size", split.size()}, {"class_counts", class_counts(split, info.num_classes())}};
  }
  return j;
}

void print_summary(const nlohmann::ordered_json& j) {
  const auto classes = j["classes"].get<std::vector<std::string>>();
  const auto shape = j["image_shape"];
  std::cout << j["path"].get<std::string>() << ": task '" << j["name"].get<std::string>() << "', " << classes.size()
            << " classes, images " << shape[0] << "x" << shape[1] << "x" << shape[2] << "\n";
  for (const auto& [name, split] : j["splits"].items()) {
    std::cout << "  " << name << ": " << split["size"] << " examples\n";
    const auto counts = split["class_counts"].get<std::vector<int64_t>>();
    for (size_t c = 0; c < classes.size(); ++c) std::cout << "    " << classes[c] << ": " << counts[c] << "\n";
  }
}

constexpr const char* kCorruptionFile = "corruption.json";

// Writes `split` under `corruption` as a task directory `dir` (which must not exist or be
// empty), with corruption.json recording how it was made; `shown` is where it will end up.
// The task keeps its name and classes: the corrupted split is still that task, for that
// task's heads.
void write_corrupted_task(const fs::path& dir, const fs::path& shown, const TaskInfo& info, const TaskSplit& split,
                          const CorruptArgs& a, Corruption corruption) {
  const TaskSplit corrupted = corrupt_split(split, corruption, a.severity, a.seed);
  write_task(dir, info, std::span(&corrupted, 1), false);
  nlohmann::ordered_json j;
  j["source"] = a.dir;
  j["split"] = a.split;
  j["corruption"] = corruption_name(corruption);
  j["severity"] = a.severity;
  j["parameter"] = corruption_parameter(corruption, a.severity);
  j["seed"] = a.seed;
  write_text_file(dir / kCorruptionFile, j.dump(2) + "\n");
  std::cerr << "amalgam: wrote " << corruption_name(corruption) << " (severity " << a.severity << ", "
            << corruption_parameter(corruption, a.severity) << ") of '" << info.name << "' " << split.name << " ("
            << split.size() << " images) to " << shown.string() << "\n";
}

// One corruption into OUT, or with `all` every corruption into OUT/<name>; either way the
// whole output appears at once or not at all.
void corrupt_task(const CorruptArgs& a) {
  const bool all = a.corruption == "all";
  const std::vector<Corruption> corruptions =
      all ? std::vector<Corruption>(kAllCorruptions.begin(), kAllCorruptions.end())
          : std::vector<Corruption>{parse_corruption(a.corruption)};
  const TaskInfo info = read_task_info(a.dir);
  const TaskSplit split = load_split(a.dir, info, a.split);
  AtomicOutput out(a.output, a.force);
  for (const Corruption c : corruptions) {
    // (path / "" would add a trailing separator, which changes what the path's parent is.)
    const auto place = [&](const fs::path& root) { return all ? root / std::string(corruption_name(c)) : root; };
    write_corrupted_task(place(out.staging()), place(a.output), info, split, a, c);
  }
  out.commit();
}

void add_import_idx(CLI::App& task) {
  auto* cmd = task.add_subcommand("import-idx", "Make a task from IDX (MNIST-format) image and label files");
  auto a = std::make_shared<IdxArgs>();
  cmd->add_option("--images", a->images, "training images (IDX, gzipped or not)")->required();
  cmd->add_option("--labels", a->labels, "training labels (IDX)")->required();
  cmd->add_option("--test-images", a->test_images, "test images (IDX)");
  cmd->add_option("--test-labels", a->test_labels, "test labels (IDX)");
  cmd->add_option("--classes", a->classes, "class names, comma-separated (default: the label numbers)")->delimiter(',');
  cmd->add_option("--name", a->name, "task name")->required();
  cmd->add_option("-o,--output", a->output, "task directory to create")->required();
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->callback([a] { import_idx(*a); });
}

void add_import_folder(CLI::App& task) {
  auto* cmd = task.add_subcommand("import-folder", "Make a task from image folders ROOT/<class>/<image>");
  auto a = std::make_shared<FolderArgs>();
  cmd->add_option("root", a->root, "training images: ROOT/<class>/*.png|jpg|jpeg|bmp")->required();
  cmd->add_option("--test", a->test, "test images, laid out the same way");
  cmd->add_option("--channels", a->channels, "1 (gray) or 3 (RGB); default: as the first image")
      ->check(CLI::IsMember({1, 3}));
  cmd->add_option("--size", a->size, "resize every image to HxW (bicubic); default: all images must match");
  cmd->add_option("--name", a->name, "task name")->required();
  cmd->add_option("-o,--output", a->output, "task directory to create")->required();
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->callback([a] { import_folder(*a); });
}

void add_corrupt(CLI::App& task) {
  auto* cmd = task.add_subcommand("corrupt", "Corrupt a task's split (ImageNet-C-style corruptions) into a new task");
  auto a = std::make_shared<CorruptArgs>();
  std::string names = "all";
  for (const Corruption c : kAllCorruptions) names += ", " + std::string(corruption_name(c));
  cmd->add_option("dir", a->dir, "task directory")->required();
  cmd->add_option("--corruption", a->corruption, names + " (all: one task directory per corruption under OUTPUT)")
      ->required();
  cmd->add_option("--severity", a->severity, "1 (mild) to 5 (severe), default 3")->check(CLI::Range(1, 5));
  cmd->add_option("--split", a->split, "split to corrupt (default test); the output holds only it");
  cmd->add_option("--seed", a->seed, "seed of the random corruptions (default 0)")->check(non_negative_number());
  cmd->add_option("-o,--output", a->output, "task directory to create")->required();
  cmd->add_flag("--force", a->force, "replace an existing output");
  cmd->callback([a] { corrupt_task(*a); });
}

void add_info(CLI::App& task) {
  auto* cmd = task.add_subcommand("info", "Describe a task: classes, image shape, split sizes, examples per class");
  auto dir = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  cmd->add_option("dir", *dir, "task directory")->required();
  cmd->add_flag("--json", *as_json, "print JSON");
  cmd->callback([dir, as_json] {
    const auto j = task_summary(*dir);
    if (*as_json)
      std::cout << j.dump(2) << "\n";
    else
      print_summary(j);
  });
}

}  // namespace

void add_task_command(CLI::App& app) {
  auto* task =
      app.add_subcommand("task", "Task data: import IDX files or image folders, describe a task, corrupt a split");
  task->require_subcommand(1);
  add_import_idx(*task);
  add_import_folder(*task);
  add_info(*task);
  add_corrupt(*task);
}

}  // namespace amalgam::cli
