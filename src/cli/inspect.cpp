// `amalgam inspect PATH`: what a checkpoint or safetensors file holds.
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/tensor.h"
#include "io/checkpoint.h"
#include "model/model.h"

namespace amalgam::cli {

namespace {

// The architecture amalgam runs this checkpoint as: its model_type when a registered family
// runs it ("llama", "qwen3", "clip_vision_model"), or null: data-free merging only.
nlohmann::ordered_json model_family(const nlohmann::json& config) {
  const nlohmann::json type = config.value("model_type", nlohmann::json());
  if (type.is_string() && find_model_family(type.get<std::string>())) return type;
  return nullptr;
}

nlohmann::ordered_json inspect_json(const CheckpointReader& ckpt) {
  nlohmann::ordered_json out;
  out["path"] = ckpt.path().string();
  out["sharded"] = ckpt.sharded();
  uint64_t parameters = 0;
  std::map<std::string, uint64_t> dtype_params;
  auto& shards = out["shards"] = nlohmann::ordered_json::array();
  for (const auto& s : ckpt.shards()) {
    nlohmann::ordered_json shard;
    shard["file"] = s->path().filename().string();
    shard["tensors"] = s->tensors().size();
    shard["file_bytes"] = s->file_bytes();
    shard["metadata"] = s->metadata();
    shards.push_back(shard);
  }
  auto& tensors = out["tensors"] = nlohmann::ordered_json::array();
  for (const auto& name : ckpt.names()) {
    const TensorInfo& t = ckpt.info(name);
    const auto numel = static_cast<uint64_t>(shape_numel(t.shape));
    parameters += numel;
    dtype_params[std::string(dtype_name(t.dtype))] += numel;
    nlohmann::ordered_json e;
    e["name"] = name;
    e["dtype"] = dtype_name(t.dtype);
    e["shape"] = t.shape;
    e["bytes"] = t.nbytes();
    e["shard"] = ckpt.shard_of(name).path().filename().string();
    tensors.push_back(e);
  }
  out["total_tensors"] = ckpt.names().size();
  out["total_parameters"] = parameters;
  out["total_bytes"] = ckpt.total_tensor_bytes();
  out["parameters_by_dtype"] = dtype_params;
  if (ckpt.config()) {
    out["config"] = *ckpt.config();
    out["family"] = model_family(*ckpt.config());
  }
  return out;
}

void print_table(const nlohmann::ordered_json& j) {
  std::cout << j["path"].get<std::string>() << ": " << j["total_tensors"] << " tensors, " << j["total_parameters"]
            << " parameters, " << human_bytes(j["total_bytes"].get<double>());
  if (j["sharded"].get<bool>()) std::cout << " in " << j["shards"].size() << " shards";
  std::cout << "\n";
  for (const auto& [dtype, n] : j["parameters_by_dtype"].items())
    std::cout << "  " << dtype << ": " << n.get<uint64_t>() << " parameters\n";
  for (const auto& s : j["shards"])
    for (const auto& [k, v] : s["metadata"].items())
      std::cout << "  metadata[" << s["file"].get<std::string>() << "] " << k << " = " << v.get<std::string>() << "\n";
  if (j.contains("config")) {
    const auto& c = j["config"];
    std::cout << "  family: "
              << (j["family"].is_null() ? "none amalgam runs (data-free merging only)" : j["family"].get<std::string>())
              << "\n";
    for (const char* key : {"model_type", "architectures", "hidden_size", "num_hidden_layers", "torch_dtype"})
      if (c.contains(key)) std::cout << "  config " << key << " = " << c[key].dump() << "\n";
  }
  size_t width = 4;
  for (const auto& t : j["tensors"]) width = std::max(width, t["name"].get<std::string>().size());
  std::cout << "\n";
  for (const auto& t : j["tensors"]) {
    std::string name = t["name"].get<std::string>();
    name.resize(width, ' ');
    std::string dtype = t["dtype"].get<std::string>();
    dtype.resize(8, ' ');
    std::string shape = shape_to_string(t["shape"].get<Shape>());
    shape.resize(std::max<size_t>(shape.size(), 20), ' ');
    std::cout << name << "  " << dtype << shape << "  " << human_bytes(t["bytes"].get<double>()) << "\n";
  }
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "List a checkpoint's tensors: dtypes, shapes, sizes, metadata, config");
  auto path = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  cmd->add_option("path", *path, "checkpoint directory or .safetensors file")->required();
  cmd->add_flag("--json", *as_json, "print JSON instead of a table");
  cmd->callback([path, as_json] {
    const CheckpointReader ckpt(*path);
    const auto j = inspect_json(ckpt);
    if (*as_json)
      std::cout << j.dump(2) << "\n";
    else
      print_table(j);
  });
}

}  // namespace amalgam::cli
