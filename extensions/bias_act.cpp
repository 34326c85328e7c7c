// bias_act on the CPU: y = clamp(act(x + b) * gain), its gradient and the gradient of that gradient, each in
// one pass over memory. Tensors may be in any dense layout (NCHW, channels_last, ...): the kernels walk
// memory in order and find each element's channel from the stride of `dim`.
// Only the light ATen headers (not torch/extension.h): the first build on a 2-core machine stays short.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "bias_act_math.h"

using namespace studio;

namespace {

// Elements per task: below this the threading overhead outweighs the work.
constexpr int64_t kGrain = 32768;

struct Layout {
  int64_t n;       // number of elements
  int64_t stride;  // memory stride of the bias dimension
  int64_t C;       // size of the bias dimension (1 when there is no bias)
};

// Same sizes, and the same strides wherever a dimension has more than one element.
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

Layout layout_of(const at::Tensor& ref, const at::Tensor& b, int64_t dim) {
  TORCH_CHECK(ref.is_non_overlapping_and_dense(), "bias_act: tensors must be dense (non-overlapping)");
  Layout l{ref.numel(), 1, 1};
  if (b.numel() > 0) {
    TORCH_CHECK(dim >= 0 && dim < ref.dim(), "bias_act: dim out of range");
    TORCH_CHECK(b.dim() == 1 && b.numel() == ref.size(dim), "bias_act: b must have shape [x.shape[dim]]");
    TORCH_CHECK(b.is_contiguous() && b.scalar_type() == ref.scalar_type(), "bias_act: b must be contiguous, x's dtype");
    l.C = ref.size(dim);
    l.stride = l.C > 1 ? ref.stride(dim) : 1;
  }
  return l;
}

// Calls elem(i, b_i) for every memory offset i; runs of equal bias are kept in inner loops the compiler
// vectorises (NCHW: runs of H*W elements; channels_last: rows of C biases).
template <typename T, typename E>
void for_each(const Layout& l, const T* b, const E& elem) {
  if (l.n == 0) return;
  if (b == nullptr) {
    at::parallel_for(0, l.n, kGrain, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) elem(i, T(0));
    });
    return;
  }
  const int64_t s = l.stride, C = l.C;
  if (s == 1) {
    const int64_t rows = l.n / C;
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t base = r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) elem(base + c, b[c]);
      }
    });
  } else {
    const int64_t runs = l.n / s;  // each run of s elements shares one channel
    at::parallel_for(0, runs, std::max<int64_t>(1, kGrain / s), [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const T bc = b[k % C];
        const int64_t base = k * s;
#pragma omp simd
        for (int64_t j = 0; j < s; ++j) elem(base + j, bc);
      }
    });
  }
}

template <int A, typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& b, at::Tensor& y, const Layout& l, double alpha_,
                  double gain_, double clamp_d) {
  const T* xp = x.data_ptr<T>();
  const T* bp = b.numel() > 0 ? b.data_ptr<T>() : nullptr;
  T* yp = y.data_ptr<T>();
  const T alpha = T(alpha_), gain = T(gain_);
  const T c = clamp_d >= 0 ? T(clamp_d) : T(INFINITY);
  for_each<T>(l, bp, [=](int64_t i, T bi) { yp[i] = clamp_(act_f<A, T>(xp[i] + bi, alpha) * gain, c); });
}

// dx = dy * d(y)/d(x). With x given, from v = x + b; else from the saved output y (piecewise linear acts);
// with neither (linear, no clamp) it is dy * gain.
template <int A, typename T>
void grad_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b, const at::Tensor& y,
               at::Tensor& dx, const Layout& l, double alpha_, double gain_, double clamp_d) {
  const T* dyp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  const T alpha = T(alpha_), gain = T(gain_);
  const bool has_clamp = clamp_d >= 0;
  const T c = has_clamp ? T(clamp_d) : T(INFINITY);
  if (x.numel() > 0) {
    const T* xp = x.data_ptr<T>();
    const T* bp = b.numel() > 0 ? b.data_ptr<T>() : nullptr;
    for_each<T>(l, bp, [=](int64_t i, T bi) {
      const T v = xp[i] + bi;
      const T out = act_f<A, T>(v, alpha) * gain;
      const bool pass = !(out < -c || out > c);
      dxp[i] = pass ? dyp[i] * gain * act_d1<A, T>(v, alpha) : T(0);
    });
  } else if (y.numel() > 0) {
    TORCH_CHECK(A == LINEAR || A == RELU || A == LRELU, "bias_act: only piecewise linear activations grad from y");
    const T* yp = y.data_ptr<T>();
    for_each<T>(l, nullptr, [=](int64_t i, T) {
      const T yi = yp[i];
      const bool pass = !has_clamp || (yi > -c && yi < c);
      dxp[i] = pass ? dyp[i] * gain * act_d1_from_y<A, T>(yi, alpha) : T(0);
    });
  } else {
    TORCH_CHECK(A == LINEAR && !has_clamp, "bias_act: grad needs x or y");
    for_each<T>(l, nullptr, [=](int64_t i, T) { dxp[i] = dyp[i] * gain; });
  }
}

// d_x = ddx * dy * gain * act''(x + b), the x-part of the gradient of grad_impl's result.
template <int A, typename T>
void grad2_impl(const at::Tensor& ddx, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b,
                at::Tensor& out, const Layout& l, double alpha_, double gain_, double clamp_d) {
  const T* ddxp = ddx.data_ptr<T>();
  const T* dyp = dy.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* bp = b.numel() > 0 ? b.data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  const T alpha = T(alpha_), gain = T(gain_);
  const T c = clamp_d >= 0 ? T(clamp_d) : T(INFINITY);
  for_each<T>(l, bp, [=](int64_t i, T bi) {
    const T v = xp[i] + bi;
    const T y = act_f<A, T>(v, alpha) * gain;
    const bool pass = !(y < -c || y > c);
    op[i] = pass ? ddxp[i] * dyp[i] * gain * act_d2<A, T>(v, alpha) : T(0);
  });
}

#define STUDIO_ACT_SWITCH(act, ...)                                                        \
  switch (act) {                                                                           \
    case LINEAR: { constexpr int A = LINEAR; __VA_ARGS__; break; }                         \
    case RELU: { constexpr int A = RELU; __VA_ARGS__; break; }                             \
    case LRELU: { constexpr int A = LRELU; __VA_ARGS__; break; }                           \
    case TANH: { constexpr int A = TANH; __VA_ARGS__; break; }                             \
    case SIGMOID: { constexpr int A = SIGMOID; __VA_ARGS__; break; }                       \
    case ELU: { constexpr int A = ELU; __VA_ARGS__; break; }                               \
    case SELU: { constexpr int A = SELU; __VA_ARGS__; break; }                             \
    case SOFTPLUS: { constexpr int A = SOFTPLUS; __VA_ARGS__; break; }                     \
    case SWISH: { constexpr int A = SWISH; __VA_ARGS__; break; }                           \
    default: TORCH_CHECK(false, "bias_act: unknown activation id ", act);                  \
  }

void check_cpu(const at::Tensor& t, const at::Tensor& ref, const char* what) {
  if (t.numel() == 0) return;
  TORCH_CHECK(t.device().is_cpu(), "bias_act: ", what, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "bias_act: ", what, " must have x's dtype");
  TORCH_CHECK(same_layout(t, ref), "bias_act: ", what, " must have x's shape and strides");
}

at::Tensor forward(at::Tensor x, at::Tensor b, int64_t dim, int64_t act, double alpha, double gain,
                      double clamp) {
  TORCH_CHECK(x.device().is_cpu(), "bias_act: x must be on the CPU");
  const Layout l = layout_of(x, b, dim);
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bias_act_forward", [&] {
    STUDIO_ACT_SWITCH(act, forward_impl<A, scalar_t>(x, b, y, l, alpha, gain, clamp));
  });
  return y;
}

at::Tensor grad(at::Tensor dy, at::Tensor x, at::Tensor b, at::Tensor y, int64_t dim, int64_t act,
                   double alpha, double gain, double clamp) {
  TORCH_CHECK(dy.device().is_cpu(), "bias_act: dy must be on the CPU");
  check_cpu(x, dy, "x");
  check_cpu(y, dy, "y");
  // Reading the gradient from y needs no bias (y already includes it).
  const at::Tensor bb = x.numel() > 0 ? b : at::empty({0}, dy.options());
  const Layout l = layout_of(dy, bb, dim);
  auto dx = at::empty_like(dy);
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "bias_act_grad", [&] {
    STUDIO_ACT_SWITCH(act, grad_impl<A, scalar_t>(dy, x, bb, y, dx, l, alpha, gain, clamp));
  });
  return dx;
}

at::Tensor grad2(at::Tensor ddx, at::Tensor dy, at::Tensor x, at::Tensor b, int64_t dim, int64_t act,
                    double alpha, double gain, double clamp) {
  TORCH_CHECK(ddx.device().is_cpu(), "bias_act: ddx must be on the CPU");
  TORCH_CHECK(x.numel() == ddx.numel(), "bias_act: grad2 needs x");
  check_cpu(dy, ddx, "dy");
  check_cpu(x, ddx, "x");
  const Layout l = layout_of(ddx, b, dim);
  auto out = at::empty_like(ddx);
  AT_DISPATCH_FLOATING_TYPES(ddx.scalar_type(), "bias_act_grad2", [&] {
    STUDIO_ACT_SWITCH(act, grad2_impl<A, scalar_t>(ddx, dy, x, b, out, l, alpha, gain, clamp));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);  // y = clamp(act(x + b) * gain)
  m.def("grad", &grad);        // dx = dy * dy/dx
  m.def("grad2", &grad2);      // the x-gradient of grad's result
}
