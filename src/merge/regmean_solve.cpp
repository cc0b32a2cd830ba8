#include <cmath>
#include <sstream>

#include "core/error.h"
#include "core/parallel.h"
#include "merge/regmean.h"

namespace amalgam {

RegMeanLinear regmean_linear(std::span<const RegMeanCandidate> candidates, int64_t out, int64_t in, double alpha,
                             const std::string& name) {
  const size_t nin = static_cast<size_t>(in);
  std::vector<float> shrunk(nin * nin), rhs(nin * static_cast<size_t>(out), 0.0f);
  std::vector<double> system(nin * nin, 0.0);
  double total = 0;
  for (const RegMeanCandidate& c : candidates) {
    if (c.weight.size() != static_cast<size_t>(out) * nin || c.gram.size() != nin * nin)
      throw std::logic_error("regmean_linear: sizes do not match for '" + name + "'");
    total += c.factor;
    // G~ = alpha G + (1 - alpha) diag(G): the off-diagonal shrunk toward zero.
    parallel_chunks(nin, 64, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i)
        for (size_t j = 0; j < nin; ++j) {
          const float g = c.gram[i * nin + j] * (i == j ? 1.0f : static_cast<float>(alpha));
          shrunk[i * nin + j] = g;
          system[i * nin + j] += c.factor * g;
        }
    });
    // rhs [in, out] += w G~ W^T
    sgemm(false, true, in, out, in, static_cast<float>(c.factor), shrunk.data(), in, c.weight.data(), in, 1.0f,
          rhs.data(), out);
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
    dgemm(false, false, in, out, in, -1.0, system.data(), in, mean_t.data(), out, 1.0, residual.data(), out);
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
  return result;
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

std::vector<ParamSpec> regmean_params() {
  return {{"alpha", ParamSpec::Scope::Global, 0.95, 0, 1,
           "share of the Grams' off-diagonal kept (the reference's reduce_non_diagonal_ratio)"},
          {"weight", ParamSpec::Scope::Model, 1.0, 0, 1e6,
           "the model's weight: scales its Grams and its share of the mean"},
          {"examples", ParamSpec::Scope::Global, 256, 1, 1e7, "calibration examples per model (with `data`)"},
          {"batch_size", ParamSpec::Scope::Global, 32, 1, 65536, "images per forward while calibrating"}};
}

}  // namespace amalgam
