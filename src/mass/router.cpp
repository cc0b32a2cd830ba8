#include "mass/router.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "core/error.h"

namespace amalgam::mass {

namespace fs = std::filesystem;

std::string to_string(RouteToken token) {
  return token == RouteToken::Cls ? "cls" : "mean";
}

std::string to_string(RouteMode mode) {
  return mode == RouteMode::TopK ? "topk" : "top1";
}

nlohmann::ordered_json RouterConfig::to_json() const {
  return {{"layer", layer},          {"site", "fc1"},          {"token", to_string(token)},
          {"mode", to_string(mode)}, {"threshold", threshold}, {"temperature", temperature},
          {"max_tasks", max_tasks},  {"rank", rank},           {"tasks", tasks}};
}

namespace {

const nlohmann::json& required(const nlohmann::json& j, const char* key, const fs::path& file) {
  if (!j.contains(key)) throw InputError(file, std::string(key) + ": missing");
  return j.at(key);
}

double number(const nlohmann::json& j, const char* key, const fs::path& file) {
  const auto& v = required(j, key, file);
  if (!v.is_number()) throw InputError(file, std::string(key) + ": expected a number");
  return v.get<double>();
}

int64_t integer(const nlohmann::json& j, const char* key, const fs::path& file) {
  const auto& v = required(j, key, file);
  if (!v.is_number_integer()) throw InputError(file, std::string(key) + ": expected an integer");
  return v.get<int64_t>();
}

std::string text(const nlohmann::json& j, const char* key, const fs::path& file) {
  const auto& v = required(j, key, file);
  if (!v.is_string()) throw InputError(file, std::string(key) + ": expected a string");
  return v.get<std::string>();
}

}  // namespace

RouterConfig RouterConfig::from_json(const nlohmann::json& j, const fs::path& file) {
  if (!j.is_object()) throw InputError(file, "expected a JSON object");
  RouterConfig c;
  c.layer = integer(j, "layer", file);
  if (c.layer < 0) throw InputError(file, "layer: must be >= 0");
  if (text(j, "site", file) != "fc1") throw InputError(file, "site: only 'fc1' is supported");
  const std::string token = text(j, "token", file), mode = text(j, "mode", file);
  if (token != "cls" && token != "mean") throw InputError(file, "token: expected 'cls' or 'mean', got '" + token + "'");
  if (mode != "topk" && mode != "top1") throw InputError(file, "mode: expected 'topk' or 'top1', got '" + mode + "'");
  c.token = token == "cls" ? RouteToken::Cls : RouteToken::Mean;
  c.mode = mode == "topk" ? RouteMode::TopK : RouteMode::Top1;
  c.threshold = number(j, "threshold", file);
  if (!(c.threshold >= 0 && c.threshold < 1)) throw InputError(file, "threshold: must be in [0, 1)");
  c.temperature = number(j, "temperature", file);
  if (!(c.temperature > 0) || !std::isfinite(c.temperature)) throw InputError(file, "temperature: must be > 0");
  c.max_tasks = integer(j, "max_tasks", file);
  if (c.max_tasks < 1) throw InputError(file, "max_tasks: must be >= 1");
  if (j.contains("rank")) c.rank = integer(j, "rank", file);  // absent in bundles built before it
  if (c.rank < 0) throw InputError(file, "rank: must be >= 0 (0: every stored row)");
  const auto& tasks = required(j, "tasks", file);
  if (!tasks.is_array() || tasks.empty()) throw InputError(file, "tasks: expected a non-empty list of task names");
  for (const auto& t : tasks) {
    if (!t.is_string()) throw InputError(file, "tasks: expected a non-empty list of task names");
    // A bundle's task names become file names (factors/NAME.safetensors): a hostile bundle
    // must not reach outside it with "../x".
    const std::string name = t.get<std::string>();
    if (name.empty() || name.front() == '.' || name.size() > 200 ||
        !std::all_of(name.begin(), name.end(),
                     [](unsigned char ch) { return std::isalnum(ch) || ch == '-' || ch == '_' || ch == '.'; }))
      throw InputError(file, "tasks: '" + name + "' is not a task name (letters, digits, - _ .)");
    c.tasks.push_back(name);
  }
  return c;
}

int64_t default_routing_layer(int64_t num_layers) {
  const auto layer = static_cast<int64_t>(std::lround(5.0 * static_cast<double>(num_layers) / 6.0)) - 1;
  return std::clamp<int64_t>(layer, 0, std::max<int64_t>(num_layers - 1, 0));
}

TaskSet make_task_set(std::vector<int64_t> tasks) {
  std::sort(tasks.begin(), tasks.end());
  tasks.erase(std::unique(tasks.begin(), tasks.end()), tasks.end());
  return tasks;
}

namespace {

// Softmax of the standardized scores -r_t. A spread of zero (all residuals equal) makes
// every standardized score 0, so every task is equally likely.
std::vector<double> route_probabilities(std::span<const double> residuals, double temperature) {
  const auto n = static_cast<double>(residuals.size());
  double mean = 0;
  for (double r : residuals) mean -= r / n;
  double variance = 0;
  for (double r : residuals) variance += (-r - mean) * (-r - mean) / n;
  const double spread = std::sqrt(variance);
  std::vector<double> p(residuals.size());
  for (size_t t = 0; t < p.size(); ++t)
    p[t] = spread > 0 && std::isfinite(spread) ? (-residuals[t] - mean) / spread / temperature : 0.0;
  const double largest = *std::max_element(p.begin(), p.end());
  double sum = 0;
  for (double& v : p) sum += v = std::exp(v - largest);
  for (double& v : p) v /= sum;
  return p;
}

}  // namespace

RouteDecision route(std::span<const double> residuals, const RouterConfig& config) {
  if (residuals.empty()) throw std::invalid_argument("route: no tasks");
  RouteDecision d;
  d.probabilities = route_probabilities(residuals, config.temperature);
  // Most probable first; equal probabilities keep the bundle's task order, so the choice
  // does not depend on the sort's implementation.
  std::vector<int64_t> order(residuals.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return d.probabilities[static_cast<size_t>(a)] > d.probabilities[static_cast<size_t>(b)];
  });
  d.top = order.front();
  std::vector<int64_t> selected;
  if (config.mode == RouteMode::TopK)
    for (int64_t t : order)
      if (d.probabilities[static_cast<size_t>(t)] > config.threshold &&
          static_cast<int64_t>(selected.size()) < config.max_tasks)
        selected.push_back(t);
  if (selected.empty()) selected.push_back(d.top);
  d.tasks = make_task_set(std::move(selected));
  return d;
}

std::string routed_weight(const std::vector<LinearSiteSpec>& sites, int64_t layer) {
  for (const auto& s : sites)
    if (s.layer == layer && s.role == SiteRole::MlpInput && !s.weights.empty()) return s.weights.front();
  throw std::invalid_argument("routed_weight: block " + std::to_string(layer) + " has no MLP input site");
}

Matrix routing_tokens(const SiteInput& input, std::span<const int64_t> offsets, RouteToken token) {
  if (offsets.empty() || offsets.back() != input.rows)
    throw std::invalid_argument("routing_tokens: the offsets do not cover the tapped rows");
  return pick_tokens(input.data, input.width, offsets, token == RouteToken::Cls ? TokenPick::First : TokenPick::Mean);
}

std::vector<double> subspace_residuals(const Matrix& z, std::span<const Matrix> vts) {
  const int64_t rows = z.rows, tasks = static_cast<int64_t>(vts.size());
  std::vector<double> norms(static_cast<size_t>(rows), 0.0);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < z.cols; ++j) norms[static_cast<size_t>(i)] += static_cast<double>(z(i, j)) * z(i, j);
  std::vector<double> residuals(static_cast<size_t>(rows * tasks));
  for (int64_t t = 0; t < tasks; ++t) {
    const Matrix& vt = vts[static_cast<size_t>(t)];
    if (vt.cols != z.cols) throw std::invalid_argument("subspace_residuals: Vt width differs from the tokens'");
    const Matrix projected = matmul(z, vt, false, true);  // [rows, k] = Z V_t^T
    for (int64_t i = 0; i < rows; ++i) {
      double inside = 0;
      for (int64_t j = 0; j < projected.cols; ++j) inside += static_cast<double>(projected(i, j)) * projected(i, j);
      residuals[static_cast<size_t>(i * tasks + t)] = std::sqrt(std::max(0.0, norms[static_cast<size_t>(i)] - inside));
    }
  }
  return residuals;
}

std::vector<double> mean_residuals(std::span<const double> residuals, int64_t tasks) {
  const auto rows = static_cast<int64_t>(residuals.size()) / tasks;
  std::vector<double> mean(static_cast<size_t>(tasks), 0.0);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t t = 0; t < tasks; ++t)
      mean[static_cast<size_t>(t)] += residuals[static_cast<size_t>(i * tasks + t)] / static_cast<double>(rows);
  return mean;
}

}  // namespace amalgam::mass
