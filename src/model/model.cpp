#include "model/model.h"

#include <map>
#include <stdexcept>

#include "core/error.h"
#include "io/json_file.h"

namespace amalgam {

namespace fs = std::filesystem;

std::vector<LinearSiteSpec> Model::all_linear_sites() const {
  std::vector<LinearSiteSpec> sites;
  for (int64_t l = 0; l < num_layers(); ++l)
    for (auto& s : linear_sites(l)) sites.push_back(std::move(s));
  for (auto& s : linear_sites(-1)) sites.push_back(std::move(s));
  return sites;
}

Matrix Model::forward(const ModelInput& batch, const SiteTap& tap) const {
  Stream stream = embed(batch);
  for (int64_t l = 0; l < num_layers(); ++l) run_own_block(l, stream, tap);
  return head(stream, tap);
}

const ParameterSlot* ParameterLayout::find(const std::string& name) const {
  for (const auto& s : slots)
    if (s.name == name) return &s;
  return nullptr;
}

const ParameterSlot& ParameterLayout::at(const std::string& name) const {
  if (const ParameterSlot* s = find(name)) return *s;
  throw std::out_of_range("ParameterLayout: no parameter '" + name + "'");
}

namespace {

[[noreturn]] void not_in_memory(const Model& model) {
  throw InputError("a " + model.model_type() +
                   " model maps its weights from its checkpoint and does not hold them in memory: training, MASS "
                   "bundles and the zoo take a vision family (clip_vision_model)");
}

}  // namespace

const ParameterLayout& Model::parameter_layout() const {
  not_in_memory(*this);
}
std::vector<float> Model::parameters() const {
  not_in_memory(*this);
}
std::unique_ptr<Model> Model::with_parameters(std::span<const float>) const {
  not_in_memory(*this);
}
void Model::save(const fs::path&, DType, bool, const std::optional<nlohmann::json>&) const {
  not_in_memory(*this);
}
std::unique_ptr<Model> Model::without_projection() const {
  throw InputError("a " + model_type() + " model has no projection after its features to drop");
}

ImageInput image_input_of(const Model& model, const std::string& what) {
  const auto in = model.image_input();
  if (!in) throw InputError(what, "a " + model.model_type() + " model takes token ids, not images");
  return *in;
}

Matrix pick_tokens(const float* rows, int64_t width, std::span<const int64_t> offsets, TokenPick pick) {
  if (offsets.empty()) throw std::invalid_argument("pick_tokens: no offsets");
  const auto sequences = static_cast<int64_t>(offsets.size()) - 1;
  Matrix out(sequences, width);
  std::vector<double> sum;
  for (int64_t s = 0; s < sequences; ++s) {
    const int64_t first = offsets[static_cast<size_t>(s)], end = offsets[static_cast<size_t>(s) + 1];
    if (end <= first) throw std::invalid_argument("pick_tokens: an empty sequence has no token to pick");
    float* o = out.row(s);
    if (pick != TokenPick::Mean) {
      const float* r = rows + (pick == TokenPick::First ? first : end - 1) * width;
      std::copy(r, r + width, o);
      continue;
    }
    sum.assign(static_cast<size_t>(width), 0.0);
    for (int64_t i = first; i < end; ++i)
      for (int64_t j = 0; j < width; ++j) sum[static_cast<size_t>(j)] += rows[i * width + j];
    for (int64_t j = 0; j < width; ++j)
      o[j] = static_cast<float>(sum[static_cast<size_t>(j)] / static_cast<double>(end - first));
  }
  return out;
}

namespace {

std::vector<ModelFamily>& families() {
  static std::vector<ModelFamily> list;
  return list;
}

}  // namespace

bool register_model_family(ModelFamily family) {
  families().push_back(std::move(family));
  return true;
}

const ModelFamily* find_model_family(const std::string& model_type) {
  for (const auto& f : families())
    if (f.runs(model_type)) return &f;
  return nullptr;
}

std::string checkpoint_model_type(const fs::path& checkpoint) {
  const fs::path dir = fs::is_directory(checkpoint) ? checkpoint : checkpoint.parent_path();
  const fs::path file = dir / "config.json";
  if (!fs::is_regular_file(file))
    throw InputError(checkpoint, "no config.json beside the weights (running the model needs its config)");
  const nlohmann::json config = read_json_file(file);
  if (!config.is_object() || !config.contains("model_type") || !config["model_type"].is_string())
    throw InputError(file, "config: no string 'model_type' (it says which architecture the model is)");
  return config["model_type"].get<std::string>();
}

std::unique_ptr<Model> open_model(const fs::path& checkpoint) {
  const std::string model_type = checkpoint_model_type(checkpoint);
  const ModelFamily* family = find_model_family(model_type);
  if (!family) {
    const fs::path dir = fs::is_directory(checkpoint) ? checkpoint : checkpoint.parent_path();
    throw InputError(dir / "config.json", "model_type '" + model_type +
                                              "' is not an architecture amalgam runs (data-free merging "
                                              "still works on it; see amalgam inspect)");
  }
  return family->open(checkpoint);
}

std::optional<ArchitectureTable> architecture_table(const CheckpointReader& checkpoint) {
  const auto& config = checkpoint.config();
  if (!config || !config->is_object() || !config->contains("model_type") || !(*config)["model_type"].is_string())
    return std::nullopt;
  const ModelFamily* family = find_model_family((*config)["model_type"].get<std::string>());
  if (!family || !family->table) return std::nullopt;
  return family->table(checkpoint);
}

std::unique_ptr<Model> random_model(const nlohmann::json& config, uint64_t seed, const std::string& where) {
  if (!config.is_object() || !config.contains("model_type") || !config["model_type"].is_string())
    throw InputError(where, "model: no string 'model_type' (it says which architecture to make)");
  const std::string model_type = config["model_type"].get<std::string>();
  const ModelFamily* family = find_model_family(model_type);
  if (!family || !family->random)
    throw InputError(where, "model.model_type: '" + model_type + "' is not an architecture amalgam makes and trains");
  return family->random(config, seed, where);
}

}  // namespace amalgam
