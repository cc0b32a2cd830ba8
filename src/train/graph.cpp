#include "train/graph.h"

#include "core/error.h"

namespace amalgam::train {

namespace {

std::vector<TrainGraphFamily>& families() {
  static std::vector<TrainGraphFamily> all;
  return all;
}

}  // namespace

bool register_train_graph(TrainGraphFamily family) {
  families().push_back(std::move(family));
  return true;
}

std::unique_ptr<TrainGraph<float>> make_train_graph(const Model& model) {
  for (const TrainGraphFamily& f : families())
    if (f.runs(model.model_type())) return f.make(model);
  throw InputError("training: amalgam has no training graph for a " + model.model_type() +
                   " model (it trains clip_vision_model)");
}

}  // namespace amalgam::train
