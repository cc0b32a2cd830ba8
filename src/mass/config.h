// The `amalgam mass build` configuration:
//
//   base_model: zoo/base
//   models:
//     - {model: zoo/finetuned/mnist, head: zoo/heads/mnist.safetensors, name: mnist}
//   parameters: {rank_fraction: 0, routing_layer: -1, token: cls, mode: topk,
//                threshold: 0.2, temperature: 1.0, max_tasks: 3, routing_rank: 0,
//                similarity_threshold: 0.9}
//
// `name` defaults to the head's task metadata, else the model directory's name. Every
// parameter is optional (the reference's defaults above; rank_fraction 0 means 1/T of the
// rank, routing_layer -1 the default block, routing_rank 0 every stored row, no
// similarity_threshold no redundancy filter). Paths resolve against the working directory
// first, else the config's directory, as merge configs do.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mass/router.h"

namespace amalgam::mass {

struct MassModelEntry {
  std::string model;                // as written
  std::filesystem::path path;       // resolved
  std::filesystem::path head;       // resolved
  std::optional<std::string> name;  // as written, when given
};

struct MassParameters {
  double rank_fraction = 0;    // 0: floor(min(d_out, d_in) / T)
  int64_t routing_layer = -1;  // -1: default_routing_layer()
  RouteToken token = RouteToken::Cls;
  RouteMode mode = RouteMode::TopK;
  double threshold = 0.2;
  double temperature = 1.0;
  int64_t max_tasks = 3;
  int64_t routing_rank = 0;  // 0: route on every stored row of V_t
  // The first pass leaves out a task's delta of a tensor when its cosine with an already
  // accepted task's delta of that tensor exceeds this (issue 7's redundancy filter).
  std::optional<double> similarity_threshold;
};

struct MassConfig {
  std::filesystem::path source;
  std::string base_model;
  std::filesystem::path base_path;
  std::vector<MassModelEntry> models;
  MassParameters parameters;
};

// Errors are InputError naming `source` and the key ("mass.yaml: parameters.token: ...");
// unknown and duplicate keys are errors.
MassConfig parse_mass_config(std::string_view yaml_text, const std::filesystem::path& source);
MassConfig load_mass_config(const std::filesystem::path& path);

}  // namespace amalgam::mass
