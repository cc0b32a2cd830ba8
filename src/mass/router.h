// MASS's data-free router (Crisostomi et al., arXiv 2504.05342): an input belongs to the
// tasks whose stored subspaces it lies in.
//
// For an input token z (the fc1 input LN2(h) of one late block, CLS token or mean over
// tokens) and every task t, the residual r_t = ||z - V_t^T V_t z|| measures how far z is
// from task t's right singular subspace of that fc1 weight (V_t: [k, d_in], orthonormal
// rows). Scores -r_t are standardized across tasks, passed through a softmax with a
// temperature, and the tasks whose probability exceeds a threshold are selected (at most
// `max_tasks`, the most probable first); when none passes, the most probable task alone.
// `rank` (an amalgam option, 0 by default) routes on only the first rows of each stored V_t
// (the largest singular values): on the zoo, whose first pass is far from the fine-tunes,
// fewer rows route better (README, MASS).
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "linalg/linalg.h"
#include "model/linear_sites.h"
#include "model/model.h"

namespace amalgam::mass {

inline constexpr const char* kRouterFile = "router.json";

enum class RouteToken { Cls, Mean };
enum class RouteMode { TopK, Top1 };

struct RouterConfig {
  int64_t layer = 0;  // the block whose fc1 input is routed on
  RouteToken token = RouteToken::Cls;
  RouteMode mode = RouteMode::TopK;
  double threshold = 0.2;
  double temperature = 1.0;
  int64_t max_tasks = 3;
  int64_t rank = 0;                // rows of each task's stored Vt routed on; 0: all of them
  std::vector<std::string> tasks;  // bundle order: residual column t is tasks[t]

  nlohmann::ordered_json to_json() const;
  // Validates every field; InputError naming `file` and the key.
  static RouterConfig from_json(const nlohmann::json& j, const std::filesystem::path& file);
};

// The reference's routing block for a ViT of `num_layers` blocks: the one at 5/6 of the
// depth, round(5/6 * L) - 1 (block 10 of 12, counting from 1), clamped to [0, L - 1].
int64_t default_routing_layer(int64_t num_layers);

// The weight whose task subspaces route: the first that reads block `layer`'s MLP input
// (CLIP's fc1), from a family's site table.
std::string routed_weight(const std::vector<LinearSiteSpec>& sites, int64_t layer);
inline std::string routed_weight(const Model& model, int64_t layer) {
  return routed_weight(model.linear_sites(layer), layer);
}

// "cls" / "mean", "topk" / "top1".
std::string to_string(RouteToken token);
std::string to_string(RouteMode mode);

// A set of selected tasks: indices into the bundle's tasks, sorted and distinct, so that
// two selections of the same tasks in another order are the same key.
using TaskSet = std::vector<int64_t>;
TaskSet make_task_set(std::vector<int64_t> tasks);

struct RouteDecision {
  TaskSet tasks;                      // the selected set
  int64_t top = 0;                    // the most probable task (smallest residual)
  std::vector<double> probabilities;  // softmax of the standardized scores, one per task
};

// One decision from one residual per task (`residuals.size()` tasks, at least one).
RouteDecision route(std::span<const double> residuals, const RouterConfig& config);

// The routing tokens of a batch from the tapped MLP input rows of a stream with these
// sequence offsets (an image: token 0 is CLS): [sequences, width].
Matrix routing_tokens(const SiteInput& input, std::span<const int64_t> offsets, RouteToken token);

// r_t for every row of `z` ([rows, d]) and every task's Vt ([k_t, d], orthonormal rows):
// [rows * tasks] row-major. Computed as sqrt(max(0, ||z||^2 - ||V_t z||^2)), which equals
// ||z - V_t^T V_t z|| for orthonormal rows, with the projection V_t z one GEMM per task.
std::vector<double> subspace_residuals(const Matrix& z, std::span<const Matrix> vts);

// Column means of a [rows, tasks] row-major block: batch routing decides once from the
// mean residuals.
std::vector<double> mean_residuals(std::span<const double> residuals, int64_t tasks);

}  // namespace amalgam::mass
