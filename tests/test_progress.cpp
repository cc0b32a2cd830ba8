// The progress bar's text: counts, the unit the caller names, the rate and the ETA, worked
// out by hand.
#include <gtest/gtest.h>

#include "core/progress.h"

namespace amalgam {
namespace {

TEST(ProgressLine, ItemsWithoutBytesRateInTheirUnit) {
  // 3 of 12 steps in 2 s: a quarter of the bar (7 of 30 marks), 1.5 steps/s, 6 s to go.
  EXPECT_EQ(progress_line("train", "steps", 3, 12, 0, 0, 2.0, false),
            "train [#######.......................] 3/12 steps, 1.5 steps/s, eta 6s ");
  EXPECT_EQ(progress_line("train", "steps", 12, 12, 0, 0, 8.0, true),
            "train [##############################] 12/12 steps, 1.5 steps/s, took 8s ");
}

TEST(ProgressLine, BytesSetTheFractionAndTheRate) {
  // 1 of 4 tensors done but half the bytes: half the bar, 100 MB in 4 s is 25 MB/s, 4 s to go.
  EXPECT_EQ(progress_line("merging", "tensors", 1, 4, 100000000, 200000000, 4.0, false),
            "merging [###############...............] 1/4 tensors, 25 MB/s, eta 4s ");
}

TEST(ProgressLine, NothingToDoIsComplete) {
  EXPECT_EQ(progress_line("eval x", "images", 0, 0, 0, 0, 0.0, true),
            "eval x [##############################] 0/0 images, 0.0 images/s, took 0s ");
}

}  // namespace
}  // namespace amalgam
