// Safetensors header parsing against the tensor count (a single-file MoE checkpoint holds
// tens of thousands of tensors): the time SafetensorsReader takes to open a file whose
// header lists N one-element tensors, median of --runs, for each N given.
//
//   header_parse [--runs 5] N...      (prints one JSON line per N)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/safetensors.h"

using namespace amalgam;
namespace fs = std::filesystem;

namespace {

// A file of n F32 [1] tensors named like an MoE's experts, written by hand (not by amalgam's
// writer, whose own cost is not measured here).
void write_header_file(const fs::path& path, int n) {
  std::string header = "{";
  for (int i = 0; i < n; ++i) {
    // Appended piece by piece: GCC 12's -Wrestrict misfires on chains of string `+`.
    if (i) header += ',';
    header.append("\"model.layers.").append(std::to_string(i / 128)).append(".mlp.experts.");
    header.append(std::to_string(i % 128)).append(".w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[");
    header.append(std::to_string(4 * i)).append(",").append(std::to_string(4 * i + 4)).append("]}");
  }
  header += '}';
  header.resize((header.size() + 7) / 8 * 8, ' ');
  std::ofstream out(path, std::ios::binary);
  const uint64_t length = header.size();
  for (int b = 0; b < 8; ++b) out.put(static_cast<char>((length >> (8 * b)) & 0xff));
  out << header << std::string(static_cast<size_t>(4 * n), '\0');
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 5;
  std::vector<int> counts;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
      runs = std::max(1, std::atoi(argv[++i]));
    else
      counts.push_back(std::atoi(argv[i]));
  }
  const fs::path dir = fs::temp_directory_path() / ("amalgam-header-parse-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const int n : counts) {
    const fs::path file = dir / (std::to_string(n) + ".safetensors");
    write_header_file(file, n);
    std::vector<double> seconds;
    for (int r = 0; r < runs; ++r) {
      const auto start = std::chrono::steady_clock::now();
      const SafetensorsReader reader(file);
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      if (reader.tensors().size() != static_cast<size_t>(n)) return 1;
    }
    std::sort(seconds.begin(), seconds.end());
    std::printf("{\"tensors\": %d, \"median_seconds\": %.4f, \"runs\": %d}\n", n, seconds[seconds.size() / 2], runs);
  }
  fs::remove_all(dir);
  return 0;
}
