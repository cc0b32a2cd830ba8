// What training needs from a model family: the model as a differentiable function of its
// flat parameter vector (Model::parameter_layout's order). forward keeps what backward needs;
// backward accumulates the gradient of <features, dfeatures>. A family registers a maker
// (train/families/<family>.cpp), chosen by the model's model_type, as model families are.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"

namespace amalgam::train {

template <class T>
class TrainGraph {
 public:
  TrainGraph() = default;
  TrainGraph(const TrainGraph&) = default;
  TrainGraph(TrainGraph&&) = default;
  TrainGraph& operator=(const TrainGraph&) = default;
  TrainGraph& operator=(TrainGraph&&) = default;
  virtual ~TrainGraph() = default;

  virtual const ParameterLayout& layout() const = 0;
  // One input image's values ([C, H, W]).
  virtual int64_t image_floats() const = 0;
  // pixels [batch, C, H, W] -> features [batch, feature width]; keeps the activations.
  virtual void forward(std::span<const T> params, std::span<const T> pixels, int64_t batch,
                       std::vector<T>& features) = 0;
  // grads += d<features, dfeatures>/d params for the last forward's batch.
  virtual void backward(std::span<const T> params, std::span<const T> dfeatures, std::span<T> grads) = 0;
};

struct TrainGraphFamily {
  std::function<bool(const std::string& model_type)> runs;
  std::function<std::unique_ptr<TrainGraph<float>>(const Model& model)> make;
};
// Registers a family's training graph (from a static initialiser in its file); returns true.
bool register_train_graph(TrainGraphFamily family);
// The training graph of `model`'s architecture, its layout the model's parameter_layout():
// InputError when its family has none.
std::unique_ptr<TrainGraph<float>> make_train_graph(const Model& model);

}  // namespace amalgam::train
