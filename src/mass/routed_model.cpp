#include "mass/routed_model.h"

#include <algorithm>

#include "core/error.h"
#include "core/parallel.h"
#include "mass/factors.h"

namespace amalgam::mass {

namespace fs = std::filesystem;

namespace {

std::unique_ptr<Model> load_base(const BundleInfo& info) {
  std::error_code ec;
  if (!fs::exists(info.base, ec))
    throw InputError(info.dir / kBundleFile,
                     "base: '" + info.base.string() + "' not found (the bundle refers to its base checkpoint)");
  std::unique_ptr<Model> base = open_model(info.base);
  image_input_of(*base, info.base);
  if (!base->holds_parameters())
    throw InputError(info.base, "a " + base->model_type() + " model cannot be a MASS bundle's base (" +
                                    "routed models are built in memory)");
  return base;
}

// The same architecture as the base: same type, blocks, input and parameters' shapes.
void check_same_architecture(const Model& model, const Model& base, const fs::path& checkpoint) {
  const ImageInput in = image_input_of(model, checkpoint), b = *base.image_input();
  bool same = model.model_type() == base.model_type() && model.num_layers() == base.num_layers() &&
              in.channels == b.channels && in.size == b.size && model.holds_parameters();
  if (same) {
    const auto &slots = model.parameter_layout().slots, &base_slots = base.parameter_layout().slots;
    same = slots.size() == base_slots.size();
    for (size_t i = 0; same && i < slots.size(); ++i)
      same = slots[i].name == base_slots[i].name && slots[i].shape == base_slots[i].shape;
  }
  if (!same) throw InputError(checkpoint, "config.json: not the architecture of the bundle's base");
}

// Checks one task's stored part of one base parameter: factors for a 2-D tensor, a delta
// of the same shape otherwise, floating point (the base's dtype; read as F32).
void check_part(const SafetensorsReader& factors, const ParameterSlot& p) {
  auto expect = [&](const std::string& name, const Shape& shape) {
    const TensorInfo* info = factors.find(name);
    if (!info) throw InputError(factors.path(), name, "missing (the base has '" + p.name + "')");
    if (!is_floating(info->dtype) || info->shape != shape)
      throw InputError(factors.path(), name,
                       "expected a floating tensor " + shape_to_string(shape) + ", got " +
                           std::string(dtype_name(info->dtype)) + " " + shape_to_string(info->shape));
  };
  if (factors.contains(p.name + kFactorU) && p.shape.size() == 2) {
    const TensorInfo* s = factors.find(p.name + kFactorS);
    const int64_t k = s && s->shape.size() == 1 ? s->shape[0] : -1;
    expect(p.name + kFactorU, {p.shape[0], k});
    expect(p.name + kFactorS, {k});
    expect(p.name + kFactorVt, {k, p.shape[1]});
  } else {
    expect(p.name + kFactorDelta, p.shape);
  }
}

Matrix matrix_of(const Tensor& t) {
  Matrix m(t.dim(0), t.dim(1));
  const Tensor f = t.to(DType::F32);
  std::copy(f.data<float>().begin(), f.data<float>().end(), m.data.begin());
  return m;
}

}  // namespace

MassRuntime::MassRuntime(const fs::path& bundle, size_t cache_capacity)
    : info_(BundleInfo::read(bundle)),
      base_(load_base(info_)),
      first_pass_(open_model(info_.first_pass_dir())),
      image_(*base_->image_input()),
      preprocess_(load_image_processor_config(info_.first_pass_dir())),
      cache_(cache_capacity) {
  check_same_architecture(*first_pass_, *base_, info_.first_pass_dir());
  for (size_t t = 0; t < info_.tasks.size(); ++t) {
    factors_.push_back(std::make_unique<SafetensorsReader>(info_.factors_path(t)));
    for (const ParameterSlot& p : base_->parameter_layout().slots) check_part(*factors_.back(), p);
    heads_.push_back(ClassifierHead::load(info_.head_path(t)));
    if (heads_.back().dim() != base_->head_width())
      throw InputError(info_.head_path(t), "weight",
                       "takes features of width " + std::to_string(heads_.back().dim()) + ", the model gives " +
                           std::to_string(base_->head_width()));
  }
  set_router(info_.router);
}

void MassRuntime::set_router(const RouterConfig& router, const fs::path& source) {
  const fs::path file = source.empty() ? info_.dir / kRouterFile : source;
  if (router.tasks != info_.tasks) throw InputError(file, "tasks: differ from the bundle's");
  if (router.layer < 0 || router.layer >= base_->num_layers())
    throw InputError(file, "layer: " + std::to_string(router.layer) + " is not a block of the base (it has " +
                               std::to_string(base_->num_layers()) + ")");
  const std::string routed = routed_weight(*base_, router.layer) + kFactorVt;
  std::vector<Matrix> vts;
  for (const auto& factors : factors_) {
    if (!factors->contains(routed)) throw InputError(factors->path(), routed, "missing: the router needs it");
    Matrix vt = matrix_of(factors->tensor(routed));
    if (router.rank > vt.rows)
      throw InputError(file, "rank: " + std::to_string(router.rank) + " exceeds the rank stored per task of '" +
                                 routed + "' (" + std::to_string(vt.rows) + ")");
    if (router.rank > 0) {  // the first rows: the directions of the largest singular values
      vt.data.resize(static_cast<size_t>(router.rank * vt.cols));
      vt.rows = router.rank;
    }
    vts.push_back(std::move(vt));
  }
  routing_vt_ = std::move(vts);
  info_.router = router;
}

std::optional<int64_t> MassRuntime::task_index(std::string_view name) const {
  const auto it = std::find(info_.tasks.begin(), info_.tasks.end(), name);
  if (it == info_.tasks.end()) return std::nullopt;
  return static_cast<int64_t>(it - info_.tasks.begin());
}

void MassRuntime::set_routing_model(const fs::path& checkpoint) {
  std::unique_ptr<Model> model = open_model(checkpoint);
  check_same_architecture(*model, *base_, checkpoint);
  routing_model_ = std::move(model);
}

Matrix MassRuntime::routing_tokens(std::span<const float> pixels, int64_t batch) const {
  const Model& model = routing_model_ ? *routing_model_ : *first_pass_;
  Stream h = model.embed(ModelInput::of_images(pixels, batch));
  const int64_t layer = info_.router.layer;
  for (int64_t l = 0; l < layer; ++l) model.run_own_block(l, h);
  // The routing block runs whole (its MLP input is in the middle of it); nothing after it runs.
  Matrix tokens;
  model.run_own_block(layer, h, [&](const SiteInput& in) {
    if (in.role == SiteRole::MlpInput) tokens = mass::routing_tokens(in, h.offsets, info_.router.token);
  });
  return tokens;
}

std::vector<double> MassRuntime::residuals(const Matrix& tokens) const {
  return subspace_residuals(tokens, routing_vt_);
}

std::unique_ptr<Model> MassRuntime::build_model(const TaskSet& tasks) const {
  const TaskSet set = make_task_set(tasks);
  for (int64_t t : set)
    if (t < 0 || t >= task_count()) throw std::out_of_range("MassRuntime: task index " + std::to_string(t));
  std::vector<float> flat = base_->parameters();
  const auto& slots = base_->parameter_layout().slots;
  parallel_for(slots.size(), [&](size_t i) {
    const ParameterSlot& p = slots[i];
    const std::span<float> weight = std::span(flat).subspan(p.offset, p.size);
    std::vector<Tensor> held;  // keeps the F32 views alive while the spans point into them
    auto values = [&](size_t t, const std::string& suffix) {
      held.push_back(factors_[t]->tensor(p.name + suffix).to(DType::F32));
      return held.back().data<float>();
    };
    if (factors_.front()->contains(p.name + kFactorU) && p.shape.size() == 2) {
      std::vector<FactorView> views;
      for (int64_t t : set) {
        const auto ti = static_cast<size_t>(t);
        views.push_back({values(ti, kFactorU), values(ti, kFactorS), values(ti, kFactorVt)});
      }
      add_tsv_merge(views, 1.0f, p.shape[0], p.shape[1], weight);
    } else {
      std::vector<std::span<const float>> deltas;
      for (int64_t t : set) deltas.push_back(values(static_cast<size_t>(t), kFactorDelta));
      add_mean_delta(deltas, weight);
    }
  });
  return base_->with_parameters(flat);
}

std::shared_ptr<const Model> MassRuntime::model_for(const TaskSet& tasks) {
  return cache_.get(tasks, [&] { return std::shared_ptr<const Model>(build_model(tasks)); });
}

}  // namespace amalgam::mass
