// The task-vector family, as mergekit's "generalized task arithmetic" defines it:
//
//   D_t = W_t - W0, sparsified per model (magnitude top-k, random DARE drop, breadcrumbs'
//   band, or DELLA's drop with probabilities by magnitude rank within each row), with
//   `rescale` the kept entries scaled so that D_t keeps its L1 norm, weighted by w_t; summed, or with TIES sign
//   consensus only the entries agreeing with the elected sign sign(sum_t w_t D_t); divided by the summed weights when
//   normalize is set; result W0 + lambda * mixed.
//
// task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties, della and
// della_linear are each a file that registers one variant of this kernel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "merge/method.h"

namespace amalgam {

enum class Sparsification { None, Magnitude, Random, MagnitudeBand, DellaMagprune };

struct TaskArithmeticVariant {
  const char* name;
  const char* description;
  Sparsification sparsification;
  bool sign_consensus;
  bool default_normalize;
  bool default_rescale;
};

class TaskArithmeticFamily : public MergeMethod {
 public:
  explicit TaskArithmeticFamily(const TaskArithmeticVariant& variant);
  const MethodSpec& spec() const override { return spec_; }
  Tensor merge(const TensorJob& job) const override;
  std::unique_ptr<RangeMerge> start(const TensorJob& job) const override;

 private:
  TaskArithmeticVariant variant_;
  MethodSpec spec_;
};

// The entries of a vector whose magnitude rank (largest first, ties broken by lower index)
// lies in [skip, skip + keep): TIES keeps ranks [0, density*n), breadcrumbs drops the top
// gamma*n and keeps the next density*n. Represented by the two boundary entries, so that
// any element range can be tested on its own.
class MagnitudeBand {
 public:
  MagnitudeBand(std::span<const float> magnitudes, size_t skip, size_t keep);
  bool contains(float magnitude, size_t index) const {
    return !above(lower_, magnitude, index) & above(upper_, magnitude, index);  // & not &&: no branch
  }

 private:
  // The entry of a given rank: everything ranked before it is "above" it.
  struct Boundary {
    float value;
    size_t index;
  };
  static Boundary boundary(std::span<const float> magnitudes, size_t rank);
  static bool above(const Boundary& b, float magnitude, size_t index) {
    return (magnitude > b.value) | ((magnitude == b.value) & (index < b.index));
  }
  Boundary lower_;  // rank `skip`: entries above it are dropped
  Boundary upper_;  // rank `skip + keep`: entries above it (and not above lower_) are kept
};

// A uniform number in [0, 1) for element `index` under `seed` (24 random bits): the
// same for the same seed and index, whatever the thread or chunking.
inline float uniform01(uint64_t seed, uint64_t index) {
  return static_cast<float>(mix64(seed ^ mix64(index)) >> 40) * 0x1p-24f;
}

// Defines and registers one variant: AMALGAM_REGISTER_TASK_ARITHMETIC_VARIANT(Ties, "ties",
// "...", Magnitude, sign_consensus, default_normalize, default_rescale).
#define AMALGAM_REGISTER_TASK_ARITHMETIC_VARIANT(Class, method_name, description, sparsification, sign_consensus, \
                                                 default_normalize, default_rescale)                              \
  namespace {                                                                                                     \
  class Class final : public ::amalgam::TaskArithmeticFamily {                                                    \
   public:                                                                                                        \
    static constexpr const char* kName = method_name;                                                             \
    Class()                                                                                                       \
        : TaskArithmeticFamily({kName, description, ::amalgam::Sparsification::sparsification, sign_consensus,    \
                                default_normalize, default_rescale}) {}                                           \
  };                                                                                                              \
  AMALGAM_REGISTER_METHOD(Class);                                                                                 \
  }

}  // namespace amalgam
