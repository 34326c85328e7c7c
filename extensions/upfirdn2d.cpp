// upfirdn2d on the CPU: zero-insertion upsampling, padding (negative crops), FIR filtering, downsampling, in
// one pass per image plane, without materialising the zero-stuffed image. Rank-1 filters (the usual 4x4
// outer product of [1, 3, 3, 1]) are applied as two 1-D passes; zero rows of the upsampled image are skipped.
// Channels-last input (the layout of the networks' activations on the CPU) is filtered in place of its layout,
// with the channel vector as the inner loop, and gives channels-last output: no reorder on the way in or out.
// Only the light ATen headers (not torch/extension.h): the first build on a 2-core machine stays short.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

struct Geometry {
  int64_t H, W, outH, outW;
  int64_t ux, uy, dx, dy, px0, px1, py0, py1;
  int64_t fw, fh;
  int64_t Lx;  // width of a padded, zero-stuffed input row
};

// Splits a 2-D filter into column and row factors when it is (to rounding) an outer product.
template <typename T>
bool split_rank1(const T* w, int64_t fh, int64_t fw, std::vector<T>& col, std::vector<T>& row) {
  int64_t pi = 0, pj = 0;
  T best = 0;
  for (int64_t i = 0; i < fh; ++i)
    for (int64_t j = 0; j < fw; ++j)
      if (std::abs(w[i * fw + j]) > best) { best = std::abs(w[i * fw + j]); pi = i; pj = j; }
  if (best == T(0)) return false;
  col.resize(fh);
  row.resize(fw);
  for (int64_t i = 0; i < fh; ++i) col[i] = w[i * fw + pj];
  for (int64_t j = 0; j < fw; ++j) row[j] = w[pi * fw + j] / w[pi * fw + pj];
  const T tol = best * std::numeric_limits<T>::epsilon() * 16;
  for (int64_t i = 0; i < fh; ++i)
    for (int64_t j = 0; j < fw; ++j)
      if (std::abs(col[i] * row[j] - w[i * fw + j]) > tol) return false;
  return true;
}

// out[ox] += sum_k wx[k] * prow[ox * dx + k] for ox < n.
template <typename T>
inline void hfilter_acc(T* out, const T* prow, const T* wx, int64_t fw, int64_t dx, int64_t n) {
  if (dx == 1) {
    for (int64_t k = 0; k < fw; ++k) {
      const T wk = wx[k];
      const T* p = prow + k;
#pragma omp simd
      for (int64_t o = 0; o < n; ++o) out[o] += wk * p[o];
    }
  } else {
    for (int64_t k = 0; k < fw; ++k) {
      const T wk = wx[k];
      const T* p = prow + k;
#pragma omp simd
      for (int64_t o = 0; o < n; ++o) out[o] += wk * p[o * dx];
    }
  }
}

template <typename T>
void run_plane(const T* xp, T* yp, const Geometry& g, const T* w2d, const T* wy, const T* wx, bool separable,
               std::vector<T>& pbuf, std::vector<T>& tbuf) {
  const int64_t H = g.H, W = g.W, Lx = g.Lx, outW = g.outW;

  // Rows of the zero-stuffed, padded image along x. Without upsampling or positive x padding they are
  // the input rows themselves, shifted by the crop.
  const T* prows;
  int64_t pstride;
  if (g.ux == 1 && g.px0 <= 0 && g.px1 <= 0) {
    prows = xp - g.px0;
    pstride = W;
  } else {
    pbuf.assign(H * Lx, T(0));
    for (int64_t iy = 0; iy < H; ++iy) {
      T* dst = pbuf.data() + iy * Lx;
      const T* src = xp + iy * W;
      // Input column ix lands at padded position ix * ux + px0.
      const int64_t ix0 = g.px0 >= 0 ? 0 : (-g.px0 + g.ux - 1) / g.ux;
      for (int64_t ix = ix0; ix < W; ++ix) {
        const int64_t j = ix * g.ux + g.px0;
        if (j >= Lx) break;
        dst[j] = src[ix];
      }
    }
    prows = pbuf.data();
    pstride = Lx;
  }

  // Row m of the upsampled, padded image is input row (m - py0) / uy when that divides evenly.
  auto input_row = [&](int64_t m) -> int64_t {
    const int64_t r = m - g.py0;
    if (r < 0 || r >= H * g.uy || r % g.uy != 0) return -1;
    return r / g.uy;
  };

  if (separable) {
    // Horizontal pass on every input row, then the vertical pass over the filtered rows.
    tbuf.assign(H * outW, T(0));
    for (int64_t iy = 0; iy < H; ++iy) hfilter_acc(tbuf.data() + iy * outW, prows + iy * pstride, wx, g.fw, g.dx, outW);
    for (int64_t oy = 0; oy < g.outH; ++oy) {
      T* out = yp + oy * outW;
      std::fill(out, out + outW, T(0));
      for (int64_t ky = 0; ky < g.fh; ++ky) {
        const int64_t iy = input_row(oy * g.dy + ky);
        if (iy < 0) continue;
        const T wk = wy[ky];
        const T* t = tbuf.data() + iy * outW;
#pragma omp simd
        for (int64_t o = 0; o < outW; ++o) out[o] += wk * t[o];
      }
    }
  } else {
    for (int64_t oy = 0; oy < g.outH; ++oy) {
      T* out = yp + oy * outW;
      std::fill(out, out + outW, T(0));
      for (int64_t ky = 0; ky < g.fh; ++ky) {
        const int64_t iy = input_row(oy * g.dy + ky);
        if (iy < 0) continue;
        hfilter_acc(out, prows + iy * pstride, w2d + ky * g.fw, g.fw, g.dx, outW);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------- channels last
// x [N, H, W, C] in memory. Each output row is the sum over the filter taps of shifted input rows: with
// neither up- nor downsampling along x a tap is one contiguous axpy over a run of whole pixels, otherwise one
// C-long axpy per output pixel. The row is done in segments that stay in the L1 cache while all taps add
// into them, and the taps are applied directly rather than as two 1-D passes: an intermediate image costs
// more memory traffic than the extra multiply-adds.

// Input index of padded, upsampled position p, or -1 where that position is a zero or outside the image.
inline int64_t source_index(int64_t p, int64_t pad0, int64_t up, int64_t n) {
  const int64_t u = p - pad0;
  if (u < 0 || u % up != 0) return -1;
  const int64_t i = u / up;
  return i < n ? i : -1;
}

template <typename T>
inline void axpy(T* __restrict out, const T* __restrict in, T a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] += a * in[i];
}

template <typename T>
void upfirdn2d_nhwc(const T* xp, T* yp, const Geometry& g, int64_t N, int64_t C, const std::vector<T>& w2d) {
  const int64_t in_img = g.H * g.W * C, row_in = g.W * C, row_out = g.outW * C, out_img = g.outH * row_out;
  const int64_t rows_out = N * g.outH;
  const bool dense_x = g.ux == 1 && g.dx == 1;
  const int64_t seg = std::max<int64_t>(1, static_cast<int64_t>(8192 / sizeof(T)) / C);  // pixels per segment
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, row_out * g.fh * g.fw));
  at::parallel_for(0, rows_out, grain, [&](int64_t r0, int64_t r1) {
    std::vector<const T*> rows(g.fh);
    std::vector<int64_t> kys(g.fh);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.outH, oy = r % g.outH;
      T* out = yp + n * out_img + oy * row_out;
      int64_t nky = 0;
      for (int64_t ky = 0; ky < g.fh; ++ky) {
        const int64_t iy = source_index(oy * g.dy + ky, g.py0, g.uy, g.H);
        if (iy >= 0) { kys[nky] = ky; rows[nky++] = xp + n * in_img + iy * row_in; }
      }
      for (int64_t s0 = 0; s0 < g.outW; s0 += seg) {
        const int64_t s1 = std::min(g.outW, s0 + seg);
        std::fill(out + s0 * C, out + s1 * C, T(0));
        for (int64_t j = 0; j < nky; ++j) {
          const T* xrow = rows[j];
          const T* wrow = w2d.data() + kys[j] * g.fw;
          for (int64_t kx = 0; kx < g.fw; ++kx) {
            const T wk = wrow[kx];
            if (wk == T(0)) continue;
            if (dense_x) {
              // Output column ox reads input column ox + kx - px0.
              const int64_t lo = std::max(s0, g.px0 - kx), hi = std::min(s1, g.W + g.px0 - kx);
              if (hi > lo) axpy(out + lo * C, xrow + (lo + kx - g.px0) * C, wk, (hi - lo) * C);
              continue;
            }
            for (int64_t ox = s0; ox < s1; ++ox) {
              const int64_t ix = source_index(ox * g.dx + kx, g.px0, g.ux, g.W);
              if (ix >= 0) axpy(out + ox * C, xrow + ix * C, wk, C);
            }
          }
        }
      }
    }
  });
}

at::Tensor upfirdn2d(at::Tensor x, at::Tensor w, int64_t ux, int64_t uy, int64_t dx, int64_t dy,
                        int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "upfirdn2d: tensors must be on the CPU");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [N, C, H, W]");
  TORCH_CHECK(w.dim() == 1 || w.dim() == 2, "upfirdn2d: filter must be 1-D or 2-D");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "upfirdn2d: filter must have x's dtype");
  TORCH_CHECK(ux >= 1 && uy >= 1 && dx >= 1 && dy >= 1, "upfirdn2d: up and down must be >= 1");
  // Channels-last with enough channels to fill a vector: filtered as it lies. A few channels (images) would
  // leave the inner loop nearly empty, so those are reordered to planes and back.
  const bool channels_last = x.size(1) > 1 && x.size(2) * x.size(3) > 1 &&
                             x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const bool nhwc = channels_last && x.size(1) >= 8;
  if (!nhwc) x = x.contiguous();
  w = w.contiguous();
  Geometry g;
  g.H = x.size(2); g.W = x.size(3);
  g.ux = ux; g.uy = uy; g.dx = dx; g.dy = dy;
  g.px0 = px0; g.px1 = px1; g.py0 = py0; g.py1 = py1;
  g.fw = w.size(w.dim() - 1);
  g.fh = w.dim() == 2 ? w.size(0) : w.size(0);
  g.Lx = g.W * ux + px0 + px1;
  const int64_t hspan = g.H * uy + py0 + py1 - g.fh, wspan = g.Lx - g.fw;
  g.outH = hspan >= 0 ? hspan / dy + 1 : 0;
  g.outW = wspan >= 0 ? wspan / dx + 1 : 0;
  const int64_t planes = x.size(0) * x.size(1);
  auto y = at::empty({x.size(0), x.size(1), g.outH, g.outW},
                     x.options().memory_format(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  if (planes == 0 || g.outH == 0 || g.outW == 0) return y;
  if (g.H == 0 || g.W == 0) return y.zero_();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "upfirdn2d_cpu", [&] {
    using T = scalar_t;
    const T* wp = w.data_ptr<T>();
    std::vector<T> col, row;
    bool separable = false;
    if (w.dim() == 1) {
      col.assign(wp, wp + g.fh);
      row.assign(wp, wp + g.fw);
      separable = true;
    } else {
      separable = split_rank1<T>(wp, g.fh, g.fw, col, row);
    }
    const T* xp = x.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    if (nhwc) {
      std::vector<T> w2d(g.fh * g.fw);
      for (int64_t i = 0; i < g.fh; ++i)
        for (int64_t j = 0; j < g.fw; ++j) w2d[i * g.fw + j] = w.dim() == 1 ? col[i] * row[j] : wp[i * g.fw + j];
      upfirdn2d_nhwc<T>(xp, yp, g, x.size(0), x.size(1), w2d);
      return;
    }
    const int64_t in_plane = g.H * g.W, out_plane = g.outH * g.outW;
    const int64_t work = std::max<int64_t>(1, (in_plane + out_plane) * g.fw);
    at::parallel_for(0, planes, std::max<int64_t>(1, 65536 / work), [&](int64_t p0, int64_t p1) {
      std::vector<T> pbuf, tbuf;
      for (int64_t p = p0; p < p1; ++p)
        run_plane<T>(xp + p * in_plane, yp + p * out_plane, g, wp, col.data(), row.data(), separable, pbuf, tbuf);
    });
  });
  if (channels_last && !nhwc) return y.contiguous(at::MemoryFormat::ChannelsLast);
  return y;
}

}  // namespace

TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d);  // y = downsample(filter(pad(upsample(x))))
}
