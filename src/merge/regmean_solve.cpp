#include <cmath>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "core/parallel.h"
#include "merge/audit.h"
#include "merge/regmean.h"

#include "merge/config.h"

namespace amalgam {

namespace {

// sum of a[i] * b[i] in double.
double dot(std::span<const float> a, std::span<const float> b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += static_cast<double>(a[i]) * b[i];
  return sum;
}

// tr((W - W_t) G_t (W - W_t)^T) for every candidate: one GEMM each.
std::vector<double> residual_energies(std::span<const RegMeanCandidate> candidates, std::span<const float> merged,
                                      int64_t out, int64_t in) {
  std::vector<float> delta(merged.size()), product(merged.size());
  std::vector<double> energies;
  for (const RegMeanCandidate& c : candidates) {
    for (size_t k = 0; k < merged.size(); ++k) delta[k] = merged[k] - c.weight[k];
    sgemm_fixed_blocks(false, false, out, in, in, 1.0f, delta.data(), in, c.gram.data(), in, 0.0f, product.data(), in);
    energies.push_back(std::max(0.0, dot(delta, product)));
  }
  return energies;
}

}  // namespace

RegMeanLinear regmean_linear(std::span<const RegMeanCandidate> candidates, int64_t out, int64_t in, double alpha,
                             const std::string& name, bool audit) {
  const size_t nin = static_cast<size_t>(in), nout = static_cast<size_t>(out);
  std::vector<float> product(nin * nout), rhs(nin * nout, 0.0f);
  std::vector<double> system(nin * nin, 0.0), output_energy, gram_trace;
  double total = 0;
  for (const RegMeanCandidate& c : candidates) {
    if (c.weight.size() != nout * nin || c.gram.size() != nin * nin)
      throw std::logic_error("regmean_linear: sizes do not match for '" + name + "'");
    total += c.factor;
    // G~ = alpha G + (1 - alpha) diag(G): the off-diagonal shrunk toward zero.
    parallel_chunks(nin, 64, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i)
        for (size_t j = 0; j < nin; ++j) system[i * nin + j] += c.factor * c.gram[i * nin + j] * (i == j ? 1.0 : alpha);
    });
    // G W^T [in, out], then rhs += w G~ W^T = w (alpha G W^T + (1 - alpha) diag(G) W^T): the
    // unshrunk product also gives the audit tr(W G W^T) for free.
    // In fixed blocks (as every product of a merge): the same bits on any thread count.
    sgemm_fixed_blocks(false, true, in, out, in, 1.0f, c.gram.data(), in, c.weight.data(), in, 0.0f, product.data(),
                       out);
    const float w = static_cast<float>(c.factor), a = static_cast<float>(alpha);
    std::vector<double> row_energy(nin, 0.0);  // per row, summed in order below: same bits on any thread count
    parallel_chunks(nin, 16, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        const float diagonal = (1.0f - a) * c.gram[i * nin + i];
        double energy = 0;
        for (size_t o = 0; o < nout; ++o) {
          const float p = product[i * nout + o], weight = c.weight[o * nin + i];
          rhs[i * nout + o] += w * (a * p + diagonal * weight);
          energy += static_cast<double>(p) * weight;
        }
        row_energy[i] = energy;
      }
    });
    if (audit) {
      double energy = 0, trace = 0;
      for (size_t i = 0; i < nin; ++i) energy += row_energy[i], trace += c.gram[i * nin + i];
      output_energy.push_back(energy);
      gram_trace.push_back(c.factor * trace);
    }
  }
  if (!(total > 0)) throw InputError(name + ": RegMean needs a positive total weight");
  std::vector<double> x(rhs.begin(), rhs.end());
  RegMeanLinear result;
  result.solve = solve_symmetric(system, in, x, out);
  if (result.solve.fallback) {
    // Many solutions fit equally: take the one closest to the weighted average, so that an
    // input direction no calibration row reached keeps the candidates' mean instead of 0.
    // x = mean^T + pinv(A) (B - A mean^T).
    std::vector<double> mean_t(nin * static_cast<size_t>(out), 0.0), residual(rhs.begin(), rhs.end());
    for (const RegMeanCandidate& c : candidates)
      for (size_t o = 0; o < static_cast<size_t>(out); ++o)
        for (size_t i = 0; i < nin; ++i)
          mean_t[i * static_cast<size_t>(out) + o] += c.factor / total * c.weight[o * nin + i];
    {
      const SingleThreadedBlas serial;  // the same bits on any thread count
      dgemm(false, false, in, out, in, -1.0, system.data(), in, mean_t.data(), out, 1.0, residual.data(), out);
    }
    solve_symmetric(system, in, residual, out);
    for (size_t k = 0; k < x.size(); ++k) x[k] = mean_t[k] + residual[k];
    std::ostringstream msg;
    msg << name << ": the summed Gram is singular or ill-conditioned (condition number " << result.solve.condition
        << "); solved with a pseudo-inverse keeping rank " << result.solve.rank << " of " << in
        << ", the candidates' mean elsewhere";
    warn(msg.str());
  }
  result.weight.resize(static_cast<size_t>(out) * nin);
  for (size_t i = 0; i < nin; ++i)
    for (size_t j = 0; j < static_cast<size_t>(out); ++j)
      result.weight[j * nin + i] = static_cast<float>(x[i * static_cast<size_t>(out) + j]);
  if (audit) {
    const std::vector<double> residual = residual_energies(candidates, result.weight, out, in);
    double trace_sum = 0;
    for (double t : gram_trace) trace_sum += t;
    for (size_t t = 0; t < candidates.size(); ++t) {
      result.relative_residuals.push_back(output_energy[t] > 0 ? residual[t] / output_energy[t] : 0.0);
      result.gram_trace_share.push_back(trace_sum > 0 ? gram_trace[t] / trace_sum : 0.0);
    }
  }
  return result;
}

void record_regmean_audit(TensorAudit& audit, const RegMeanLinear& solved) {
  audit.set("relative_residuals", solved.relative_residuals);
  audit.set("gram_trace_share", solved.gram_trace_share);
  audit.set("condition", std::isfinite(solved.solve.condition) ? nlohmann::json(solved.solve.condition)
                                                               : nlohmann::json(std::numeric_limits<double>::max()));
  audit.set("fallback", solved.solve.fallback);
  audit.set("solve_rank", solved.solve.rank);
}

void check_embeddings_source(const MergeContext& ctx) {
  if (ctx.param("embeddings", std::nullopt, "") == 1 && !ctx.base)
    throw InputError(ctx.config.source,
                     "parameters.embeddings: base keeps the base model's embeddings and lm_head; give base_model");
}

Tensor weighted_mean(const TensorJob& job) {
  const size_t models = job.model_count();
  std::vector<float> w(models);
  double total = 0;
  for (size_t t = 0; t < models; ++t) total += job.param("weight", t);
  if (!(total > 0)) throw InputError(job.name() + ": the models' weights must sum to a positive number");
  for (size_t t = 0; t < models; ++t) w[t] = static_cast<float>(job.param("weight", t) / total);
  Tensor out = Tensor::uninitialized(DType::F32, job.shape());
  float* acc = out.mutable_data<float>().data();
  parallel_chunks(job.numel(), kStreamChunk, [&](size_t b, size_t e) {
    thread_local std::vector<float> buffer(kStreamChunk);
    float* buf = buffer.data();
    std::fill(acc + b, acc + e, 0.0f);
    for (size_t t = 0; t < models; ++t) {
      job.read_model(t, b, e, buf);
      for (size_t i = 0; i < e - b; ++i) acc[b + i] += w[t] * buf[i];
    }
  });
  return out;
}

RegMeanCalibrationOptions regmean_calibration_options(const MergeContext& ctx) {
  RegMeanCalibrationOptions o;
  o.images.examples = o.texts.examples = static_cast<int64_t>(ctx.param("examples", std::nullopt, ""));
  o.images.batch_size = o.texts.batch_size = static_cast<int64_t>(ctx.param("batch_size", std::nullopt, ""));
  o.texts.max_length = static_cast<int64_t>(ctx.param("max_length", std::nullopt, ""));
  o.images.seed = o.texts.seed = ctx.seed;
  o.images.quiet = o.texts.quiet = ctx.quiet;
  return o;
}

std::vector<float> transpose_matrix(std::span<const float> m, int64_t rows, int64_t cols) {
  std::vector<float> t(m.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[static_cast<size_t>(c * rows + r)] = m[static_cast<size_t>(r * cols + c)];
  return t;
}

std::vector<ParamSpec> regmean_params() {
  return {{"alpha", ParamSpec::Scope::Global, 0.95, 0, 1,
           "share of the Grams' off-diagonal kept (the reference's reduce_non_diagonal_ratio)"},
          {"weight", ParamSpec::Scope::Model, 1.0, 0, 1e6,
           "the model's weight: scales its Grams and its share of the mean"},
          {"examples", ParamSpec::Scope::Global, 256, 1, 1e7, "calibration examples per model (with `data`)"},
          {"batch_size", ParamSpec::Scope::Global, 32, 1, 65536, "images per forward while calibrating"},
          {"max_length", ParamSpec::Scope::Global, 512, 1, 1e6,
           "tokens per text record while calibrating a language model (longer ones are cut)"},
          {"embeddings", ParamSpec::Scope::Global, 0, 0, 1,
           "mean: the embeddings and lm_head are the models' weighted mean (RegMean's paper, FusionBench); base: "
           "the base model's (MergeBench)"}};
}

}  // namespace amalgam
