// Running one merge method on one tensor in a test: the method from the registry, its
// defaults filled in, the result in F32.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "merge/method.h"

namespace amalgam {

using Params = std::map<std::string, double>;

inline Tensor vec(std::vector<float> v, Shape shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(v.size())};
  return Tensor::from_f32(shape, v);
}

inline std::vector<float> values(const Tensor& t) {
  const auto d = t.data<float>();
  return {d.begin(), d.end()};
}

// Runs `method` on one tensor; per-model parameters, then globals (defaults filled in from
// the method's spec so tests only state what matters).
inline std::vector<float> run(const std::string& method, std::vector<Tensor> models, std::optional<Tensor> base,
                              std::vector<Params> model_params, Params globals = {}, uint64_t seed = 0) {
  const auto m = MethodRegistry::instance().create(method);
  for (const auto& p : m->spec().params) {
    if (!p.default_value) continue;
    if (p.scope == ParamSpec::Scope::Global) globals.emplace(p.name, *p.default_value);
    for (auto& mp : model_params)
      if (p.scope == ParamSpec::Scope::Model) mp.emplace(p.name, *p.default_value);
  }
  const TensorJob job("layers.0.w", std::move(models), std::move(base), model_params, globals, seed);
  return values(m->merge(job));
}

inline void expect_near(const std::vector<float>& got, const std::vector<float>& want, float tol = 1e-6f) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "entry " << i;
}

}  // namespace amalgam
