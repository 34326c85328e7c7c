// Host side of bias_act on CUDA: argument checks and the op registration; kernels in bias_act_cuda.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

void bias_act_forward_cuda(const at::Tensor& x, const at::Tensor& b, at::Tensor& y, int64_t n, int64_t stride,
                           int64_t C, int64_t act, double alpha, double gain, double clamp);
void bias_act_grad_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b, const at::Tensor& y,
                        at::Tensor& dx, int64_t n, int64_t stride, int64_t C, int64_t act, double alpha, double gain,
                        double clamp);
void bias_act_grad2_cuda(const at::Tensor& ddx, const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b,
                         at::Tensor& out, int64_t n, int64_t stride, int64_t C, int64_t act, double alpha,
                         double gain, double clamp);

namespace {

bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

struct Layout {
  int64_t n, stride, C;
};

Layout layout_of(const at::Tensor& ref, const at::Tensor& b, int64_t dim) {
  TORCH_CHECK(ref.is_cuda(), "bias_act: tensors must be on a CUDA device");
  TORCH_CHECK(ref.is_non_overlapping_and_dense(), "bias_act: tensors must be dense (non-overlapping)");
  Layout l{ref.numel(), 1, 1};
  if (b.numel() > 0) {
    TORCH_CHECK(dim >= 0 && dim < ref.dim(), "bias_act: dim out of range");
    TORCH_CHECK(b.dim() == 1 && b.numel() == ref.size(dim), "bias_act: b must have shape [x.shape[dim]]");
    TORCH_CHECK(b.is_contiguous() && b.scalar_type() == ref.scalar_type() && b.device() == ref.device(),
                "bias_act: b must be contiguous, with x's dtype and device");
    l.C = ref.size(dim);
    l.stride = l.C > 1 ? ref.stride(dim) : 1;
  }
  return l;
}

void check_like(const at::Tensor& t, const at::Tensor& ref, const char* what) {
  if (t.numel() == 0) return;
  TORCH_CHECK(t.device() == ref.device(), "bias_act: ", what, " must be on x's device");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "bias_act: ", what, " must have x's dtype");
  TORCH_CHECK(same_layout(t, ref), "bias_act: ", what, " must have x's shape and strides");
}

at::Tensor forward(at::Tensor x, at::Tensor b, int64_t dim, int64_t act, double alpha, double gain, double clamp) {
  const Layout l = layout_of(x, b, dim);
  c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty_like(x);
  bias_act_forward_cuda(x, b, y, l.n, l.stride, l.C, act, alpha, gain, clamp);
  return y;
}

at::Tensor grad(at::Tensor dy, at::Tensor x, at::Tensor b, at::Tensor y, int64_t dim, int64_t act, double alpha,
                double gain, double clamp) {
  check_like(x, dy, "x");
  check_like(y, dy, "y");
  // Reading the gradient from y needs no bias (y already includes it).
  const at::Tensor bb = x.numel() > 0 ? b : at::empty({0}, dy.options());
  const Layout l = layout_of(dy, bb, dim);
  TORCH_CHECK(x.numel() > 0 || y.numel() > 0 || (act == 0 && clamp < 0), "bias_act: grad needs x or y");
  TORCH_CHECK(x.numel() > 0 || act <= 2, "bias_act: only piecewise linear activations grad from y");
  c10::cuda::CUDAGuard guard(dy.device());
  auto dx = at::empty_like(dy);
  bias_act_grad_cuda(dy, x, bb, y, dx, l.n, l.stride, l.C, act, alpha, gain, clamp);
  return dx;
}

at::Tensor grad2(at::Tensor ddx, at::Tensor dy, at::Tensor x, at::Tensor b, int64_t dim, int64_t act, double alpha,
                 double gain, double clamp) {
  TORCH_CHECK(x.numel() == ddx.numel(), "bias_act: grad2 needs x");
  check_like(dy, ddx, "dy");
  check_like(x, ddx, "x");
  const Layout l = layout_of(ddx, b, dim);
  c10::cuda::CUDAGuard guard(ddx.device());
  auto out = at::empty_like(ddx);
  bias_act_grad2_cuda(ddx, dy, x, b, out, l.n, l.stride, l.C, act, alpha, gain, clamp);
  return out;
}

}  // namespace

TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("grad", &grad);
  m.def("grad2", &grad2);
}
