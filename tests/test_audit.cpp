// The merge audit (merge_report.json, amalgam audit): every number against a direct
// computation here, in double, from the inputs and the merged output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "io/json_file.h"
#include "io/safetensors.h"
#include "merge/audit.h"
#include "merge/config.h"
#include "merge/engine.h"
#include "merge/regmean.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::TempDir;
using Doubles = std::vector<double>;

// ---- Checkpoints ----------------------------------------------------------------------------

// One weight matrix spanning three stream chunks (so the audit's per-chunk sums are tested)
// and a bias.
const std::string kMatrix = "layers.0.weight";
const std::string kBias = "layers.0.bias";
const Shape kMatrixShape = {300, 310};
const Shape kBiasShape = {7};

struct Model {
  std::vector<float> matrix, bias;
};

Model random_model(uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  Model m;
  for (int64_t i = 0; i < kMatrixShape[0] * kMatrixShape[1]; ++i) m.matrix.push_back(normal(rng));
  for (int64_t i = 0; i < kBiasShape[0]; ++i) m.bias.push_back(normal(rng));
  return m;
}

// base + delta, elementwise.
Model plus(const Model& base, const Model& delta) {
  Model m = base;
  for (size_t i = 0; i < m.matrix.size(); ++i) m.matrix[i] += delta.matrix[i];
  for (size_t i = 0; i < m.bias.size(); ++i) m.bias[i] += delta.bias[i];
  return m;
}

fs::path write_model(const fs::path& dir, const Model& m, DType dtype = DType::F32) {
  fs::create_directories(dir);
  SafetensorsWriter w(dir / "model.safetensors", {{kMatrix, dtype, kMatrixShape}, {kBias, dtype, kBiasShape}});
  w.write(kMatrix, Tensor::from_f32(kMatrixShape, m.matrix).to(dtype));
  w.write(kBias, Tensor::from_f32(kBiasShape, m.bias).to(dtype));
  w.finish();
  return dir;
}

std::vector<float> read_tensor(const fs::path& dir, const std::string& name) {
  const SafetensorsReader r(dir / "model.safetensors");
  const Tensor t = r.tensor(name).to(DType::F32);
  return {t.data<float>().begin(), t.data<float>().end()};
}

json merge_and_report(const TempDir& tmp, const std::string& yaml, const std::string& name = "out") {
  MergeOptions options;
  options.output = tmp / name;
  options.quiet = true;
  run_merge(parse_merge_config(yaml, tmp / "merge.yaml"), options);
  return read_json_file(tmp / name / "merge_report.json");
}

std::string models_yaml(const std::vector<fs::path>& models, const std::string& parameters) {
  std::string y = "models:\n";
  for (const auto& m : models) y += "  - model: " + m.string() + "\n    parameters: {" + parameters + "}\n";
  return y;
}

const json& tensor_entry(const json& report, const std::string& name) {
  for (const auto& t : report["tensors"])
    if (t["name"] == name) return t;
  throw std::runtime_error("no report entry for " + name);
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// The report's generic fields against a naive computation from the rows (task vectors) and
// the merged delta.
void expect_delta_fields(const json& entry, const std::vector<Doubles>& tasks, const Doubles& merged) {
  const size_t n = tasks.size();
  Doubles mean(merged.size(), 0.0);
  for (const auto& t : tasks)
    for (size_t i = 0; i < t.size(); ++i) mean[i] += t[i] / static_cast<double>(n);
  const double merged_norm = std::sqrt(dot(merged, merged)), mean_norm = std::sqrt(dot(mean, mean));
  ASSERT_EQ(entry["task_vector_norms"].size(), n);
  for (size_t i = 0; i < n; ++i) {
    const double ni = std::sqrt(dot(tasks[i], tasks[i]));
    EXPECT_NEAR(entry["task_vector_norms"][i].get<double>(), ni, 1e-5 * ni);
    for (size_t j = 0; j < n; ++j) {
      const double cos = dot(tasks[i], tasks[j]) / (ni * std::sqrt(dot(tasks[j], tasks[j])));
      EXPECT_NEAR(entry["cosines"][i][j].get<double>(), cos, 1e-5) << i << "," << j;
    }
    EXPECT_NEAR(entry["merged_cosines"][i].get<double>(), dot(tasks[i], merged) / (ni * merged_norm), 1e-5);
  }
  EXPECT_NEAR(entry["merged_delta_norm"].get<double>(), merged_norm, 1e-5 * merged_norm);
  EXPECT_NEAR(entry["mean_task_vector_norm"].get<double>(), mean_norm, 1e-5 * mean_norm);
  EXPECT_NEAR(entry["merged_over_mean"].get<double>(), merged_norm / mean_norm, 1e-4);
}

Doubles difference(const std::vector<float>& a, const std::vector<float>& b) {
  Doubles d(a.size());
  // In float, as the merge subtracts: the same magnitudes rank the same way.
  for (size_t i = 0; i < a.size(); ++i) d[i] = static_cast<double>(a[i] - (b.empty() ? 0.0f : b[i]));
  return d;
}

struct Family {
  TempDir tmp;
  Model base = random_model(1);
  std::vector<Model> models;
  std::vector<fs::path> paths;
  fs::path base_path;

  // The models as stored in `dtype` (the values read back, rounded).
  explicit Family(size_t count, DType dtype = DType::F32) {
    base_path = write_model(tmp / "base", base, dtype);
    base = read_model(base_path);
    for (size_t t = 0; t < count; ++t) {
      paths.push_back(
          write_model(tmp / ("ft" + std::to_string(t)), plus(base, random_model(10 + t, 0.01f * (t + 1.0f))), dtype));
      models.push_back(read_model(paths.back()));
    }
  }
  static Model read_model(const fs::path& dir) { return {read_tensor(dir, kMatrix), read_tensor(dir, kBias)}; }
  // Checks every tensor's generic fields of a merge written to tmp/name.
  void expect_report(const json& report, const std::string& name, bool against_base) const {
    for (const auto& [tensor, member] : {std::pair{kMatrix, &Model::matrix}, {kBias, &Model::bias}}) {
      std::vector<Doubles> tasks;
      const std::vector<float> reference = against_base ? base.*member : std::vector<float>{};
      for (const auto& m : models) tasks.push_back(difference(m.*member, reference));
      expect_delta_fields(tensor_entry(report, tensor), tasks, difference(read_tensor(tmp / name, tensor), reference));
    }
  }
};

// ---- Generic fields, for a streaming method, a no-base method and a whole-tensor method ------

TEST(MergeAudit, TaskArithmeticNormsAndCosinesMatchANaiveLoop) {
  const Family f(3);
  const json report =
      merge_and_report(f.tmp, "merge_method: task_arithmetic\nbase_model: " + f.base_path.string() +
                                  "\nparameters: {lambda: 0.5}\n" + models_yaml(f.paths, "weight: 1.0"));
  EXPECT_EQ(report["method"], "task_arithmetic");
  EXPECT_EQ(report["reference"], "base");
  EXPECT_EQ(report["candidates"].size(), 3u);
  EXPECT_EQ(tensor_entry(report, kMatrix)["shape"], json(kMatrixShape));
  f.expect_report(report, "out", true);
}

TEST(MergeAudit, LinearWithoutABaseMeasuresTheWeightsThemselves) {
  const Family f(3);
  const json report = merge_and_report(f.tmp, "merge_method: linear\n" + models_yaml(f.paths, "weight: 1.0"));
  EXPECT_EQ(report["reference"], "zero");
  EXPECT_TRUE(report["base"].is_null());
  f.expect_report(report, "out", false);
}

// BF16 checkpoints without a base: the audit takes the stored weights as its rows.
TEST(MergeAudit, LinearWithoutABaseOnBf16CheckpointsMatchesANaiveLoop) {
  for (const size_t count : {size_t{3}, size_t{9}}) {
    const Family f(count, DType::BF16);
    // The merged output in F32, for the reference's merged delta.
    const json report =
        merge_and_report(f.tmp, "merge_method: linear\ndtype: float32\n" + models_yaml(f.paths, "weight: 1.0"));
    f.expect_report(report, "out", false);
  }
}

// Methods whose merged delta is a combination of the task vectors (linear with weights that
// sum to one, task arithmetic) pass the audit only the weighted task vectors; the merged
// delta's fields still match the merged output, with unequal weights. Linear with a base
// and weights that need not sum to one passes the merged delta itself.
TEST(MergeAudit, WeightedLinearAndTaskArithmeticMatchANaiveLoop) {
  const Family f(3);
  std::string models = "models:\n";
  const char* weights[] = {"2.0", "0.5", "1.0"};
  for (size_t t = 0; t < 3; ++t)
    models += "  - model: " + f.paths[t].string() + "\n    parameters: {weight: " + weights[t] + "}\n";
  const std::string base = "base_model: " + f.base_path.string() + "\n";
  const json ta = merge_and_report(
      f.tmp, "merge_method: task_arithmetic\n" + base + "parameters: {lambda: 0.7, normalize: 1}\n" + models, "ta");
  f.expect_report(ta, "ta", true);
  const json normalized = merge_and_report(f.tmp, "merge_method: linear\n" + base + models, "normalized");
  f.expect_report(normalized, "normalized", true);
  const json summed =
      merge_and_report(f.tmp, "merge_method: linear\n" + base + "parameters: {normalize: 0}\n" + models, "summed");
  f.expect_report(summed, "summed", true);
}

TEST(MergeAudit, WholeTensorMethodsAreAuditedByReadingAgain) {
  const Family f(2);
  const json report = merge_and_report(
      f.tmp, "merge_method: tsv\nbase_model: " + f.base_path.string() + "\n" + models_yaml(f.paths, ""));
  f.expect_report(report, "out", true);
}

TEST(MergeAudit, IdenticalCandidatesHaveCosineOneAndNoSignConflict) {
  TempDir tmp;
  const Model base = random_model(1), ft = plus(base, random_model(2, 0.01f));
  const fs::path b = write_model(tmp / "base", base), a = write_model(tmp / "a", ft);
  const json report = merge_and_report(tmp, "merge_method: ties\nbase_model: " + b.string() + "\n" +
                                                "parameters: {density: 0.4}\n" + models_yaml({a, a, a}, "weight: 1"));
  const json& m = tensor_entry(report, kMatrix);
  for (size_t i = 0; i < 3; ++i)
    for (size_t j = 0; j < 3; ++j) EXPECT_NEAR(m["cosines"][i][j].get<double>(), 1.0, 1e-6);
  EXPECT_EQ(m["sign_conflict_share"].get<double>(), 0.0);
  // TIES of identical task vectors is the trimmed task vector: cosine with each equals
  // ||trimmed|| / ||full||, and every kept entry is elected.
  for (size_t t = 0; t < 3; ++t) EXPECT_EQ(m["elected_fraction"][t], m["kept_fraction"][t]);
}

// ---- TIES: kept fractions and sign conflicts against a naive top-k --------------------------

TEST(MergeAudit, TiesKeptFractionsAndSignConflictsMatchANaiveCount) {
  const Family f(3);
  const double density = 0.3;
  const json report = merge_and_report(f.tmp, "merge_method: ties\nbase_model: " + f.base_path.string() +
                                                  "\nparameters: {density: " + std::to_string(density) + "}\n" +
                                                  models_yaml(f.paths, "weight: 1.0"));
  const json& entry = tensor_entry(report, kMatrix);
  const size_t n = f.base.matrix.size(), keep = static_cast<size_t>(density * static_cast<double>(n));
  // Naive TIES trimming: sort each task vector's magnitudes, keep the largest `keep`.
  std::vector<std::vector<int>> sign(3, std::vector<int>(n, 0));
  for (size_t t = 0; t < 3; ++t) {
    const Doubles d = difference(f.models[t].matrix, f.base.matrix);
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return std::fabs(d[a]) > std::fabs(d[b]); });
    for (size_t r = 0; r < keep; ++r) sign[t][order[r]] = d[order[r]] > 0 ? 1 : -1;
    EXPECT_NEAR(entry["kept_fraction"][t].get<double>(), static_cast<double>(keep) / static_cast<double>(n), 1e-12);
  }
  size_t conflicts = 0;
  for (size_t i = 0; i < n; ++i) {
    bool pos = false, neg = false;
    for (size_t t = 0; t < 3; ++t) pos |= sign[t][i] > 0, neg |= sign[t][i] < 0;
    conflicts += pos && neg;
  }
  EXPECT_NEAR(entry["sign_conflict_share"].get<double>(), static_cast<double>(conflicts) / static_cast<double>(n),
              1e-12);
  EXPECT_GT(conflicts, 0u);
}

// ---- TSV-M: energy and interference ---------------------------------------------------------

TEST(MergeAudit, OrthogonalTaskSubspacesHaveZeroInterference) {
  TempDir tmp;
  const Model base = random_model(1);
  // Task 0 changes only the first rows and task 1 only the last ones, each with a rank-2
  // delta: their column spaces are orthogonal, and the kept rank 2 holds all of each
  // delta's energy.
  auto low_rank = [&](int64_t first_row, uint64_t seed) {
    const Model r = random_model(seed);
    Model d = random_model(seed);
    const int64_t rows = kMatrixShape[0], cols = kMatrixShape[1];
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        const bool inside = i >= first_row && i < first_row + 100;
        d.matrix[static_cast<size_t>(i * cols + j)] =
            inside ? 0.01f * (r.matrix[static_cast<size_t>(i)] * r.matrix[static_cast<size_t>(cols + j)] +
                              r.matrix[static_cast<size_t>(rows + i)] * r.matrix[static_cast<size_t>(2 * cols + j)])
                   : 0.0f;
      }
    return plus(base, d);
  };
  const fs::path b = write_model(tmp / "base", base), a = write_model(tmp / "a", low_rank(0, 5)),
                 c = write_model(tmp / "c", low_rank(200, 6));
  const json report = merge_and_report(tmp, "merge_method: tsv\nbase_model: " + b.string() +
                                                "\nparameters: {rank_fraction: 0.007}\n" + models_yaml({a, c}, ""));
  const json& entry = tensor_entry(report, kMatrix);
  EXPECT_EQ(entry["rank"], 2);  // floor(0.007 * 300)
  for (size_t t = 0; t < 2; ++t) EXPECT_NEAR(entry["energy_kept"][t].get<double>(), 1.0, 1e-5);
  EXPECT_NEAR(entry["subspace_interference"][0][1].get<double>(), 0.0, 1e-5);
  // With itself, ||U^T U||_F = sqrt(rank).
  EXPECT_NEAR(entry["subspace_interference"][0][0].get<double>(), std::sqrt(2.0), 1e-4);
  EXPECT_NEAR(entry["cosines"][0][1].get<double>(), 0.0, 1e-6);
  EXPECT_FALSE(tensor_entry(report, kBias).contains("rank"));
}

// ---- RegMean: the residual formula ----------------------------------------------------------

TEST(RegMeanAudit, ResidualsAreTheRegressionErrorOnExplicitInputs) {
  const int64_t out = 5, in = 6, rows = 40;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  std::vector<std::vector<double>> inputs, weights;
  std::vector<std::vector<float>> grams_f, weights_f;
  const Doubles factors = {1.0, 2.0, 0.5};
  for (size_t t = 0; t < 3; ++t) {
    Doubles x(static_cast<size_t>(rows * in)), w(static_cast<size_t>(out * in));
    for (auto& v : x) v = normal(rng) * (1.0 + static_cast<double>(t));
    for (auto& v : w) v = normal(rng);
    std::vector<float> g(static_cast<size_t>(in * in));
    for (int64_t i = 0; i < in; ++i)
      for (int64_t j = 0; j < in; ++j) {
        double s = 0;
        for (int64_t r = 0; r < rows; ++r) s += x[static_cast<size_t>(r * in + i)] * x[static_cast<size_t>(r * in + j)];
        g[static_cast<size_t>(i * in + j)] = static_cast<float>(s / rows);
      }
    inputs.push_back(x);
    weights_f.emplace_back(w.begin(), w.end());
    weights.emplace_back(weights_f.back().begin(), weights_f.back().end());
    grams_f.push_back(g);
  }
  std::vector<RegMeanCandidate> candidates;
  for (size_t t = 0; t < 3; ++t) candidates.push_back({weights_f[t], grams_f[t], factors[t]});
  const RegMeanLinear r = regmean_linear(candidates, out, in, 0.9, "layer", /*audit=*/true);
  ASSERT_EQ(r.relative_residuals.size(), 3u);
  double trace_total = 0;
  Doubles traces;
  for (size_t t = 0; t < 3; ++t) {
    // ||X (W - W_t)^T||^2 / ||X W_t^T||^2 over the explicit rows.
    double err = 0, energy = 0;
    for (int64_t row = 0; row < rows; ++row)
      for (int64_t o = 0; o < out; ++o) {
        double merged = 0, own = 0;
        for (int64_t i = 0; i < in; ++i) {
          const double x = inputs[t][static_cast<size_t>(row * in + i)];
          merged += x * r.weight[static_cast<size_t>(o * in + i)];
          own += x * weights[t][static_cast<size_t>(o * in + i)];
        }
        err += (merged - own) * (merged - own);
        energy += own * own;
      }
    EXPECT_NEAR(r.relative_residuals[t], err / energy, 1e-4 * err / energy + 1e-7) << t;
    double trace = 0;
    for (int64_t i = 0; i < rows * in; ++i)
      trace += inputs[t][static_cast<size_t>(i)] * inputs[t][static_cast<size_t>(i)];
    traces.push_back(factors[t] * trace / rows);
    trace_total += traces.back();
  }
  for (size_t t = 0; t < 3; ++t) EXPECT_NEAR(r.gram_trace_share[t], traces[t] / trace_total, 1e-5);
  EXPECT_GT(r.relative_residuals[0], 1e-3);  // distinct candidates do not fit each other
}

TEST(RegMeanAudit, IdenticalCandidatesHaveZeroResidual) {
  std::vector<float> w(20), g(16, 0.0f);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 7) - 3.0f;
  for (size_t i = 0; i < 4; ++i) g[i * 4 + i] = 1.0f + static_cast<float>(i);
  g[1] = g[4] = 0.5f;
  const std::vector<RegMeanCandidate> same = {{w, g, 1.0}, {w, g, 2.0}};
  const RegMeanLinear r = regmean_linear(same, 5, 4, 0.95, "layer", true);
  for (double v : r.relative_residuals) EXPECT_LT(v, 1e-10);
  EXPECT_NEAR(r.gram_trace_share[0], 1.0 / 3.0, 1e-12);
}

// ---- The CLI --------------------------------------------------------------------------------

TEST(AuditCli, MergeWritesTheReportAuditPrintsItAndNoAuditSkipsIt) {
  const Family f(3);
  const fs::path config = f.tmp / "ties.yaml";
  testing::write_bytes(config, "merge_method: ties\nbase_model: " + f.base_path.string() +
                                   "\nparameters: {density: 0.5}\n" + models_yaml(f.paths, "weight: 1.0"));
  const auto merged = testing::run_amalgam("merge " + config.string() + " -o " + (f.tmp / "a").string());
  ASSERT_EQ(merged.code, 0) << merged.err;
  EXPECT_NE(merged.err.find("amalgam: audit: 2 tensors, 3 candidates"), std::string::npos) << merged.err;
  EXPECT_NE(merged.err.find("signs conflict"), std::string::npos) << merged.err;

  const auto tables = testing::run_amalgam("audit " + (f.tmp / "a").string() + " --top 1");
  ASSERT_EQ(tables.code, 0) << tables.err;
  for (const char* heading : {"Sparsification and signs", "Task vectors of the weight matrices", "Candidates"})
    EXPECT_NE(tables.out.find(heading), std::string::npos) << heading << "\n" << tables.out;
  EXPECT_NE(tables.out.find("ft0"), std::string::npos);  // candidates by directory name

  const auto as_json = testing::run_amalgam("audit " + (f.tmp / "a").string() + " --json");
  ASSERT_EQ(as_json.code, 0);
  EXPECT_EQ(json::parse(as_json.out), read_json_file(f.tmp / "a" / "merge_report.json"));

  // --no-audit: no report, and the same model bits.
  const auto plain = testing::run_amalgam("merge " + config.string() + " -q --no-audit -o " + (f.tmp / "b").string());
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_FALSE(fs::exists(f.tmp / "b" / "merge_report.json"));
  EXPECT_EQ(testing::read_bytes(f.tmp / "a" / "model.safetensors"),
            testing::read_bytes(f.tmp / "b" / "model.safetensors"));
  const auto missing = testing::run_amalgam("audit " + (f.tmp / "b").string());
  EXPECT_EQ(missing.code, 2);
  EXPECT_NE(missing.err.find("merge_report.json"), std::string::npos) << missing.err;
}

TEST(AuditCli, TheReportHasTheSameBitsForAnyThreadCount) {
  const Family f(3);
  const fs::path config = f.tmp / "ta.yaml";
  testing::write_bytes(config, "merge_method: task_arithmetic\nbase_model: " + f.base_path.string() + "\n" +
                                   models_yaml(f.paths, "weight: 0.5"));
  std::string reports[2];
  for (int threads : {1, 2}) {
    ::setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 1);
    const fs::path out = f.tmp / ("t" + std::to_string(threads));
    const auto r = testing::run_amalgam("merge " + config.string() + " -q -o " + out.string());
    ASSERT_EQ(r.code, 0) << r.err;
    reports[threads - 1] = testing::read_bytes(out / "merge_report.json");
  }
  ::unsetenv("OMP_NUM_THREADS");
  EXPECT_EQ(reports[0], reports[1]);
  EXPECT_FALSE(reports[0].empty());
}

}  // namespace
}  // namespace amalgam
