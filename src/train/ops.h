// The backward passes of the forward kernels in model/kernels.h, and the training losses, in
// float (training) or double (gradient checks against finite differences). Row-major
// buffers; every product is a BLAS call; elementwise loops are spread over the cores.
//
// Backward conventions: parameter gradients are accumulated (+=), so a batch can be split;
// input gradients are overwritten unless `accumulate_dx` says to add them (residual
// streams); a null pointer skips that gradient.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "linalg/linalg.h"
#include "model/kernels.h"

namespace amalgam::train {

// dW += dy^T x, db += column sums of dy, dx (= or +=) dy W.
template <class T>
void linear_backward(const T* x, const T* dy, int64_t rows, int64_t in, const T* w, int64_t out, T* dx,
                     bool accumulate_dx, T* dw, T* db);

template <class T>
void layer_norm_backward(const T* dy, const T* xhat, const T* rstd, int64_t rows, int64_t d, const T* g, T* dx,
                         bool accumulate_dx, T* dg, T* db);

// dx = dy * act'(x).
template <class T>
void activation_backward(Activation act, const T* x, const T* dy, T* dx, size_t n);

// The backward of attention_forward (model/kernels.h) from its probs: overwrites dqkv (the
// layout of qkv).
template <class T>
void attention_backward(const T* qkv, const T* probs, const T* dcontext, int64_t batch, int64_t tokens, int64_t width,
                        int64_t heads, T scale, T* dqkv);

// Rows scaled to unit L2 norm; norms kept for backward (a zero row stays zero).
template <class T>
void l2_normalize_forward(const T* x, int64_t rows, int64_t d, T* y, T* norms);
template <class T>
void l2_normalize_backward(const T* y, const T* norms, const T* dy, int64_t rows, int64_t d, T* dx);

// Mean over rows of -log softmax(logits)[label]; dlogits (when not null) gets the gradient
// of that mean. When not null, `correct` gets the number of rows whose argmax (the first
// largest logit) is the label, and `predictions` [rows] each row's argmax. Training and
// evaluation both score logits here.
template <class T>
double softmax_cross_entropy(const T* logits, int64_t rows, int64_t classes, std::span<const int64_t> labels,
                             T* dlogits, int64_t* correct = nullptr, int64_t* predictions = nullptr);

// The contrastive loss of SimCLR (NT-Xent) on unit rows z [2 * pairs, d] where rows i and
// i + pairs are two views of one image: per row, cross-entropy over the similarities
// z_i . z_j / temperature to every other row, with its partner as the label; the mean over
// rows. dz (when not null) gets its gradient; `correct` (when not null) the number of rows
// whose most similar other row is their partner.
template <class T>
double contrastive_loss(const T* z, int64_t pairs, int64_t d, double temperature, T* dz, int64_t* correct = nullptr);

}  // namespace amalgam::train
