// The interface every merge method implements, and the registry methods add themselves to.
//
// A method sees one tensor at a time through a TensorJob: the candidates' tensors (and
// the base's), readable whole or in element ranges converted to F32, and the method's
// parameters already resolved for this tensor (mergekit gradients and filters applied).
// It returns the merged tensor in F32; the engine converts, checks and writes it. A
// streaming method (MethodSpec::streams) instead merges the tensor range by range through
// a RangeMerge, writing each range's output dtype itself: no tensor-sized buffer is ever
// made, and each range leaves for the disk while the next is merged.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/random.h"
#include "core/tensor.h"

namespace amalgam {

class TensorAudit;

struct ParamSpec {
  enum class Scope {
    Model,   // may differ per model (mergekit's tensor_parameters): weight, density, ...
    Global,  // one value for all models: lambda, normalize, ...
  };
  std::string name;
  Scope scope = Scope::Model;
  std::optional<double> default_value;  // nullopt: required
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  std::string help;
};

struct MethodSpec {
  std::string name;
  std::string description;
  std::vector<ParamSpec> params;
  // Task-vector methods need a base and leave it out of the candidates if it is listed
  // among the models too (its task vector is zero).
  bool needs_base = true;
  size_t min_models = 1;
  size_t max_models = std::numeric_limits<size_t>::max();
  // Reads the models' `data` or `stats` (RegMean and RegMean++); other methods refuse them.
  bool data_aware = false;
  // start() returns a RangeMerge: the engine merges the tensor in element ranges, each
  // written in TensorJob::output_dtype() through TensorJob::store_output (which checks it),
  // and the method records the audit's rows as they stream by.
  bool streams = false;
};

// One tensor to merge. Built by the engine; read-only for methods and safe to read from
// several threads at once.
class TensorJob {
 public:
  TensorJob(std::string name, std::vector<Tensor> models, std::optional<Tensor> base,
            std::vector<std::map<std::string, double>> model_params, std::map<std::string, double> global_params,
            uint64_t seed);

  const std::string& name() const { return name_; }
  const Shape& shape() const { return shape_; }
  size_t numel() const { return numel_; }
  size_t model_count() const { return models_.size(); }
  bool has_base() const { return base_.has_value(); }

  // Elements [begin, end) of candidate t (or the base) converted to F32 into `out`.
  void read_model(size_t t, size_t begin, size_t end, float* out) const;
  void read_base(size_t begin, size_t end, float* out) const;
  // The same in two steps, for methods that read a chunk of every input first and convert
  // it in L1-sized pieces (see StoredChunk): the input's bytes as stored, then a range of
  // them in F32. Input t is candidate t, or the base for t == model_count().
  DType input_dtype(size_t t) const { return input(t).dtype(); }
  void read_stored(size_t t, size_t begin, size_t end, std::byte* out) const;
  void stored_to_f32(size_t t, const std::byte* stored, size_t n, float* out) const;
  // Whole tensors in F32 (allocates unless the input already is aligned F32).
  Tensor model_f32(size_t t) const;
  Tensor base_f32() const;

  // The merged tensor's dtype in the output (F32 unless the engine says otherwise), and
  // whether its values must be finite there.
  DType output_dtype() const { return output_dtype_; }
  void set_output(DType dtype, bool check_finite) {
    output_dtype_ = dtype;
    check_output_ = check_finite;
  }
  // For streaming methods: values [begin, begin + n) of `out` (output bytes whose first
  // element is element 0 of the range being merged) from F32, checked when they must be
  // finite. Thread-safe for disjoint ranges.
  void store_output(std::span<std::byte> out, size_t begin, const float* values, size_t n) const;
  // Whether a stored value was NaN or Inf in the output dtype (an F32 value can overflow a
  // narrower one: 70000 in float16 is Inf).
  bool output_nonfinite() const { return *output_nonfinite_; }

  // The config file the parameters came from, for errors about them.
  const std::filesystem::path& config_source() const { return config_source_; }
  void set_config_source(std::filesystem::path source) { config_source_ = std::move(source); }

  double param(const std::string& name, size_t model) const;  // a Model-scope parameter
  double param(const std::string& name) const;                // a Global-scope parameter
  // Seeds randomness per tensor and model, independent of the order tensors are merged in.
  uint64_t seed_for(size_t model) const;

  // Set when a read met NaN or Inf: which input (model index, or model_count() for the base).
  std::optional<size_t> first_nonfinite_input() const;
  // Records that input t holds NaN or Inf (the lowest such input is kept).
  void note_nonfinite(size_t t) const;
  // Reads run inside parallel loops, where an exception cannot propagate: a failed read
  // (a file truncated under us) is recorded and rethrown here, after the method returns.
  void rethrow_read_error() const;

  // The tensor's entry of the merge report (merge/audit.h), or null with --no-audit.
  // Streaming methods record the task vectors as they pass (TensorAudit::add_deltas);
  // otherwise the engine reads them again after merge().
  TensorAudit* audit() const { return audit_.get(); }
  void attach_audit(std::shared_ptr<TensorAudit> audit) { audit_ = std::move(audit); }

 private:
  const Tensor& input(size_t t) const { return t < models_.size() ? models_[t] : base_.value(); }
  void read_input(size_t t, size_t begin, size_t end, float* out) const;
  void note_read_error() const;

  std::string name_;
  Shape shape_;
  size_t numel_ = 0;
  std::vector<Tensor> models_;
  std::optional<Tensor> base_;
  std::vector<std::map<std::string, double>> model_params_;
  std::map<std::string, double> global_params_;
  uint64_t seed_ = 0;
  std::filesystem::path config_source_;
  DType output_dtype_ = DType::F32;
  bool check_output_ = false;
  // Shared so that TensorJob stays copyable; written under a critical section.
  std::shared_ptr<std::optional<size_t>> nonfinite_;
  std::shared_ptr<bool> output_nonfinite_;
  std::shared_ptr<std::exception_ptr> read_error_;
  std::shared_ptr<TensorAudit> audit_;
};

// Elements per streamed chunk: 128 KB of BF16 per input per read. Fewer, larger reads
// cost less kernel time per byte (system calls are costly in a VM; 64 KB reads measured
// 7% more CPU on bench/merge_throughput.sh's linear merge), and a chunk of eight inputs
// still about fits in L2.
inline constexpr size_t kStreamChunk = 65536;

// One chunk of every candidate (and the base) as stored: one read per input per chunk,
// then converted to F32 piece by piece, so that a method's F32 rows of a piece stay in L1
// while it works on them (all the candidates' F32 chunks together would not fit in L2).
class StoredChunk {
 public:
  // Reads elements [begin, end) of every candidate, and of the base when `with_base`.
  void load(const TensorJob& job, size_t begin, size_t end, bool with_base);
  // Elements [begin + offset, begin + offset + n) of input t (candidate, or the base for
  // t == model_count()) in F32.
  void to_f32(size_t t, size_t offset, size_t n, float* out) const {
    job_->stored_to_f32(t, stored(t, offset), n, out);
  }
  // The same elements handed to op(i, x) (i from 0, x in F32) instead of stored: a method
  // folds the conversion into its own loop (acc[i] = std::fma(w, x, acc[i])), so that no
  // F32 copy is made and read back. BF16 converts inside the loop; other dtypes go through
  // an L1-sized buffer. An op of plain arithmetic on arrays vectorises.
  template <class Op>
  void visit(size_t t, size_t offset, size_t n, Op&& op) const;
  // Input t's elements from begin + offset as stored, when it is BF16 (raw bits); nullptr
  // for any other dtype. The audit reads BF16 weights as they are.
  const uint16_t* bf16(size_t t, size_t offset) const {
    return job_->input_dtype(t) == DType::BF16 ? reinterpret_cast<const uint16_t*>(stored(t, offset)) : nullptr;
  }

 private:
  const std::byte* stored(size_t t, size_t offset) const { return bytes_.data() + offsets_[t] + offset * sizes_[t]; }

  const TensorJob* job_ = nullptr;
  std::vector<std::byte> bytes_;
  std::vector<size_t> offsets_, sizes_;
};

// Elements per piece of a StoredChunk: a method's rows of a piece fit in L1.
inline constexpr size_t kStreamPiece = 1024;

template <class Op>
void StoredChunk::visit(size_t t, size_t offset, size_t n, Op&& op) const {
  const DType dtype = job_->input_dtype(t);
  const std::byte* in = stored(t, offset);
  bool finite = true;
  if (dtype == DType::BF16) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, in + 2 * i, 2);
      const uint32_t bits = static_cast<uint32_t>(h) << 16;
      bad |= (bits & 0x7f800000u) == 0x7f800000u;
      op(i, std::bit_cast<float>(bits));
    }
    finite = bad == 0;
  } else {
    float row[kStreamPiece];
    for (size_t p = 0; p < n; p += kStreamPiece) {
      const size_t m = std::min(kStreamPiece, n - p);
      finite &= to_f32_checked(dtype, in + p * dtype_size(dtype), row, m);
      for (size_t i = 0; i < m; ++i) op(p + i, row[i]);
    }
  }
  if (!finite) job_->note_nonfinite(t);
}

struct ModelEntry;
struct MergeConfig;

// What a method sees of the whole merge, before and after the tensor-by-tensor stream:
// data-aware methods measure or read statistics in prepare() and write extra outputs
// (the merged model's statistics) in finish().
struct MergeContext {
  const MergeConfig& config;
  // The candidates in TensorJob order: checkpoint paths and their config entries.
  std::vector<std::filesystem::path> candidates;
  std::vector<const ModelEntry*> entries;
  std::optional<std::filesystem::path> base;
  std::filesystem::path staging;  // the output directory being written
  uint64_t seed = 0;
  uint64_t max_memory = 0;  // bytes a method may hold (--max-memory)
  bool quiet = false;
  bool audit = false;  // the merge writes merge_report.json: methods record their fields
  // A parameter resolved as the engine resolves it for TensorJobs (per-model ones with a
  // candidate index, global ones with nullopt) for `tensor`.
  std::function<double(const std::string& param, std::optional<size_t> candidate, const std::string& tensor)> param;
};

// A streaming method's merge of one tensor (MethodSpec::streams), made by start(job) once
// the whole-tensor work is done (TIES's magnitude ranks).
class RangeMerge {
 public:
  virtual ~RangeMerge() = default;
  // Merges elements [begin, end) into `out`, exactly their bytes in job.output_dtype(),
  // every value through TensorJob::store_output. Ranges come in order and cover the tensor;
  // each begins on a kStreamChunk boundary, so the audit's chunks are whole.
  virtual void merge_range(size_t begin, size_t end, std::span<std::byte> out) = 0;
  // After the last range: the method's own audit fields.
  virtual void finish() {}
};

// Elements per range of merge_whole(). (The engine's ranges are whatever fits in the
// output file's current buffer block, a few megabytes.)
inline constexpr size_t kStreamRange = 64 * kStreamChunk;

class MergeMethod {
 public:
  virtual ~MergeMethod() = default;
  virtual const MethodSpec& spec() const = 0;
  // Called once, after the inputs are checked and before the first merge().
  virtual void prepare(const MergeContext&) {}
  // Returns the merged tensor of job.shape() in F32 (in job.output_dtype() for streaming
  // methods, whose merge() runs their ranges into one tensor: tests and other callers
  // that want the tensor whole).
  virtual Tensor merge(const TensorJob& job) const = 0;
  // Streaming methods only: the tensor's RangeMerge.
  virtual std::unique_ptr<RangeMerge> start(const TensorJob&) const { return nullptr; }
  // Called once after the last merge(), before the output is committed.
  virtual void finish(const MergeContext&) {}
};

// A streaming method's merge(): start(job), then every range into one tensor of
// job.output_dtype().
Tensor merge_whole(const MergeMethod& method, const TensorJob& job);

class MethodRegistry {
 public:
  using Factory = std::function<std::unique_ptr<MergeMethod>()>;
  static MethodRegistry& instance();
  void add(const std::string& name, Factory factory);
  // InputError listing the known methods when `name` is not one of them.
  std::unique_ptr<MergeMethod> create(const std::string& name) const;
  std::vector<std::string> names() const;

 private:
  std::map<std::string, Factory> factories_;
};

// Put `AMALGAM_REGISTER_METHOD(MyMethod);` in the method's .cpp file; MyMethod needs a
// static `const char* kName`.
#define AMALGAM_REGISTER_METHOD(Class)                                                                 \
  static const bool amalgam_registered_##Class = [] {                                                  \
    ::amalgam::MethodRegistry::instance().add(Class::kName, [] { return std::make_unique<Class>(); }); \
    return true;                                                                                       \
  }()

}  // namespace amalgam
