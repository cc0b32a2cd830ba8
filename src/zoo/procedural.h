// The zoo's four procedural tasks, drawn from seeded generators (zoo/raster.h):
//
//   shapes    8 shapes (circle, triangle, square, pentagon, hexagon, star, cross, crescent):
//             random size, position, rotation, fill or outline, intensities and noise.
//   gratings  the orientation of a sinusoidal grating in 8 classes of 22.5 degrees: class k's
//             wave vector (the direction in which intensity changes) lies within
//             kGratingJitterDegrees of k * 22.5 degrees, measured from the x axis (columns)
//             towards y (rows, downwards); random period, phase, contrast and noise.
//   count     how many dots, 1 to 8: random radii and positions, at least kDotGap pixels
//             apart, so that every dot is its own connected blob.
//   textures  8 texture families (checkerboard, stripes, dots, waves, fine and coarse noise,
//             rings, grid): random scale, rotation, phase, contrast and noise.
//
// Also the extra unlabeled images of the pretraining pool: random mixtures of strokes,
// shapes, dots and textures.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "zoo/raster.h"

namespace amalgam::zoo {

inline constexpr double kGratingJitterDegrees = 9.0;
inline constexpr double kDotGap = 2.5;

struct ProceduralTask {
  std::string name;
  std::vector<std::string> classes;
  DrawFn draw;
};

// shapes, gratings, count, textures.
const std::vector<ProceduralTask>& procedural_tasks();
// nullptr when `name` is not one of them.
const ProceduralTask* find_procedural_task(std::string_view name);

// An unlabeled image for pretraining, unlike any task's classes on purpose: a background
// (flat or a faint texture) with a few random strokes, polygons and dots.
void draw_pretraining_extra(Rng& rng, Canvas& canvas);

}  // namespace amalgam::zoo
