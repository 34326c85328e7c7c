// bias_act on CUDA: the same three modes as bias_act.cpp (forward, gradient, x-part of the gradient's
// gradient), one thread per element. half and bfloat16 compute in float.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "bias_act_math.h"

using namespace studio;

namespace {

constexpr int kThreads = 256;

struct Layout {
  int64_t n, stride, C;
};

__device__ __forceinline__ int64_t channel(int64_t i, const Layout& l) { return (i / l.stride) % l.C; }

template <int A, typename T, typename U>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y, Layout l,
                               U alpha, U gain, U c) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < l.n; i += (int64_t)gridDim.x * blockDim.x) {
    U v = U(x[i]);
    if (b) v += U(b[channel(i, l)]);
    y[i] = T(clamp_(act_f<A, U>(v, alpha) * gain, c));
  }
}

template <int A, typename T, typename U>
__global__ void grad_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ b,
                            const T* __restrict__ y, T* __restrict__ dx, Layout l, U alpha, U gain, U c,
                            bool has_clamp) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < l.n; i += (int64_t)gridDim.x * blockDim.x) {
    U g;
    if (x) {
      U v = U(x[i]);
      if (b) v += U(b[channel(i, l)]);
      const U out = act_f<A, U>(v, alpha) * gain;
      g = (out < -c || out > c) ? U(0) : gain * act_d1<A, U>(v, alpha);
    } else if (y) {
      const U yi = U(y[i]);
      g = (has_clamp && !(yi > -c && yi < c)) ? U(0) : gain * act_d1_from_y<A, U>(yi, alpha);
    } else {
      g = gain;
    }
    dx[i] = T(U(dy[i]) * g);
  }
}

template <int A, typename T, typename U>
__global__ void grad2_kernel(const T* __restrict__ ddx, const T* __restrict__ dy, const T* __restrict__ x,
                             const T* __restrict__ b, T* __restrict__ out, Layout l, U alpha, U gain, U c) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < l.n; i += (int64_t)gridDim.x * blockDim.x) {
    U v = U(x[i]);
    if (b) v += U(b[channel(i, l)]);
    const U o = act_f<A, U>(v, alpha) * gain;
    out[i] = T((o < -c || o > c) ? U(0) : U(ddx[i]) * U(dy[i]) * gain * act_d2<A, U>(v, alpha));
  }
}

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return (int)std::min<int64_t>(std::max<int64_t>(b, 1), 65535 * 8);
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

template <typename T> const T* opt_ptr(const at::Tensor& t) { return t.numel() > 0 ? t.data_ptr<T>() : nullptr; }

}  // namespace

// Layout checks are done by the host side (bias_act_cuda.cpp); these launch on the current stream.
void bias_act_forward_cuda(const at::Tensor& x, const at::Tensor& b, at::Tensor& y, int64_t n, int64_t stride,
                           int64_t C, int64_t act, double alpha, double gain, double clamp) {
  if (n == 0) return;
  const Layout l{n, stride, C};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_forward_cuda", [&] {
    using U = at::acc_type<scalar_t, true>;
    const U c = clamp >= 0 ? U(clamp) : U(INFINITY);
    STUDIO_ACT_SWITCH(act, (forward_kernel<A, scalar_t, U><<<blocks_for(n), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), opt_ptr<scalar_t>(b), y.data_ptr<scalar_t>(), l, U(alpha), U(gain), c)));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bias_act_grad_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b, const at::Tensor& y,
                        at::Tensor& dx, int64_t n, int64_t stride, int64_t C, int64_t act, double alpha, double gain,
                        double clamp) {
  if (n == 0) return;
  const Layout l{n, stride, C};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "bias_act_grad_cuda", [&] {
    using U = at::acc_type<scalar_t, true>;
    const U c = clamp >= 0 ? U(clamp) : U(INFINITY);
    STUDIO_ACT_SWITCH(act, (grad_kernel<A, scalar_t, U><<<blocks_for(n), kThreads, 0, stream>>>(
        dy.data_ptr<scalar_t>(), opt_ptr<scalar_t>(x), opt_ptr<scalar_t>(b), opt_ptr<scalar_t>(y),
        dx.data_ptr<scalar_t>(), l, U(alpha), U(gain), c, clamp >= 0)));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bias_act_grad2_cuda(const at::Tensor& ddx, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b,
                         at::Tensor& out, int64_t n, int64_t stride, int64_t C, int64_t act, double alpha,
                         double gain, double clamp) {
  if (n == 0) return;
  const Layout l{n, stride, C};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ddx.scalar_type(), "bias_act_grad2_cuda", [&] {
    using U = at::acc_type<scalar_t, true>;
    const U c = clamp >= 0 ? U(clamp) : U(INFINITY);
    STUDIO_ACT_SWITCH(act, (grad2_kernel<A, scalar_t, U><<<blocks_for(n), kThreads, 0, stream>>>(
        ddx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), opt_ptr<scalar_t>(b),
        out.data_ptr<scalar_t>(), l, U(alpha), U(gain), c)));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
