// Host side of upfirdn2d on CUDA: argument checks, output allocation, op registration.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

void upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, int64_t ux, int64_t uy, int64_t dx,
                    int64_t dy, int64_t px0, int64_t py0, bool channels_last);

namespace {

at::Tensor upfirdn2d(at::Tensor x, at::Tensor w, int64_t ux, int64_t uy, int64_t dx, int64_t dy, int64_t px0,
                     int64_t px1, int64_t py0, int64_t py1) {
  TORCH_CHECK(x.is_cuda() && w.device() == x.device(), "upfirdn2d: x and the filter must be on one CUDA device");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [N, C, H, W]");
  TORCH_CHECK(w.dim() == 1 || w.dim() == 2, "upfirdn2d: filter must be 1-D or 2-D");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "upfirdn2d: filter must have x's dtype");
  TORCH_CHECK(ux >= 1 && uy >= 1 && dx >= 1 && dy >= 1, "upfirdn2d: up and down must be >= 1");
  w = w.contiguous();
  const int64_t fw = w.size(w.dim() - 1), fh = w.size(0);
  const int64_t hspan = x.size(2) * uy + py0 + py1 - fh, wspan = x.size(3) * ux + px0 + px1 - fw;
  const int64_t outH = hspan >= 0 ? hspan / dy + 1 : 0, outW = wspan >= 0 ? wspan / dx + 1 : 0;
  const bool cl = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty({x.size(0), x.size(1), outH, outW},
                     x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  upfirdn2d_cuda(x, w, y, ux, uy, dx, dy, px0, py0, cl);
  return y;
}

}  // namespace

TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d);  // y = downsample(filter(pad(upsample(x))))
}
