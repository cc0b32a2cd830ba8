#include "model/classifier_head.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/tensor.h"
#include "core/version.h"
#include "io/atomic_output.h"
#include "io/safetensors.h"

namespace amalgam {

namespace {

std::vector<float> read_f32(const SafetensorsReader& file, const std::string& name) {
  const Tensor t = file.tensor(name);
  if (!is_floating(t.dtype()))
    throw InputError(file.path(), name, "dtype " + std::string(dtype_name(t.dtype())) + " is not a float dtype");
  const auto v = t.to(DType::F32).data<float>();
  std::vector<float> out(v.begin(), v.end());
  for (float x : out)
    if (!std::isfinite(x)) throw InputError(file.path(), name, "contains NaN or Inf");
  return out;
}

}  // namespace

ClassifierHead ClassifierHead::load(const std::filesystem::path& path) {
  SafetensorsReader file(path);
  const TensorInfo* w = file.find("weight");
  if (!w) throw InputError(path, "weight", "missing (a head needs weight [classes, dim])");
  if (w->shape.size() != 2 || w->shape[0] < 1 || w->shape[1] < 1)
    throw InputError(path, "weight", "has shape " + shape_to_string(w->shape) + ", expected [classes, dim]");
  ClassifierHead head;
  head.weight = Matrix(w->shape[0], w->shape[1]);
  head.weight.data = read_f32(file, "weight");
  if (const TensorInfo* b = file.find("bias")) {
    if (b->shape != Shape{w->shape[0]})
      throw InputError(path, "bias",
                       "has shape " + shape_to_string(b->shape) + ", expected [" + std::to_string(w->shape[0]) + "]");
    head.bias = read_f32(file, "bias");
  }
  for (const auto& t : file.tensors())
    if (t.name != "weight" && t.name != "bias") throw InputError(path, t.name, "unexpected in a head file");
  const auto& meta = file.metadata();
  if (auto it = meta.find("normalize_features"); it != meta.end()) {
    if (it->second != "true" && it->second != "false")
      throw InputError(path, "metadata normalize_features must be \"true\" or \"false\", got \"" + it->second + "\"");
    head.normalize_features = it->second == "true";
  }
  if (auto it = meta.find("task"); it != meta.end()) head.task = it->second;
  if (auto it = meta.find("classes"); it != meta.end()) {
    const auto names = nlohmann::json::parse(it->second, nullptr, false);
    if (!names.is_array() || names.size() != static_cast<size_t>(head.classes()))
      throw InputError(path, "metadata classes must be a JSON array of " + std::to_string(head.classes()) + " names");
    for (const auto& n : names) {
      if (!n.is_string()) throw InputError(path, "metadata classes must hold strings");
      head.class_names.push_back(n.get<std::string>());
    }
  }
  return head;
}

void ClassifierHead::save(const std::filesystem::path& path, bool force) const {
  Metadata meta{
      {"format", "pt"}, {"normalize_features", normalize_features ? "true" : "false"}, {"written_by", kWrittenBy}};
  if (!task.empty()) meta["task"] = task;
  if (!class_names.empty()) meta["classes"] = nlohmann::json(class_names).dump();
  std::vector<std::pair<std::string, Tensor>> tensors{
      {"weight", Tensor::from_f32({weight.rows, weight.cols}, weight.data)}};
  if (!bias.empty()) tensors.emplace_back("bias", Tensor::from_f32({static_cast<int64_t>(bias.size())}, bias));
  AtomicOutput output(path, force, AtomicOutput::Kind::File);
  save_safetensors(output.staging(), tensors, meta);
  output.commit();
}

void normalize_rows(Matrix& m) {
  for (int64_t r = 0; r < m.rows; ++r) {
    float* row = m.row(r);
    double sq = 0;
    for (int64_t i = 0; i < m.cols; ++i) sq += static_cast<double>(row[i]) * row[i];
    if (sq == 0) continue;
    const float inv = static_cast<float>(1.0 / std::sqrt(sq));
    for (int64_t i = 0; i < m.cols; ++i) row[i] *= inv;
  }
}

Matrix ClassifierHead::logits(const Matrix& features) const {
  if (features.cols != dim())
    throw InputError("head" + (task.empty() ? std::string() : " '" + task + "'") + " expects features of width " +
                     std::to_string(dim()) + ", the model gives " + std::to_string(features.cols));
  Matrix f = features;
  if (normalize_features) normalize_rows(f);
  Matrix out = matmul(f, weight, false, true);
  if (!bias.empty())
    for (int64_t r = 0; r < out.rows; ++r)
      for (int64_t c = 0; c < out.cols; ++c) out(r, c) += bias[static_cast<size_t>(c)];
  return out;
}

}  // namespace amalgam
