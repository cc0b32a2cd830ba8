// What a merge's output says about itself: config.json with the truth about the weights
// written (torch_dtype), and a README.md model card of amalgam's own, as mergekit writes one.
// The base's README.md describes another model and is never carried over.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/dtype.h"
#include "merge/config.h"

namespace amalgam {

// `config` (the base's config.json) with torch_dtype, and `dtype` where a newer
// transformers wrote that key instead, set to `weights` (the dtype of the floating-point
// tensors written); unchanged when no floating-point tensor was written.
nlohmann::ordered_json config_for_output(nlohmann::ordered_json config, std::optional<DType> weights);

// The output's README.md: YAML front matter a model hub reads (base_model, tags), then the
// method, the models and their parameters, and the config that reproduces the merge.
std::string merge_model_card(const MergeConfig& resolved, std::string_view config_yaml, std::optional<DType> weights);

}  // namespace amalgam
