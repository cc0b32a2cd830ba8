#include "train/ops.h"

#include <algorithm>
#include <type_traits>

#include "core/lane_sum.h"
#include "core/parallel.h"

namespace amalgam::train {

namespace {

// Row loops are split in chunks of this many rows across threads: smaller chunks of the
// zoo's narrow models cost more in thread wake-ups than they save.
constexpr size_t kRowChunk = 256;
// Attention over (image, head) pairs goes parallel only above this many multiply-adds.
constexpr int64_t kParallelAttentionWork = 1 << 18;

constexpr double kInvSqrt2Pi = 0.39894228040143268;

// The derivatives of model/activations.h's activation_value, with the activation a template
// argument for the same reason (scalar, they took a tenth of a training step).
template <Activation A, class T>
T act_derivative(T x) {
  if constexpr (A == Activation::QuickGelu) {
    const T s = T(1) / (T(1) + exp_of<T>(T(-1.702) * x));
    return s + T(1.702) * x * s * (T(1) - s);
  } else if constexpr (A == Activation::Gelu) {
    return T(0.5) * (T(1) + erf_of<T>(x * T(kSqrtHalf))) + x * T(kInvSqrt2Pi) * exp_of<T>(T(-0.5) * x * x);
  } else if constexpr (A == Activation::GeluTanh) {
    const T u = T(kTanhScale) * (x + T(0.044715) * x * x * x);
    const T t = tanh_of<T>(u);
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * T(kTanhScale) * (T(1) + T(3 * 0.044715) * x * x);
  } else {
    const T s = T(1) / (T(1) + exp_of<T>(-x));
    return s * (T(1) + x * (T(1) - s));
  }
}

}  // namespace

template <class T>
void linear_backward(const T* x, const T* dy, int64_t rows, int64_t in, const T* w, int64_t out, T* dx,
                     bool accumulate_dx, T* dw, T* db) {
  if (dw) gemm<T>(true, false, out, in, rows, T(1), dy, out, x, in, T(1), dw, in);
  // Column sums as a loop: a GEMM against a column of ones would copy all of dy into its
  // packed layout first, for one output column.
  if (db)
    for (int64_t r = 0; r < rows; ++r) {
      const T* dyr = dy + r * out;
      for (int64_t i = 0; i < out; ++i) db[i] += dyr[i];
    }
  if (dx) gemm<T>(false, false, rows, in, out, T(1), dy, out, w, in, accumulate_dx ? T(1) : T(0), dx, in);
}

template <class T>
void layer_norm_backward(const T* dy, const T* xhat, const T* rstd, int64_t rows, int64_t d, const T* g, T* dx,
                         bool accumulate_dx, T* dg, T* db) {
  // Parameter gradients: column sums, serial over rows (a few hundred thousand adds).
  for (int64_t r = 0; r < rows && (dg || db); ++r)
    for (int64_t i = 0; i < d; ++i) {
      if (dg) dg[i] += dy[r * d + i] * xhat[r * d + i];
      if (db) db[i] += dy[r * d + i];
    }
  if (!dx) return;
  parallel_chunks(static_cast<size_t>(rows), kRowChunk, [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const T* dyr = dy + r * static_cast<size_t>(d);
      const T* hr = xhat + r * static_cast<size_t>(d);
      T* dxr = dx + r * static_cast<size_t>(d);
      const T a = lane_sum<T>(d, [dyr, g](int64_t i) { return dyr[i] * g[i]; }) / static_cast<T>(d);
      const T c = lane_sum<T>(d, [dyr, g, hr](int64_t i) { return dyr[i] * g[i] * hr[i]; }) / static_cast<T>(d);
      for (int64_t i = 0; i < d; ++i) {
        const T v = rstd[r] * (dyr[i] * g[i] - a - hr[i] * c);
        dxr[i] = accumulate_dx ? dxr[i] + v : v;
      }
    }
  });
}

template <class T>
void activation_backward(Activation act, const T* x, const T* dy, T* dx, size_t n) {
  with_activation(act, [&](auto a) {
    parallel_chunks(n, 1 << 14, [x, dy, dx](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) dx[i] = dy[i] * act_derivative<decltype(a)::value, T>(x[i]);
    });
  });
}

template <class T>
void attention_backward(const T* qkv, const T* probs, const T* dcontext, int64_t batch, int64_t tokens, int64_t width,
                        int64_t heads, T scale, T* dqkv) {
  const int64_t hd = width / heads, pairs = batch * heads, ld = 3 * width;
#pragma omp parallel if (pairs * tokens * tokens * hd > kParallelAttentionWork)
  {
    std::vector<T> ds(static_cast<size_t>(tokens * tokens));
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t b = p / heads, h = p % heads;
      const int64_t off = b * tokens * ld + h * hd;
      const T *q = qkv + off, *k = q + width, *v = q + 2 * width;
      T *dq = dqkv + off, *dk = dq + width, *dv = dq + 2 * width;
      const T* dc = dcontext + b * tokens * width + h * hd;
      const T* pr = probs + p * tokens * tokens;
      // dV = P^T dC; dP = dC V^T; dS = P * (dP - rowsum(dP * P)); dQ = scale dS K; dK = scale dS^T Q.
      gemm<T>(true, false, tokens, hd, tokens, T(1), pr, tokens, dc, width, T(0), dv, ld);
      gemm<T>(false, true, tokens, tokens, hd, T(1), dc, width, v, ld, T(0), ds.data(), tokens);
      for (int64_t r = 0; r < tokens; ++r) {
        T* dr = ds.data() + r * tokens;
        const T* prr = pr + r * tokens;
        T dot = 0;
        for (int64_t j = 0; j < tokens; ++j) dot += dr[j] * prr[j];
        for (int64_t j = 0; j < tokens; ++j) dr[j] = prr[j] * (dr[j] - dot);
      }
      gemm<T>(false, false, tokens, hd, tokens, scale, ds.data(), tokens, k, ld, T(0), dq, ld);
      gemm<T>(true, false, tokens, hd, tokens, scale, ds.data(), tokens, q, ld, T(0), dk, ld);
    }
  }
}

template <class T>
void l2_normalize_forward(const T* x, int64_t rows, int64_t d, T* y, T* norms) {
  for (int64_t r = 0; r < rows; ++r) {
    double sq = 0;
    for (int64_t i = 0; i < d; ++i) sq += static_cast<double>(x[r * d + i]) * x[r * d + i];
    norms[r] = static_cast<T>(std::sqrt(sq));
    const T inv = norms[r] > 0 ? T(1) / norms[r] : T(0);
    for (int64_t i = 0; i < d; ++i) y[r * d + i] = x[r * d + i] * inv;
  }
}

template <class T>
void l2_normalize_backward(const T* y, const T* norms, const T* dy, int64_t rows, int64_t d, T* dx) {
  for (int64_t r = 0; r < rows; ++r) {
    if (norms[r] == 0) {
      for (int64_t i = 0; i < d; ++i) dx[r * d + i] = 0;
      continue;
    }
    T dot = 0;
    for (int64_t i = 0; i < d; ++i) dot += y[r * d + i] * dy[r * d + i];
    for (int64_t i = 0; i < d; ++i) dx[r * d + i] = (dy[r * d + i] - y[r * d + i] * dot) / norms[r];
  }
}

template <class T>
double softmax_cross_entropy(const T* logits, int64_t rows, int64_t classes, std::span<const int64_t> labels,
                             T* dlogits, int64_t* correct, int64_t* predictions) {
  double loss = 0;
  int64_t right = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* lr = logits + r * classes;
    int64_t best = 0;
    for (int64_t c = 1; c < classes; ++c)
      if (lr[c] > lr[best]) best = c;
    double z = 0;
    for (int64_t c = 0; c < classes; ++c) z += std::exp(static_cast<double>(lr[c] - lr[best]));
    const int64_t y = labels[static_cast<size_t>(r)];
    loss += std::log(z) - static_cast<double>(lr[y] - lr[best]);
    right += best == y;
    if (predictions) predictions[r] = best;
    if (dlogits)
      for (int64_t c = 0; c < classes; ++c) {
        const double p = std::exp(static_cast<double>(lr[c] - lr[best])) / z;
        dlogits[r * classes + c] = static_cast<T>((p - (c == y ? 1.0 : 0.0)) / static_cast<double>(rows));
      }
  }
  if (correct) *correct = right;
  return rows ? loss / static_cast<double>(rows) : 0.0;
}

template <class T>
double contrastive_loss(const T* z, int64_t pairs, int64_t d, double temperature, T* dz, int64_t* correct) {
  const int64_t rows = 2 * pairs;
  std::vector<T> sim(static_cast<size_t>(rows * rows));
  gemm<T>(false, true, rows, rows, d, T(1), z, d, z, d, T(0), sim.data(), rows);
  // sim becomes dL/dsim row by row: (softmax - onehot(partner)) / (rows * temperature).
  double loss = 0;
  int64_t right = 0;
  for (int64_t i = 0; i < rows; ++i) {
    T* s = sim.data() + i * rows;
    const int64_t partner = (i + pairs) % rows;
    int64_t best = i == 0 ? 1 : 0;
    for (int64_t j = 0; j < rows; ++j)
      if (j != i && s[j] > s[best]) best = j;
    const double top = static_cast<double>(s[best]) / temperature;
    double z_sum = 0;
    for (int64_t j = 0; j < rows; ++j)
      if (j != i) z_sum += std::exp(static_cast<double>(s[j]) / temperature - top);
    loss += std::log(z_sum) + top - static_cast<double>(s[partner]) / temperature;
    right += best == partner;
    for (int64_t j = 0; j < rows; ++j) {
      const double p = j == i ? 0.0 : std::exp(static_cast<double>(s[j]) / temperature - top) / z_sum;
      s[j] = static_cast<T>((p - (j == partner ? 1.0 : 0.0)) / (static_cast<double>(rows) * temperature));
    }
  }
  if (dz) {
    // sim = z z^T, so dz = (G + G^T) z.
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = i + 1; j < rows; ++j) {
        const T sum = sim[static_cast<size_t>(i * rows + j)] + sim[static_cast<size_t>(j * rows + i)];
        sim[static_cast<size_t>(i * rows + j)] = sum;
        sim[static_cast<size_t>(j * rows + i)] = sum;
      }
    gemm<T>(false, false, rows, d, rows, T(1), sim.data(), rows, z, d, T(0), dz, d);
  }
  if (correct) *correct = right;
  return rows ? loss / static_cast<double>(rows) : 0.0;
}

#define AMALGAM_INSTANTIATE_TRAIN_OPS(T)                                                                            \
  template void linear_backward<T>(const T*, const T*, int64_t, int64_t, const T*, int64_t, T*, bool, T*, T*);      \
  template void layer_norm_backward<T>(const T*, const T*, const T*, int64_t, int64_t, const T*, T*, bool, T*, T*); \
  template void activation_backward<T>(Activation, const T*, const T*, T*, size_t);                                 \
  template void attention_backward<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, T, T*);     \
  template void l2_normalize_forward<T>(const T*, int64_t, int64_t, T*, T*);                                        \
  template void l2_normalize_backward<T>(const T*, const T*, const T*, int64_t, int64_t, T*);                       \
  template double softmax_cross_entropy<T>(const T*, int64_t, int64_t, std::span<const int64_t>, T*, int64_t*,      \
                                           int64_t*);                                                               \
  template double contrastive_loss<T>(const T*, int64_t, int64_t, double, T*, int64_t*);

AMALGAM_INSTANTIATE_TRAIN_OPS(float)
AMALGAM_INSTANTIATE_TRAIN_OPS(double)

}  // namespace amalgam::train
