// The zoo's `letters` task: the 26 capital letters rendered with FreeType from Debian's
// TrueType fonts (fonts-dejavu-core, fonts-liberation, fonts-freefont-ttf), at a random size,
// aspect, rotation, slant, position and stroke weight (outline emboldening), with random
// intensities and noise. Train, val and test use disjoint sets of font files, so the test
// measures recognition of letters in fonts the model has never seen.
//
// FreeType rasterises in integer arithmetic, so the images are the same on every machine
// with the same FreeType version and font files.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "data/task.h"

namespace amalgam::zoo {

inline constexpr const char* kDefaultFontDir = "/usr/share/fonts/truetype";

// "A" .. "Z".
std::vector<std::string> letters_classes();

// The font files of a split ("train", "val" or "test"), relative to the font directory.
const std::vector<std::string>& letters_fonts(std::string_view split);

// InputError naming the first font file that is missing under `font_dir`.
void check_letters_fonts(const std::filesystem::path& font_dir);

struct LettersSplit {
  TaskSplit split;
  std::vector<int> font;  // per image: its index in letters_fonts(split name)
};

// n images with balanced labels, image i drawn from derive_seed(seed, split, i).
LettersSplit generate_letters_split(const std::string& split, int64_t n, uint64_t seed,
                                    const std::filesystem::path& font_dir);

}  // namespace amalgam::zoo
