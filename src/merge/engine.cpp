#include "merge/engine.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <future>
#include <iostream>
#include <map>
#include <set>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "io/atomic_output.h"
#include "io/hub_cache.h"
#include "io/json_file.h"
#include "lora/apply.h"
#include "merge/audit.h"
#include "merge/chat_template.h"
#include "merge/method.h"
#include "merge/model_card.h"
#include "merge/plan.h"
#include "merge/vocabulary.h"

namespace amalgam {

namespace fs = std::filesystem;

namespace {

// Every path the config names exists, or an error names the config and the key that gave it
// (a CheckpointReader would name only the path, leaving the user to find where it came from).
void check_config_paths_exist(const MergeConfig& config) {
  std::error_code ec;
  const auto check = [&](const fs::path& path, const std::string& key, const std::string& given, bool model) {
    if (fs::exists(path, ec)) return;
    std::string where = "does not exist (a relative path is looked up in the working directory, then beside the config";
    if (model && looks_like_hub_id(given)) {
      where += "; a Hugging Face id in the local hub cache, looked for in";
      for (const fs::path& dir : hub_cache_dirs()) where.append(" ").append(dir.string());
      where += "; amalgam does not download";
    }
    std::string message = key;
    message.append(": '").append(given).append("' ");
    if (ec)
      message.append("cannot be reached: ").append(ec.message());
    else
      message.append(where).append(")");
    throw InputError(config.source, message);
  };
  if (config.base_path) {
    const std::string given = config.base_model.value_or("");
    check(*config.base_path, "base_model", config.base_adapter ? given.substr(0, given.find('+')) : given, true);
  }
  if (config.base_adapter)
    check(*config.base_adapter, "base_model", config.base_model->substr(config.base_model->find('+') + 1), true);
  for (size_t i = 0; i < config.models.size(); ++i) {
    const ModelEntry& m = config.models[i];
    std::string key = "models[" + std::to_string(i) + "]";
    for (size_t sl = config.slices.size(); sl-- > 0;)  // with slices: the first source that names it
      for (size_t j = config.slices[sl].sources.size(); j-- > 0;)
        if (config.slices[sl].sources[j].candidate == i) key = source_key(config, sl, j);
    if (m.adapter) check(*m.adapter, key + ".model", m.model.substr(m.model.find('+') + 1), true);
    check(m.path, key + ".model", m.adapter ? m.model.substr(0, m.model.find('+')) : m.model, true);
    for (size_t d = 0; d < m.data.size(); ++d)
      check(m.data[d], key + ".data[" + std::to_string(d) + "]", m.data[d], false);
    if (m.stats) check(*m.stats, key + ".stats", m.stats->string(), false);
  }
}

// The candidates the method merges, and for each its index in config.models.
struct Candidates {
  std::vector<std::unique_ptr<CheckpointReader>> readers;
  std::vector<size_t> config_index;
};

// `applied` holds the candidates given as BASE+ADAPTER, their adapters applied (by index in
// config.models).
Candidates open_candidates(const MergeConfig& config, const MethodSpec& spec, const CheckpointReader* base,
                           const std::map<size_t, std::unique_ptr<AppliedAdapter>>& applied) {
  Candidates c;
  std::error_code ec;
  for (size_t i = 0; i < config.models.size(); ++i) {
    const auto found = applied.find(i);
    const fs::path& path = found != applied.end() ? found->second->path() : config.models[i].path;
    // A task-vector method's base listed among the models adds a zero task vector: skip it.
    // (Slices are planned per slice: plan_slices leaves the base out where it is a source.)
    if (config.slices.empty() && spec.needs_base && base && fs::equivalent(path, base->path(), ec)) continue;
    c.readers.push_back(std::make_unique<CheckpointReader>(path));
    c.config_index.push_back(i);
  }
  if (config.slices.empty() && (c.readers.size() < spec.min_models || c.readers.size() > spec.max_models)) {
    std::string expected = std::to_string(spec.min_models);
    if (spec.max_models != spec.min_models)
      expected +=
          spec.max_models == std::numeric_limits<size_t>::max() ? " or more" : " to " + std::to_string(spec.max_models);
    throw InputError(config.source, "models: " + spec.name + " merges " + expected + " model(s)" +
                                        (spec.needs_base ? " besides the base" : "") + ", got " +
                                        std::to_string(c.readers.size()));
  }
  return c;
}

// Every parameter the config sets must be one the method knows, at a scope it allows.
void check_parameter_names(const MergeConfig& config, const MethodSpec& spec) {
  auto known = [&] {
    std::string s;
    for (const auto& p : spec.params) s += (s.empty() ? "" : ", ") + p.name;
    return s.empty() ? std::string("none") : s;
  };
  auto find = [&](const std::string& name) -> const ParamSpec* {
    for (const auto& p : spec.params)
      if (p.name == name) return &p;
    return nullptr;
  };
  // `at`: where the map sits in the config ("" at the top level); `one_model`: a model's or a
  // slice source's own settings, where a parameter that applies to all models is refused.
  const auto check = [&](const ParamMap& params, const std::string& at, bool one_model) {
    for (const auto& [name, setting] : params) {
      const std::string key = (at.empty() ? "" : at + ".") + "parameters." + name;
      const ParamSpec* p = find(name);
      if (!p) throw InputError(config.source, key + ": not a parameter of " + spec.name + " (known: " + known() + ")");
      if (one_model && p->scope == ParamSpec::Scope::Global)
        throw InputError(config.source,
                         key + ": '" + name + "' applies to all models; set it under the top-level parameters");
    }
  };
  check(config.parameters, "", false);
  for (size_t i = 0; i < config.models.size(); ++i)
    check(config.models[i].parameters, "models[" + std::to_string(i) + "]", true);
  for (const MergeModule& m : config.modules) check(m.parameters, "modules." + m.name, false);
  for (size_t s = 0; s < config.slices.size(); ++s) {
    check(config.slices[s].parameters, slice_key(config, s), false);
    for (size_t j = 0; j < config.slices[s].sources.size(); ++j)
      check(config.slices[s].sources[j].parameters, source_key(config, s, j), true);
  }
}

double resolve_one(const MergeConfig& config, const ParamSpec& p, const ParamOwner& owner, const std::string& tensor,
                   double t) {
  std::optional<double> v = resolve_param(config, p.name, owner, tensor, t);
  std::string where = "parameters." + p.name;
  if (owner.slice)
    where = (owner.source ? source_key(config, *owner.slice, *owner.source) : slice_key(config, *owner.slice)) + "." +
            where;
  else if (owner.model)
    where = "models[" + std::to_string(*owner.model) + "]." + where;
  if (!v) v = p.default_value;
  if (!v) throw InputError(config.source, tensor, "missing required parameter " + where);
  if (!std::isfinite(*v) || *v < p.min || *v > p.max)
    throw InputError(config.source, tensor,
                     where + " = " + std::to_string(*v) + " is outside [" + std::to_string(p.min) + ", " +
                         std::to_string(p.max) + "]");
  return *v;
}

void check_same_shape(const CheckpointReader& ref, const CheckpointReader& other, const std::string& name) {
  const TensorInfo& a = ref.info(name);
  const TensorInfo& b = other.info(name);
  if (a.shape != b.shape)
    throw InputError(other.shard_of(name).path(), name,
                     "shape " + shape_to_string(b.shape) + " differs from " + shape_to_string(a.shape) + " in " +
                         ref.path().string());
  if (is_floating(a.dtype) != is_floating(b.dtype))
    throw InputError(other.shard_of(name).path(), name,
                     std::string("dtype ") + std::string(dtype_name(b.dtype)) + " is not compatible with " +
                         std::string(dtype_name(a.dtype)) + " in " + ref.path().string());
}

}  // namespace

uint64_t default_max_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return uint64_t{8} << 30;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 2;
}

namespace {

// Everything one merge needs, opened and checked up front.
struct MergeInputs {
  const MergeConfig& config;
  const MergeOptions& options;
  std::unique_ptr<MergeMethod> method;
  // BASE+ADAPTER models, applied beside the output for the run (before the readers that map
  // them, so that they outlive them).
  std::unique_ptr<AppliedAdapter> applied_base;
  std::map<size_t, std::unique_ptr<AppliedAdapter>> applied;
  std::unique_ptr<CheckpointReader> base;
  Candidates candidates;
  const CheckpointReader* reference = nullptr;  // the base, or the first model without one
  std::optional<LayerPositions> positions;      // of the reference's tensors
  // With tokenizer options: the output vocabulary, and each model's embedding tensors in it,
  // read in place of its own (the reader that holds them, by the model's reader).
  std::optional<OutputVocabulary> vocabulary;
  std::unique_ptr<PermutedEmbeddings> permuted;
  std::set<std::string> vocabulary_tensors;
  std::map<const CheckpointReader*, const CheckpointReader*> permuted_reader;

  // Where a model's tensor is read from: its permuted embeddings, or its own checkpoint.
  const CheckpointReader& source(const CheckpointReader& model, const std::string& name) const {
    if (!vocabulary_tensors.contains(name)) return model;
    const auto it = permuted_reader.find(&model);
    return it == permuted_reader.end() ? model : *it->second;
  }
  uint64_t seed = 0;
};

// The files a Hugging Face tokenizer saves (save_pretrained), for --no-copy-tokenizer.
bool is_tokenizer_file(const std::string& name) {
  for (const char* file : {"special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
                           "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja"})
    if (name == file) return true;
  return name.starts_with("tokenizer");  // tokenizer.json, tokenizer_config.json, tokenizer.model
}

// Prefetches or releases every input of a planned tensor.
void for_each_input(const PlannedTensor& p, const std::function<void(const CheckpointReader&, const std::string&)>& f) {
  if (p.base) f(*p.base->reader, p.base->name);
  for (const TensorSource& in : p.inputs) f(*in.reader, in.name);
}

// A models: merge's plan: every tensor of the reference, each candidate's tensor of that name
// (with --allow-missing, the base's where a candidate lacks it), t by the tensor's layer.
std::vector<PlannedTensor> plan_models(const MergeInputs& in) {
  std::vector<PlannedTensor> plan;
  for (const auto& name : in.reference->names()) {
    const CheckpointReader& ref = in.source(*in.reference, name);
    const TensorInfo& info = ref.info(name);
    PlannedTensor p;
    p.t = (*in.positions)(name);
    for (size_t i = 0; i < in.candidates.readers.size(); ++i) {
      const CheckpointReader& r = in.source(*in.candidates.readers[i], name);
      const ParamOwner owner{in.candidates.config_index[i], std::nullopt, std::nullopt};
      if (r.contains(name)) {
        check_same_shape(ref, r, name);
        p.inputs.push_back({&r, name, owner});
      } else if (in.options.allow_missing && in.base) {
        p.inputs.push_back({in.base.get(), name, owner});
      } else {
        throw InputError(r.path(), name,
                         "missing (present in " + ref.path().string() + ")" +
                             (in.base ? "; --allow-missing takes the base's tensor" : ""));
      }
    }
    if (in.base) p.base = TensorSource{&in.source(*in.base, name), name, ParamOwner{}};
    DType out = info.dtype;
    if (is_floating(info.dtype)) out = in.config.out_dtype.value_or(in.config.dtype.value_or(info.dtype));
    p.out = {name, out, info.shape};
    plan.push_back(std::move(p));
  }
  const CheckpointReader& ref = *in.reference;
  const std::set<std::string> ref_names(ref.names().begin(), ref.names().end());
  for (const auto& r : in.candidates.readers)
    for (const auto& name : r->names())
      if (!ref_names.contains(name) && !in.options.quiet)
        std::cerr << "amalgam: note: " << r->path().string() << ": tensor '" << name
                  << "' is not in the base and is left out\n";
  return plan;
}

// mergekit's chat_template, into the output's tokenizer_config.json (from the reference's
// tokenizer files); "auto" looks at every input model's.
void set_chat_template(const MergeInputs& in, const fs::path& staging) {
  std::vector<fs::path> models;
  if (in.base) models.push_back(in.base->dir());
  for (const auto& r : in.candidates.readers) models.push_back(r->dir());
  const auto text = resolve_chat_template(*in.config.chat_template, models);
  if (!text) {
    if (!in.options.quiet) std::cerr << "amalgam: note: chat_template: auto: no input model has a chat template\n";
    return;
  }
  if (!write_chat_template(staging, *text) && !in.options.quiet)
    std::cerr << "amalgam: warning: chat_template: the output has no tokenizer_config.json to hold it; not saved\n";
}

// mergekit's tokenizer options: the output vocabulary over the base (or the first model) and
// every candidate, and each one's embeddings and LM head mapped into it by token.
void permute_embeddings(MergeInputs& in) {
  const MergeConfig& config = in.config;
  if (in.method->spec().data_aware)
    throw InputError(config.source, "tokenizer: " + in.method->spec().name +
                                        " measures each model with its own vocabulary; tokenizer options take "
                                        "data-free methods");
  std::vector<const CheckpointReader*> readers;
  if (in.base) readers.push_back(in.base.get());
  for (const auto& r : in.candidates.readers) readers.push_back(r.get());
  std::vector<ModelTokens> tokens;
  for (const CheckpointReader* r : readers) tokens.push_back(read_model_tokens(r->dir()));
  in.vocabulary = build_output_vocabulary(*config.tokenizer, tokens);
  const std::vector<std::string> names = vocabulary_tensors(*readers.front(), tokens.front().vocab_size);
  if (names.empty())
    throw InputError(readers.front()->path(),
                     "tokenizer: no embedding or lm_head tensor has config.json's vocab_size (" +
                         std::to_string(tokens.front().vocab_size) + ") rows");
  // A token's source model, by its config entry: the base, or the candidate read from it (a
  // base listed among the models too is read as the base).
  auto token_model = [&](std::optional<size_t> candidate) -> size_t {
    if (candidate)
      for (size_t j = 0; j < in.candidates.config_index.size(); ++j)
        if (in.candidates.config_index[j] == *candidate) return j + (in.base ? 1 : 0);
    if (!in.base) throw InputError(config.source, "tokenizer.tokens: a source names the base_model, and there is none");
    return 0;
  };
  in.permuted = std::make_unique<PermutedEmbeddings>(*in.vocabulary, *config.tokenizer, readers, tokens, names,
                                                     token_model, in.options.output);
  in.vocabulary_tensors.insert(names.begin(), names.end());
  for (size_t i = 0; i < readers.size(); ++i) in.permuted_reader[readers[i]] = &in.permuted->reader(i);
}

MergeContext make_context(const MergeInputs& in, const fs::path& staging) {
  MergeContext c{in.config,        {}, {}, std::nullopt, staging, in.seed, in.options.max_memory, in.options.quiet,
                 in.options.audit, {}};
  if (c.max_memory == 0) c.max_memory = default_max_memory();
  for (size_t i = 0; i < in.candidates.readers.size(); ++i) {
    c.candidates.push_back(in.candidates.readers[i]->path());
    c.entries.push_back(&in.config.models[in.candidates.config_index[i]]);
  }
  if (in.base) c.base = in.base->path();
  c.param = [&in](const std::string& name, std::optional<size_t> candidate, const std::string& tensor) {
    for (const auto& p : in.method->spec().params)
      if (p.name == name)
        return resolve_one(
            in.config, p,
            ParamOwner{candidate ? std::optional<size_t>(in.candidates.config_index.at(*candidate)) : std::nullopt,
                       std::nullopt, std::nullopt},
            tensor, (*in.positions)(tensor));
    throw std::logic_error("parameter '" + name + "' is not in the method's spec");
  };
  return c;
}

// Finite inputs that merge to NaN or Inf are the config's doing (weights that blow a value
// past the output dtype's range, most often F16's 65504): an input error naming the tensor,
// the config and the models.
InputError nonfinite_output(const MergeInputs& in, const std::string& tensor, DType out_dtype) {
  std::string models;
  for (const auto& r : in.candidates.readers) models += (models.empty() ? "" : ", ") + r->path().string();
  return InputError(in.config.source, tensor,
                    "the " + in.method->spec().name + " merge of " + models +
                        " gives NaN or Inf from finite inputs, or a value outside " +
                        std::string(dtype_name(out_dtype)) +
                        "'s range (a wider dtype, e.g. dtype: float32, avoids "
                        "the latter)");
}

// NaN and Inf among `n` values stored as `dtype`: what --no-check-finite writes, counted.
uint64_t count_nonfinite(DType dtype, const std::byte* stored, size_t n) {
  if (!is_floating(dtype)) return 0;
  constexpr size_t kPiece = 4096;
  float values[kPiece];
  uint64_t count = 0;
  for (size_t b = 0; b < n; b += kPiece) {
    const size_t m = std::min(kPiece, n - b);
    convert_to_f32(dtype, stored + b * dtype_size(dtype), values, m);
    for (size_t i = 0; i < m; ++i) count += !std::isfinite(values[i]);
  }
  return count;
}

// Converts the merged values to the output dtype in one parallel pass, checking them: an
// error when they must be finite, else a count of the non-finite ones written.
Tensor finish_tensor(const MergeInputs& in, const std::string& name, const Tensor& merged, DType out_dtype,
                     MergeSummary& summary) {
  Tensor out = Tensor::uninitialized(out_dtype, merged.shape());
  const float* values = merged.data<float>().data();
  std::byte* dst = out.mutable_bytes().data();
  std::atomic<bool> nonfinite{false};
  parallel_chunks(static_cast<size_t>(merged.numel()), size_t{1} << 14, [&](size_t b, size_t e) {
    if (!from_f32_checked(values + b, out_dtype, dst + b * dtype_size(out_dtype), e - b)) nonfinite = true;
  });
  if (nonfinite && in.options.check_finite) throw nonfinite_output(in, name, out_dtype);
  if (nonfinite) summary.nonfinite_written += count_nonfinite(out_dtype, dst, static_cast<size_t>(out.numel()));
  return out;
}

// Writes whole tensors on a second thread while the next tensor is merged.
class TensorWriter {
 public:
  explicit TensorWriter(CheckpointWriter& writer) : writer_(writer) {}
  ~TensorWriter() {
    if (pending_.valid()) pending_.wait();  // unwinding: the thread must not outlive its data
  }
  void write(const std::string& name, Tensor tensor) {
    wait();
    pending_ = std::async(std::launch::async, [this, name, t = std::move(tensor)] { writer_.write(name, t); });
  }
  void wait() {
    if (pending_.valid()) pending_.get();
  }

 private:
  CheckpointWriter& writer_;
  std::future<void> pending_;
};

// The TensorJob for one floating-point tensor: its inputs as zero-copy views and the
// method's parameters resolved for it.
// Model parameters are looked up under each input's own name, global ones under the
// output's, as mergekit does.
TensorJob make_job(const MergeInputs& in, const PlannedTensor& planned, MergeSummary& summary, bool audit) {
  const TensorSpec& out_spec = planned.out;
  const std::string& name = out_spec.name;
  const MethodSpec& spec = in.method->spec();
  std::vector<Tensor> inputs;
  std::vector<std::map<std::string, double>> model_params;
  for (const TensorSource& source : planned.inputs) {
    inputs.push_back(source.reader->tensor(source.name));
    summary.bytes_read += inputs.back().nbytes();
    std::map<std::string, double> values;
    for (const auto& p : spec.params)
      if (p.scope == ParamSpec::Scope::Model)
        values[p.name] = resolve_one(in.config, p, source.owner, source.name, planned.t);
    model_params.push_back(std::move(values));
  }
  std::map<std::string, double> globals;
  for (const auto& p : spec.params)
    if (p.scope == ParamSpec::Scope::Global)
      globals[p.name] =
          resolve_one(in.config, p, ParamOwner{std::nullopt, planned.slice, std::nullopt}, name, planned.t);
  std::optional<Tensor> base_tensor;
  if (planned.base) {
    base_tensor = planned.base->reader->tensor(planned.base->name);
    summary.bytes_read += base_tensor->nbytes();
  }

  TensorJob job(name, std::move(inputs), base_tensor, std::move(model_params), std::move(globals), in.seed);
  job.set_output(out_spec.dtype, in.options.check_finite);
  job.set_config_source(in.config.source);
  if (audit) job.attach_audit(std::make_shared<TensorAudit>(job.model_count(), job.numel()));
  return job;
}

// What every merge of a tensor checks once the method has read its inputs: reads that
// failed, and inputs that hold NaN or Inf.
void check_inputs(const MergeInputs& in, const TensorJob& job) {
  job.rethrow_read_error();
  if (!in.options.check_finite) return;
  const auto bad = job.first_nonfinite_input();
  if (!bad) return;
  const std::string& name = job.name();
  const bool is_base = *bad == job.model_count();
  const CheckpointReader& r = is_base ? *in.base : *in.candidates.readers[*bad];
  throw InputError(r.contains(name) ? r.shard_of(name).path() : in.base->shard_of(name).path(), name,
                   "contains NaN or Inf (--no-check-finite merges it anyway)");
}

// Merges one floating-point tensor whole and returns it in its output dtype.
Tensor merge_tensor(const MergeInputs& in, const PlannedTensor& planned, MergeSummary& summary, MergeReport* report) {
  const TensorSpec& out_spec = planned.out;
  const std::string& name = out_spec.name;
  const MethodSpec& spec = in.method->spec();
  TensorJob job = make_job(in, planned, summary, report != nullptr);
  const Tensor merged = in.method->merge(job);
  check_inputs(in, job);
  if (merged.shape() != out_spec.shape || merged.dtype() != DType::F32)
    throw std::logic_error(spec.name + " returned a tensor of the wrong shape for '" + name + "'");
  Tensor out = finish_tensor(in, name, merged, out_spec.dtype, summary);
  if (report) {
    if (!job.audit()->has_deltas()) audit_by_reading(job, merged, *job.audit());
    job.rethrow_read_error();
    report->add(name, out_spec.shape, *job.audit());
  }
  return out;
}

// Merges one floating-point tensor with a streaming method, range by range, each range
// straight into the output file's buffer (which the writer's I/O threads send to the disk
// while the next range is merged): no tensor-sized buffer and no copy of the output.
void stream_tensor(const MergeInputs& in, const PlannedTensor& planned, MergeSummary& summary, MergeReport* report,
                   CheckpointWriter& writer) {
  const TensorSpec& out_spec = planned.out;
  const std::string& name = out_spec.name;
  const MethodSpec& spec = in.method->spec();
  TensorJob job = make_job(in, planned, summary, report != nullptr);
  const std::unique_ptr<RangeMerge> ranges = in.method->start(job);
  if (!ranges) throw std::logic_error(spec.name + " streams but started no RangeMerge");
  const size_t n = job.numel(), size = dtype_size(out_spec.dtype);
  // Where less than a chunk is left in the file's buffer, a chunk goes through this one.
  std::vector<std::byte> bounce;
  size_t b = 0;
  do {  // an empty tensor is one empty range
    check_interrupt();
    const std::span<std::byte> space = writer.reserve(name, (n - b) * size);
    size_t e = b + space.size() / size;
    if (e < n) e = b + (e - b) / kStreamChunk * kStreamChunk;  // ranges start on chunk boundaries
    std::span<std::byte> out = space.first((e - b) * size);
    if (e == b && b < n) {
      e = std::min(n, b + kStreamChunk);
      bounce.resize((e - b) * size);
      out = bounce;
    }
    ranges->merge_range(b, e, out);
    check_inputs(in, job);
    if (job.output_nonfinite()) throw nonfinite_output(in, name, out_spec.dtype);
    if (!in.options.check_finite) summary.nonfinite_written += count_nonfinite(out_spec.dtype, out.data(), e - b);
    if (out.data() == bounce.data())
      writer.append(name, out);
    else
      writer.commit(name, out.size());
    b = e;
  } while (b < n);
  ranges->finish();
  if (report) {
    if (!job.audit()->has_deltas() && n > 0)
      throw std::logic_error(spec.name + " streamed but left the audit's rows out");
    report->add(name, out_spec.shape, *job.audit());
  }
}

// The dtype of the floating-point tensors written, for config.json's torch_dtype: the one
// holding the most bytes when a merge writes several (out_dtype applies to all of them).
std::optional<DType> floating_dtype_written(const std::vector<TensorSpec>& plan) {
  std::map<DType, uint64_t> bytes;
  for (const auto& t : plan)
    if (is_floating(t.dtype)) bytes[t.dtype] += t.nbytes();
  if (bytes.empty()) return std::nullopt;
  return std::max_element(bytes.begin(), bytes.end(), [](const auto& a, const auto& b) { return a.second < b.second; })
      ->first;
}

// A slices merge's config.json says how many layers it wrote: under a module's dotted key
// ("text_config.num_hidden_layers"), or for the one module of a one-module model under
// num_hidden_layers, or GPT-2's n_layer, whichever the reference's config has.
void set_layer_count(nlohmann::ordered_json& config, const std::string& key, int64_t layers) {
  if (!key.empty()) {
    nlohmann::ordered_json* at = &config;
    for (size_t start = 0;;) {
      const size_t dot = key.find('.', start);
      if (!at->is_object()) *at = nlohmann::ordered_json::object();
      at = &(*at)[key.substr(start, dot - start)];
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    *at = layers;
    return;
  }
  bool set = false;
  for (const char* key : {"num_hidden_layers", "n_layer"})
    if (config.contains(key)) {
      config[key] = layers;
      set = true;
    }
  if (!set) config["num_hidden_layers"] = layers;
}

}  // namespace

MergeSummary run_merge(const MergeConfig& config, const MergeOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<MergeMethod> method;
  try {
    method = MethodRegistry::instance().create(config.merge_method);
  } catch (const InputError& e) {
    throw InputError(config.source, std::string("merge_method: ") + e.what());
  }
  MergeInputs in{config, options, std::move(method), nullptr, {}, nullptr, {}, nullptr, {}, {}, nullptr, {}, {}, 0};
  const MethodSpec& spec = in.method->spec();
  check_parameter_names(config, spec);
  if (!spec.data_aware)
    for (size_t i = 0; i < config.models.size(); ++i)
      if (!config.models[i].data.empty() || config.models[i].stats)
        throw InputError(config.source, "models[" + std::to_string(i) + "]." +
                                            (config.models[i].stats ? "stats" : "data") + ": " + spec.name +
                                            " is data-free and does not read calibration data or statistics");
  if (spec.data_aware && !config.slices.empty())
    throw InputError(config.source,
                     "slices: " + spec.name + " measures whole models' statistics; slices take data-free methods");
  if (spec.needs_base && !config.base_path && config.slices.empty())
    throw InputError(config.source, "base_model: " + spec.name + " needs a base model");
  check_config_paths_exist(config);
  if (config.base_adapter) {
    in.applied_base = std::make_unique<AppliedAdapter>(*config.base_path, *config.base_adapter, options.output, "base");
    in.base = std::make_unique<CheckpointReader>(in.applied_base->path());
  } else if (config.base_path) {
    in.base = std::make_unique<CheckpointReader>(*config.base_path);
  }
  for (size_t i = 0; i < config.models.size(); ++i)
    if (const auto& m = config.models[i]; m.adapter)
      in.applied[i] = std::make_unique<AppliedAdapter>(m.path, *m.adapter, options.output, std::to_string(i));
  in.candidates = open_candidates(config, spec, in.base.get(), in.applied);
  // The checkpoint whose config and other files the output takes: the base, or the first
  // model (with slices, the first slice's first source).
  in.reference = in.base ? in.base.get() : nullptr;
  if (!in.reference && !config.slices.empty()) {
    const size_t first = config.slices.front().sources.front().candidate.value();
    for (size_t i = 0; i < in.candidates.readers.size(); ++i)
      if (in.candidates.config_index[i] == first) in.reference = in.candidates.readers[i].get();
  }
  if (!in.reference) in.reference = in.candidates.readers.front().get();
  in.seed = options.seed.value_or(config.seed.value_or(0));
  in.positions.emplace(*in.reference);
  if (config.tokenizer) permute_embeddings(in);
  const CheckpointReader& ref = *in.reference;

  // Plan: every output tensor, merged when it is floating point, copied from its first input
  // when not (integer buffers).
  std::vector<std::pair<std::string, int64_t>> sliced_layers;
  std::vector<PlannedTensor> planned;
  if (config.slices.empty()) {
    planned = plan_models(in);
  } else {
    std::vector<const CheckpointReader*> readers(config.models.size());
    for (size_t i = 0; i < in.candidates.readers.size(); ++i)
      readers[in.candidates.config_index[i]] = in.candidates.readers[i].get();
    SlicePlan slices = plan_slices(config, spec, in.base.get(), readers);
    planned = std::move(slices.tensors);
    sliced_layers = std::move(slices.layer_counts);
    for (const std::string& m : slices.modules_left_out)
      if (!options.quiet)
        std::cerr << "amalgam: warning: modules: the config does not give '" << m
                  << "', so none of its tensors is written (as mergekit)\n";
    for (PlannedTensor& p : planned) {  // the embeddings in the output vocabulary
      if (!in.vocabulary_tensors.contains(p.out.name)) continue;
      for (TensorSource& s : p.inputs) s.reader = &in.source(*s.reader, s.name);
      if (p.base) p.base->reader = &in.source(*p.base->reader, p.base->name);
      p.out.shape = p.inputs.front().reader->info(p.inputs.front().name).shape;
    }
  }
  std::vector<TensorSpec> plan;
  for (const PlannedTensor& p : planned) plan.push_back(p.out);

  AtomicOutput output(options.output, options.force);
  // Tensors are written in plan order (below), so the output streams past the page cache.
  CheckpointWriter writer(output.staging(), plan, options.max_shard_bytes, {{"format", "pt"}}, WriteOrder::Plan);
  // The recorded config names the checkpoints as they were found, so it reruns from anywhere.
  MergeConfig resolved = config;
  resolved.seed = in.seed;
  std::error_code ec;
  for (auto& m : resolved.models) {
    m.model = fs::absolute(m.path, ec).lexically_normal().string();
    if (m.adapter) m.model += "+" + fs::absolute(*m.adapter, ec).lexically_normal().string();
    for (auto& d : m.data) d = fs::absolute(d, ec).lexically_normal();
    if (m.stats) m.stats = fs::absolute(*m.stats, ec).lexically_normal();
  }
  if (resolved.base_path) resolved.base_model = fs::absolute(*resolved.base_path, ec).lexically_normal().string();
  if (resolved.base_adapter) {
    resolved.base_model->push_back('+');
    resolved.base_model->append(fs::absolute(*resolved.base_adapter, ec).lexically_normal().string());
  }
  const std::string config_yaml = merge_config_to_yaml(resolved);
  write_text_file(output.staging() / "amalgam_config.yaml", config_yaml);
  // The base's tokenizer and other files come along; its config.json is rewritten to say
  // what was written, and its README.md (a card about another model) is replaced by ours.
  const std::optional<DType> weights = floating_dtype_written(plan);
  std::vector<fs::path> carried;
  for (const auto& f : ref.auxiliary_files()) {
    const fs::path name = f.filename();
    if (name != "amalgam_config.yaml" && name != kMergeReportFile && name != "README.md" && name != "config.json" &&
        (options.copy_tokenizer || !is_tokenizer_file(name.string())))
      carried.push_back(f);
  }
  copy_files_into(carried, output.staging());
  if (in.vocabulary && in.vocabulary->changed) write_tokenizer_files(*in.vocabulary, output.staging());
  if (config.chat_template) set_chat_template(in, output.staging());
  if (ref.config()) {
    nlohmann::ordered_json out_config = config_for_output(nlohmann::ordered_json(*ref.config()), weights);
    for (const auto& [key, layers] : sliced_layers) set_layer_count(out_config, key, layers);
    if (in.vocabulary && out_config.contains("vocab_size")) out_config["vocab_size"] = in.vocabulary->rows;
    write_text_file(output.staging() / "config.json", out_config.dump(2) + "\n");
  }
  if (options.model_card)
    write_text_file(output.staging() / "README.md", merge_model_card(resolved, config_yaml, weights));

  const MergeContext context = make_context(in, output.staging());
  in.method->prepare(context);
  // The audit compares every tensor's candidates with one list of models; slices merge
  // different models in different layers.
  std::optional<MergeReport> report;
  if (options.audit && config.slices.empty()) report.emplace(spec.name, context.candidates, context.base);
  if (options.audit && !config.slices.empty() && !options.quiet)
    std::cerr << "amalgam: note: slices: no merge_report.json (the audit covers models: merges)\n";

  // While tensor i is merged on all cores, the kernel reads tensor i+1 ahead and a second
  // thread writes tensor i-1 (or the previous range of a streamed tensor).
  MergeSummary summary;
  uint64_t output_bytes = 0;
  for (const TensorSpec& t : plan) output_bytes += t.nbytes();
  Progress progress("merging", plan.size(), output_bytes, options.quiet);
  TensorWriter tensors(writer);
  for (size_t i = 0; i < plan.size(); ++i) {
    check_interrupt();
    const PlannedTensor& p = planned[i];
    const std::string& name = p.out.name;
    if (i + 1 < planned.size())
      for_each_input(planned[i + 1], [](const CheckpointReader& r, const std::string& n) { r.prefetch(n); });
    const TensorSource& first = p.base ? *p.base : p.inputs.front();
    if (!is_floating(first.reader->info(first.name).dtype)) {
      tensors.write(name, first.reader->tensor(first.name));  // integer buffers are the base's
      ++summary.tensors_copied;
    } else if (spec.streams) {
      tensors.wait();  // the file's bytes go in order
      stream_tensor(in, p, summary, report ? &*report : nullptr, writer);
      ++summary.tensors_merged;
    } else {
      tensors.write(name, merge_tensor(in, p, summary, report ? &*report : nullptr));
      ++summary.tensors_merged;
    }
    summary.bytes_written += p.out.nbytes();
    for_each_input(p, [](const CheckpointReader& r, const std::string& n) { r.release(n); });
    progress.advance(1, p.out.nbytes());
  }
  tensors.wait();
  in.method->finish(context);
  if (report) {
    const nlohmann::json json = report->to_json();
    write_text_file(output.staging() / kMergeReportFile, json.dump(1) + "\n");
    summary.audit_summary = audit_summary(json);
  }
  writer.finish();
  summary.shards = writer.shard_count();
  output.commit();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace amalgam
