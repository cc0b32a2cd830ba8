// A task's classification head: logits = f' W^T + b, where f' is the encoder's feature
// vector, L2-normalized first when the head says so (CLIP zero-shot heads are normalized
// text embeddings times the logit scale, applied to normalized image features).
//
// File format: safetensors with `weight` [classes, dim] and optional `bias` [classes];
// metadata "normalize_features" ("true"/"false") and optionally "task" and "classes" (a JSON
// array of class names).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "linalg/linalg.h"

namespace amalgam {

struct ClassifierHead {
  Matrix weight;            // [classes, dim]
  std::vector<float> bias;  // [classes], or empty
  bool normalize_features = false;
  std::string task;
  std::vector<std::string> class_names;  // may be empty

  int64_t classes() const { return weight.rows; }
  int64_t dim() const { return weight.cols; }

  // InputError naming the file and tensor for anything malformed.
  static ClassifierHead load(const std::filesystem::path& path);
  // Atomically (written beside `path`, renamed into place); refuses to overwrite without `force`.
  void save(const std::filesystem::path& path, bool force) const;

  // [batch, dim] features -> [batch, classes] logits.
  Matrix logits(const Matrix& features) const;
};

// Rows scaled to unit L2 norm (a zero row stays zero).
void normalize_rows(Matrix& m);

}  // namespace amalgam
