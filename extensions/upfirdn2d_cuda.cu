// upfirdn2d on CUDA: one thread per output pixel, visiting only the filter taps that land on real input
// pixels (the zero-stuffed ones of the upsampling are skipped, polyphase). Any input strides; the output keeps
// x's memory format (NCHW or channels_last) and threads walk it in memory order, so writes coalesce.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

namespace {

struct Geom {
  int64_t N, C, H, W, outH, outW;
  int64_t sxn, sxc, sxh, sxw;  // input strides
  int64_t syn, syc, syh, syw;  // output strides
  int ux, uy, dx, dy, px0, py0, fw, fh;
  bool channels_last;          // output memory order: N, H, W, C
};

template <typename T, typename U, bool SEP>
__global__ void upfirdn2d_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, Geom g) {
  const int64_t total = g.N * g.C * g.outH * g.outW;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, c, oy, ox, t = i;
    if (g.channels_last) {
      c = t % g.C; t /= g.C; ox = t % g.outW; t /= g.outW; oy = t % g.outH; n = t / g.outH;
    } else {
      ox = t % g.outW; t /= g.outW; oy = t % g.outH; t /= g.outH; c = t % g.C; n = t / g.C;
    }
    // Tap k lands at upsampled position r0 + k; a real pixel only when that divides by the up factor.
    const int64_t ry0 = oy * g.dy - g.py0, rx0 = ox * g.dx - g.px0;
    const int ky0 = (int)(((-ry0) % g.uy + g.uy) % g.uy), kx0 = (int)(((-rx0) % g.ux + g.ux) % g.ux);
    const T* xp = x + n * g.sxn + c * g.sxc;
    U acc = U(0);
    for (int ky = ky0; ky < g.fh; ky += g.uy) {
      const int64_t iy = (ry0 + ky) / g.uy;
      if (ry0 + ky < 0) continue;
      if (iy >= g.H) break;
      const U wy = SEP ? U(w[ky]) : U(1);
      for (int kx = kx0; kx < g.fw; kx += g.ux) {
        const int64_t ix = (rx0 + kx) / g.ux;
        if (rx0 + kx < 0) continue;
        if (ix >= g.W) break;
        const U wk = SEP ? wy * U(w[kx]) : U(w[ky * g.fw + kx]);
        acc += wk * U(xp[iy * g.sxh + ix * g.sxw]);
      }
    }
    y[n * g.syn + c * g.syc + oy * g.syh + ox * g.syw] = T(acc);
  }
}

}  // namespace

// x [N, C, H, W] (any strides), w: [fh, fw] or separable [k], y preallocated [N, C, outH, outW].
void upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, int64_t ux, int64_t uy, int64_t dx,
                    int64_t dy, int64_t px0, int64_t py0, bool channels_last) {
  Geom g;
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.outH = y.size(2); g.outW = y.size(3);
  g.sxn = x.stride(0); g.sxc = x.stride(1); g.sxh = x.stride(2); g.sxw = x.stride(3);
  g.syn = y.stride(0); g.syc = y.stride(1); g.syh = y.stride(2); g.syw = y.stride(3);
  g.ux = (int)ux; g.uy = (int)uy; g.dx = (int)dx; g.dy = (int)dy; g.px0 = (int)px0; g.py0 = (int)py0;
  g.fw = (int)w.size(w.dim() - 1); g.fh = (int)w.size(0);
  g.channels_last = channels_last;
  const int64_t total = y.numel();
  if (total == 0) return;
  const int threads = 256;
  const int blocks = (int)std::min<int64_t>((total + threads - 1) / threads, 65535 * 16);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
    using U = at::acc_type<scalar_t, true>;
    if (w.dim() == 1)
      upfirdn2d_kernel<scalar_t, U, true><<<blocks, threads, 0, stream>>>(
          x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), g);
    else
      upfirdn2d_kernel<scalar_t, U, false><<<blocks, threads, 0, stream>>>(
          x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), g);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
