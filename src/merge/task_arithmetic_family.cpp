#include "merge/task_arithmetic_family.h"

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "merge/audit.h"
#include "merge/reductions.h"

namespace amalgam {

namespace {

// Counts of the 16-bit digit of every value's bit pattern at `shift`, among values whose
// higher bits equal `prefix` (all values when shift is 16), one histogram per thread, summed.
std::vector<uint64_t> digit_histogram(std::span<const float> values, int shift, uint32_t prefix) {
  const int threads = num_threads();
  std::vector<uint64_t> hist(static_cast<size_t>(threads) << 16, 0);
#pragma omp parallel num_threads(threads)
  {
    uint64_t* h = hist.data() + (static_cast<size_t>(omp_get_thread_num()) << 16);
#pragma omp for schedule(static)
    for (size_t i = 0; i < values.size(); ++i) {
      const uint32_t bits = std::bit_cast<uint32_t>(values[i]);
      if (shift == 16 || (bits >> 16) == prefix) ++h[(bits >> shift) & 0xffffu];
    }
  }
  for (int t = 1; t < threads; ++t)
    for (size_t d = 0; d < 65536; ++d) hist[d] += hist[(static_cast<size_t>(t) << 16) + d];
  hist.resize(65536);
  return hist;
}

// Walks a histogram from the largest digit down; returns the digit holding rank `rank` and
// the number of values in larger digits.
std::pair<uint32_t, uint64_t> descend(const std::vector<uint64_t>& hist, uint64_t rank) {
  uint64_t above = 0;
  for (uint32_t d = 65535;; --d) {
    if (above + hist[d] > rank) return {d, above};
    above += hist[d];
    if (d == 0) break;
  }
  throw std::logic_error("rank outside the histogram");
}

// The audit's counts over one piece of sparsified deltas ([models, kStreamPiece]): nonzero
// entries per model, and entries where the nonzero deltas have both signs.
void count_kept(const float* deltas, size_t models, size_t len, std::span<uint64_t> kept, uint64_t& conflicts) {
  uint8_t positive[kStreamPiece] = {}, negative[kStreamPiece] = {};
  for (size_t t = 0; t < models; ++t) {
    const float* d = deltas + t * kStreamPiece;
    uint64_t nonzero = 0;
    for (size_t i = 0; i < len; ++i) {
      positive[i] |= d[i] > 0;
      negative[i] |= d[i] < 0;
      nonzero += d[i] != 0;
    }
    kept[t] += nonzero;
  }
  for (size_t i = 0; i < len; ++i) conflicts += positive[i] & negative[i];
}

}  // namespace

MagnitudeBand::Boundary MagnitudeBand::boundary(std::span<const float> magnitudes, size_t rank) {
  const size_t n = magnitudes.size();
  if (rank == 0) return {std::numeric_limits<float>::infinity(), 0};  // nothing is above
  if (rank >= n) return {-1.0f, 0};                                   // everything is above
  // Radix selection: for non-negative floats the bit patterns sort like the values, so two
  // 16-bit histogram passes find the value of rank `rank` (largest first) in linear time,
  // without copying or reordering the magnitudes.
  const auto [high, above_high] = descend(digit_histogram(magnitudes, 16, 0), rank);
  const auto [low, above_low] = descend(digit_histogram(magnitudes, 0, high), rank - above_high);
  const float value = std::bit_cast<float>((high << 16) | low);
  // The boundary is the (rank - greater)-th entry equal to `value`, counting by index:
  // count ties block by block (a vectorised count) and scan only the block that holds it.
  size_t ties_before = rank - above_high - above_low;
  constexpr size_t kBlock = 4096;
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = std::min(n, b + kBlock);
    size_t ties = 0;
    for (size_t i = b; i < e; ++i) ties += magnitudes[i] == value;
    if (ties_before >= ties) {
      ties_before -= ties;
      continue;
    }
    for (size_t i = b; i < e; ++i)
      if (magnitudes[i] == value && ties_before-- == 0) return {value, i};
  }
  return {value, n};
}

MagnitudeBand::MagnitudeBand(std::span<const float> magnitudes, size_t skip, size_t keep)
    : lower_(boundary(magnitudes, skip)), upper_(boundary(magnitudes, skip + keep)) {}

TaskArithmeticFamily::TaskArithmeticFamily(const TaskArithmeticVariant& v) : variant_(v) {
  using S = ParamSpec::Scope;
  spec_.name = v.name;
  spec_.description = v.description;
  spec_.params = {{"weight", S::Model, std::nullopt, -1e6, 1e6, "the task vector's weight"}};
  if (v.sparsification != Sparsification::None)
    spec_.params.push_back({"density", S::Model, 1.0, 0, 1, "fraction of the task vector's entries kept"});
  if (v.sparsification == Sparsification::MagnitudeBand)
    spec_.params.push_back({"gamma", S::Model, 0.01, 0, 1, "fraction of the largest entries dropped"});
  if (v.sparsification == Sparsification::DellaMagprune)
    spec_.params.push_back({"epsilon", S::Model, 0.15, 0, 1,
                            "keep probabilities run from density - epsilon (smallest) to density + epsilon"});
  spec_.params.push_back({"lambda", S::Global, 1.0, -1e6, 1e6, "scale of the merged task vector"});
  spec_.params.push_back({"normalize", S::Global, v.default_normalize ? 1.0 : 0.0, 0, 1,
                          "divide by the summed weights (of the agreeing models, with sign consensus)"});
  spec_.params.push_back({"rescale", S::Global, v.default_rescale ? 1.0 : 0.0, 0, 1,
                          "scale the kept entries so that the task vector keeps its L1 norm"});
  spec_.params.push_back({"int8_mask", S::Global, 0.0, 0, 1, "accepted for mergekit compatibility; no effect"});
  spec_.needs_base = true;
  spec_.streams = true;
}

namespace {

// One tensor's merge: the per-model weights and, for magnitude selection, each task
// vector's band, fixed up front; then the ranges; then the audit's counts.
class TaskArithmeticRanges final : public RangeMerge {
 public:
  TaskArithmeticRanges(const TaskArithmeticVariant& variant, const TensorJob& job);
  void merge_range(size_t begin, size_t end, std::span<std::byte> out) override;
  void finish() override;

 private:
  void merge_chunk(size_t chunk_begin, size_t chunk_end, std::span<std::byte> out, size_t first);
  // DELLA's keep mask of model t's task vector.
  std::vector<uint8_t> della_mask(size_t t) const;
  // |D_t|_1 / |kept D_t|_1, or 1 when either is below 1e-7.
  float l1_rescale(size_t t) const;

  const TaskArithmeticVariant& variant_;
  const TensorJob& job_;
  size_t models_;
  std::vector<float> weight_, density_, scale_;
  bool normalize_;
  float lambda_;
  float plain_divisor_;
  // Plain task arithmetic sums the weighted task vectors as it converts them.
  bool plain_;
  // Plain task arithmetic's merged delta is a combination of the weighted task vectors it
  // sums anyway: the audit takes those rows (scaled by w_t) instead of a copy of the raw ones.
  bool combination_ = false;
  std::vector<MagnitudeBand> bands_;
  // DELLA: per model, whether each entry is kept (1) or dropped (0), drawn up front because
  // its probability depends on the entry's rank within its row.
  std::vector<std::vector<uint8_t>> della_keep_;
  // The audit's counts: entries kept by sparsification and by the sign election per model,
  // and entries whose kept deltas disagree in sign.
  std::vector<uint64_t> kept_, elected_;
  uint64_t conflicts_ = 0;
};

TaskArithmeticRanges::TaskArithmeticRanges(const TaskArithmeticVariant& variant, const TensorJob& job)
    : variant_(variant),
      job_(job),
      models_(job.model_count()),
      weight_(models_),
      density_(models_),
      scale_(models_, 1.0f),
      normalize_(job.param("normalize") != 0),
      lambda_(static_cast<float>(job.param("lambda"))),
      plain_(variant.sparsification == Sparsification::None && !variant.sign_consensus),
      kept_(models_, 0),
      elected_(models_, 0) {
  const size_t n = job.numel();
  const Sparsification sparsify = variant_.sparsification;
  for (size_t t = 0; t < models_; ++t) {
    weight_[t] = static_cast<float>(job.param("weight", t));
    density_[t] = sparsify == Sparsification::None ? 1.0f : static_cast<float>(job.param("density", t));
  }
  if (sparsify == Sparsification::DellaMagprune)
    for (size_t t = 0; t < models_; ++t) della_keep_.push_back(della_mask(t));

  // Magnitude selection needs each task vector whole once, to find its rank boundaries.
  if (sparsify == Sparsification::Magnitude || sparsify == Sparsification::MagnitudeBand) {
    const Tensor base = job.base_f32();
    const float* base_values = base.data<float>().data();
    Tensor buffer = Tensor::uninitialized(DType::F32, {static_cast<int64_t>(n)});
    const std::span<float> magnitudes = buffer.mutable_data<float>();
    for (size_t t = 0; t < models_; ++t) {
      parallel_chunks(n, kStreamChunk, [&](size_t b, size_t e) {
        float* m = magnitudes.data() + b;
        job.read_model(t, b, e, m);
        for (size_t i = 0; i < e - b; ++i) {
          const float a = std::fabs(m[i] - base_values[b + i]);
          m[i] = a == a ? a : 0.0f;  // NaN would break the ordering (--no-check-finite)
        }
      });
      const size_t skip = sparsify == Sparsification::MagnitudeBand
                              ? static_cast<size_t>(job.param("gamma", t) * static_cast<double>(n))
                              : 0;
      const size_t keep = static_cast<size_t>(job.param("density", t) * static_cast<double>(n));
      bands_.emplace_back(magnitudes, skip, keep);
    }
  }

  // mergekit's rescaled_masked_tensor: the kept entries times |D_t|_1 / |kept D_t|_1 (left
  // as they are when either norm is below 1e-7).
  if (job.param("rescale") != 0 && sparsify != Sparsification::None)
    for (size_t t = 0; t < models_; ++t) scale_[t] = l1_rescale(t);

  float weight_sum = 0;
  for (float w : weight_) weight_sum += w;
  plain_divisor_ = normalize_ && std::fabs(weight_sum) >= 1e-8f ? weight_sum : 1.0f;
  TensorAudit* audit = job.audit();
  combination_ = audit && plain_ && std::none_of(scale_.begin(), scale_.end(), [](float s) { return s == 0; }) &&
                 std::none_of(weight_.begin(), weight_.end(), [](float w) { return w == 0; });
  if (combination_) {
    std::vector<double> row_scale(models_);
    for (size_t t = 0; t < models_; ++t) row_scale[t] = static_cast<double>(weight_[t]) * scale_[t];
    audit->set_merged_combination(row_scale,
                                  std::vector<double>(models_, static_cast<double>(lambda_) / plain_divisor_));
  }
}

// mergekit's della_magprune: along dimension 1 (a 1-D tensor is one row), the entries ranked
// by magnitude from 1 (smallest) to the row's length, rank r kept with probability
// (density - epsilon) + 2 epsilon (r - 1) / (length - 1), drawn from the merge's seed (ties
// rank by position). density >= 1 keeps everything, <= 0 nothing.
std::vector<uint8_t> TaskArithmeticRanges::della_mask(size_t t) const {
  const TensorJob& job = job_;
  const size_t n = job.numel();
  const double density = job.param("density", t), epsilon = job.param("epsilon", t);
  std::vector<uint8_t> keep(n, density > 0 ? 1 : 0);
  if (density >= 1 || density <= 0) return keep;
  if (density + epsilon >= 1 || density - epsilon <= 0)
    throw InputError(job.config_source(), job.name(),
                     "della: density " + std::to_string(density) + " and epsilon " + std::to_string(epsilon) +
                         " put the keep probabilities outside (0, 1); choose epsilon < min(density, 1 - density)");
  const Shape& shape = job.shape();
  const size_t length = shape.size() >= 2 ? static_cast<size_t>(shape[1]) : n;
  size_t inner = 1;
  for (size_t d = 2; d < shape.size(); ++d) inner *= static_cast<size_t>(shape[d]);
  const size_t vectors = length == 0 ? 0 : n / length;
  const Tensor model = job.model_f32(t), base = job.base_f32();
  const float* x = model.data<float>().data();
  const float* b0 = base.data<float>().data();
  const uint64_t seed = job.seed_for(t);
  parallel_chunks(vectors, 1, [&](size_t begin, size_t end) {
    std::vector<size_t> order(length);
    std::vector<float> magnitude(length);
    for (size_t v = begin; v < end; ++v) {
      const size_t first = (v / inner) * length * inner + v % inner;  // element 0 of vector v
      for (size_t j = 0; j < length; ++j) {
        const size_t k = first + j * inner;
        const float m = std::fabs(x[k] - b0[k]);
        magnitude[j] = m == m ? m : 0.0f;
        order[j] = j;
      }
      std::sort(order.begin(), order.end(),
                [&](size_t a, size_t c) { return magnitude[a] != magnitude[c] ? magnitude[a] < magnitude[c] : a < c; });
      for (size_t r = 0; r < length; ++r) {
        const double rank_norm = length > 1 ? static_cast<double>(r) / static_cast<double>(length - 1) : 0.0;
        const double p = density - epsilon + rank_norm * 2 * epsilon;
        const size_t k = first + order[r] * inner;
        keep[k] = uniform01(seed, k) < p ? 1 : 0;
      }
    }
  });
  return keep;
}

float TaskArithmeticRanges::l1_rescale(size_t t) const {
  const TensorJob& job = job_;
  const uint64_t seed = job.seed_for(t);
  const auto [before, after] = chunked_sums<2>(job.numel(), [&](size_t b, size_t e, double* s) {
    thread_local std::vector<float> model, base;
    model.resize(kStreamChunk);
    base.resize(kStreamChunk);
    job.read_model(t, b, e, model.data());
    job.read_base(b, e, base.data());
    for (size_t i = 0; i < e - b; ++i) {
      const float delta = model[i] - base[i];
      const float magnitude = std::fabs(delta);
      bool kept = true;
      switch (variant_.sparsification) {
        case Sparsification::Random:
          kept = uniform01(seed, b + i) < density_[t];
          break;
        case Sparsification::DellaMagprune:
          kept = della_keep_[t][b + i] != 0;
          break;
        case Sparsification::Magnitude:
        case Sparsification::MagnitudeBand:
          kept = bands_[t].contains(magnitude, b + i);
          break;
        case Sparsification::None:
          break;
      }
      s[0] += magnitude;
      if (kept) s[1] += magnitude;
    }
  });
  if (before < 1e-7 || after < 1e-7) return 1.0f;
  return static_cast<float>(before / after);
}

void TaskArithmeticRanges::merge_range(size_t begin, size_t end, std::span<std::byte> out) {
  parallel_chunks_spread(end - begin, kStreamChunk,
                         [&](size_t b, size_t e) { merge_chunk(begin + b, begin + e, out, begin); });
}

// Each chunk is read as stored, then merged piece by piece so that the pieces' rows stay
// in L1. Every loop below runs over the elements of a piece with the model fixed, so that
// it vectorises; sums over models still add in model order, whatever the chunking. `out`
// holds the range that starts at element `first`.
void TaskArithmeticRanges::merge_chunk(size_t chunk_begin, size_t chunk_end, std::span<std::byte> out, size_t first) {
  const TensorJob& job = job_;
  const size_t models = models_;
  const Sparsification sparsify = variant_.sparsification;
  TensorAudit* audit = job.audit();
  thread_local StoredChunk chunk;
  thread_local std::vector<float> scratch;
  thread_local std::vector<uint64_t> counts;  // the chunk's kept, then elected, then conflicts
  chunk.load(job, chunk_begin, chunk_end, /*with_base=*/true);
  const bool raw_rows = audit && !combination_;
  scratch.resize((models + 6 + (raw_rows ? models + 1 : 0)) * kStreamPiece);
  counts.assign(2 * models + 1, 0);
  const std::span<uint64_t> chunk_kept(counts.data(), models), chunk_elected(counts.data() + models, models);
  uint64_t& chunk_conflicts = counts[2 * models];
  // Disjoint slices of one buffer; __restrict lets the compiler vectorise across them.
  float* __restrict mixed = scratch.data();
  float* __restrict divisor = mixed + kStreamPiece;
  float* __restrict vote = divisor + kStreamPiece;
  float* __restrict base = vote + kStreamPiece;
  float* __restrict result = base + kStreamPiece;     // the merged values, in F32
  float* __restrict deltas = result + kStreamPiece;   // weighted, sparsified task vectors of this piece
  float* increment = deltas + models * kStreamPiece;  // the merged delta
  // With the audit: the raw task vectors, then the merged delta (rows for add_deltas).
  float* __restrict raw = raw_rows ? increment + kStreamPiece : nullptr;
  for (size_t b = chunk_begin; b < chunk_end; b += kStreamPiece) {
    const size_t len = std::min(kStreamPiece, chunk_end - b);
    chunk.to_f32(models, b - chunk_begin, len, base);
    std::fill(mixed, mixed + len, 0.0f);
    for (size_t t = 0; t < models; ++t) {
      const float w = weight_[t] * scale_[t];
      const size_t offset = b - chunk_begin;
      float* __restrict d = deltas + t * kStreamPiece;
      if (plain_) {
        // The sum in the conversion's own loop, and with the audit the weighted task vector
        // (and the raw one) beside it; the same std::fma either way, so the audit does not
        // change the merge's bits.
        if (!audit) {
          chunk.visit(t, offset, len, [&](size_t i, float x) { mixed[i] = std::fma(w, x - base[i], mixed[i]); });
        } else if (!raw) {
          chunk.visit(t, offset, len, [&](size_t i, float x) {
            const float delta = x - base[i];
            mixed[i] = std::fma(w, delta, mixed[i]);
            d[i] = w * delta;
          });
        } else {
          float* __restrict r = raw + t * kStreamPiece;
          chunk.visit(t, offset, len, [&](size_t i, float x) {
            const float delta = x - base[i];
            r[i] = delta;
            mixed[i] = std::fma(w, delta, mixed[i]);
            d[i] = w * delta;
          });
        }
        continue;
      }
      chunk.to_f32(t, offset, len, d);
      if (raw)
        for (size_t i = 0; i < len; ++i) raw[t * kStreamPiece + i] = d[i] - base[i];
      if (sparsify == Sparsification::None) {
        for (size_t i = 0; i < len; ++i) d[i] = w * (d[i] - base[i]);
      } else if (sparsify == Sparsification::Random) {
        const uint64_t seed = job.seed_for(t);
        for (size_t i = 0; i < len; ++i) d[i] = uniform01(seed, b + i) < density_[t] ? w * (d[i] - base[i]) : 0.0f;
      } else if (sparsify == Sparsification::DellaMagprune) {
        const uint8_t* keep = della_keep_[t].data() + b;
        for (size_t i = 0; i < len; ++i) d[i] = keep[i] ? w * (d[i] - base[i]) : 0.0f;
      } else {
        const MagnitudeBand& band = bands_[t];
        for (size_t i = 0; i < len; ++i) {
          const float delta = d[i] - base[i];
          d[i] = band.contains(std::fabs(delta), b + i) ? w * delta : 0.0f;
        }
      }
    }
    if (audit && sparsify != Sparsification::None) count_kept(deltas, models, len, chunk_kept, chunk_conflicts);
    float* __restrict merged_delta = raw ? raw + models * kStreamPiece : increment;
    if (!variant_.sign_consensus) {
      if (!plain_)
        for (size_t t = 0; t < models; ++t)
          for (size_t i = 0; i < len; ++i) mixed[i] += deltas[t * kStreamPiece + i];
      for (size_t i = 0; i < len; ++i) merged_delta[i] = lambda_ * (mixed[i] / plain_divisor_);
    } else {
      // TIES: elect the sign of the summed weighted deltas (0 counts as +), then keep, per
      // entry, the deltas of that sign and the weights of the models they came from.
      std::fill(vote, vote + len, 0.0f);
      std::fill(divisor, divisor + len, 0.0f);
      for (size_t t = 0; t < models; ++t)
        for (size_t i = 0; i < len; ++i) vote[i] += deltas[t * kStreamPiece + i];
      for (size_t t = 0; t < models; ++t) {
        const float* __restrict d = deltas + t * kStreamPiece;
        const float w = weight_[t];
        uint64_t agreeing = 0;
        for (size_t i = 0; i < len; ++i) {
          const float elected_sign = vote[i] >= 0 ? 1.0f : -1.0f;
          const float agree = d[i] * elected_sign > 0 ? 1.0f : 0.0f;  // zero deltas never agree
          mixed[i] += agree * d[i];
          divisor[i] += agree * w;
          agreeing += agree != 0;
        }
        chunk_elected[t] += agreeing;
      }
      for (size_t i = 0; i < len; ++i) {
        const float div = normalize_ && divisor[i] != 0 ? divisor[i] : 1.0f;
        merged_delta[i] = lambda_ * (mixed[i] / div);
      }
    }
    for (size_t i = 0; i < len; ++i) result[i] = base[i] + merged_delta[i];
    job.store_output(out, b - first, result, len);
    if (raw)
      audit->add_deltas(b, raw, kStreamPiece, len);
    else if (combination_)
      audit->add_deltas(b, deltas, kStreamPiece, len);
  }
  if (audit) {
    for (size_t t = 0; t < models; ++t) {
#pragma omp atomic
      kept_[t] += chunk_kept[t];
#pragma omp atomic
      elected_[t] += chunk_elected[t];
    }
#pragma omp atomic
    conflicts_ += chunk_conflicts;
  }
}

void TaskArithmeticRanges::finish() {
  TensorAudit* audit = job_.audit();
  if (!audit || variant_.sparsification == Sparsification::None) return;
  const double n = static_cast<double>(std::max<size_t>(job_.numel(), 1));
  std::vector<double> kept_fraction, elected_fraction;
  for (size_t t = 0; t < models_; ++t) {
    kept_fraction.push_back(static_cast<double>(kept_[t]) / n);
    elected_fraction.push_back(static_cast<double>(elected_[t]) / n);
  }
  audit->set("kept_fraction", kept_fraction);
  if (variant_.sign_consensus) audit->set("elected_fraction", elected_fraction);
  audit->set("sign_conflict_share", static_cast<double>(conflicts_) / n);
}

}  // namespace

Tensor TaskArithmeticFamily::merge(const TensorJob& job) const {
  return merge_whole(*this, job);
}

std::unique_ptr<RangeMerge> TaskArithmeticFamily::start(const TensorJob& job) const {
  return std::make_unique<TaskArithmeticRanges>(variant_, job);
}

}  // namespace amalgam
