"""Autograd wrappers that put the compiled kernels of extensions/ behind the reference ops' call convention.

dispatch.compiled() returns a BiasActKernel or Upfirdn2dKernel; bias_act.py / upfirdn2d.py call their methods
with the same arguments as their reference code, so the compiled path is a drop-in:

    kernel.bias_act(x, b, dim, act, alpha, gain, clamp)            # alpha, gain floats; clamp < 0 = none
    kernel.upfirdn2d(x, f, up=(ux, uy), down=(dx, dy), padding=(px0, px1, py0, py1), flip_filter=, gain=)

Both are differentiable twice, as R1 needs: bias_act's gradient is itself a Function whose backward uses the
kernel's second-derivative mode; upfirdn2d's gradient is an upfirdn2d (flipped filter, up and down swapped).
"""

import torch

from engine.ops.reference import upfirdn2d_ref

ACT_IDS = {"linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4, "elu": 5, "selu": 6, "softplus": 7,
           "swish": 8}
# Activations with a nonzero second derivative: their gradient depends on x, so x is kept for backward.
SMOOTH = {"tanh", "sigmoid", "elu", "selu", "softplus", "swish"}

_EMPTY = {}


def _empty(like):
    key = (like.dtype, like.device)
    t = _EMPTY.get(key)
    if t is None:
        t = _EMPTY[key] = torch.empty(0, dtype=like.dtype, device=like.device)
    return t


def _dense(t):
    """True when t covers its memory without gaps or overlaps, in any dimension order."""
    expected = 1
    dims = sorted(((st, s) for s, st in zip(t.shape, t.stride()) if s != 1))
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _like(t, ref):
    """t with ref's memory layout (the kernels walk both in memory order)."""
    if t.shape == ref.shape and all(a == b for a, b, s in zip(t.stride(), ref.stride(), ref.shape) if s != 1):
        return t
    return torch.empty_like(ref).copy_(t)


# ------------------------------------------------------------------------------------------------ bias_act

class _Cfg:
    """What the kernels need besides tensors; saved modes: 'x' (smooth acts), 'y' (piecewise linear), None."""
    __slots__ = ("ext", "dim", "act", "act_id", "alpha", "gain", "clamp", "keep", "reduce_dims")

    def __init__(self, ext, ndim, dim, act, alpha, gain, clamp):
        self.ext, self.dim, self.act, self.act_id = ext, dim, act, ACT_IDS[act]
        self.alpha, self.gain, self.clamp = alpha, gain, clamp
        if act in SMOOTH or gain <= 0 or alpha < 0:
            self.keep = "x"
        elif act == "linear" and clamp < 0:
            self.keep = None
        else:
            self.keep = "y"
        self.reduce_dims = [d for d in range(ndim) if d != dim]


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, cfg):
        y = cfg.ext.forward(x, _empty(x) if b is None else b, cfg.dim, cfg.act_id, cfg.alpha, cfg.gain, cfg.clamp)
        ctx.cfg = cfg
        ctx.has_b = b is not None
        if cfg.keep == "x":
            ctx.save_for_backward(x, b)
        elif cfg.keep == "y":
            ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        cfg = ctx.cfg
        x = b = y = None
        if cfg.keep == "x":
            x, b = ctx.saved_tensors
            dy = _like(dy, x)
        elif cfg.keep == "y":
            (y,) = ctx.saved_tensors
            dy = _like(dy, y)
        if cfg.keep is None:
            dx = dy * cfg.gain if cfg.gain != 1 else dy  # linear without clamp: plain torch, any order
        elif torch.is_grad_enabled():
            dx = _BiasActGrad.apply(dy, x, b, y, cfg)  # create_graph: the gradient is differentiated again
        else:
            dx = _BiasActGrad.kernel(dy, x, b, y, cfg)
        db = dx.sum(cfg.reduce_dims) if ctx.has_b and ctx.needs_input_grad[1] else None
        return dx, db, None


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * d act(x + b) * gain / dx; linear in dy, and its x-part uses act''."""

    @staticmethod
    def kernel(dy, x, b, y, cfg):
        e = _empty(dy)
        return cfg.ext.grad(dy, e if x is None else x, e if b is None else b, e if y is None else y,
                            cfg.dim, cfg.act_id, cfg.alpha, cfg.gain, cfg.clamp)

    @staticmethod
    def forward(ctx, dy, x, b, y, cfg):
        dx = _BiasActGrad.kernel(dy, x, b, y, cfg)
        ctx.cfg = cfg
        ctx.save_for_backward(dy if cfg.keep == "x" else None, x, b, y)
        return dx

    @staticmethod
    def backward(ctx, ddx):
        cfg = ctx.cfg
        dy, x, b, y = ctx.saved_tensors
        ddx = _like(ddx, x if cfg.keep == "x" else y)
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActGrad.apply(ddx, x, b, y, cfg)
        if cfg.keep == "x" and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            d_x = cfg.ext.grad2(ddx, _like(dy, x), x, _empty(x) if b is None else b, cfg.dim, cfg.act_id,
                                cfg.alpha, cfg.gain, cfg.clamp)
            if b is not None and ctx.needs_input_grad[2]:
                d_b = d_x.sum(cfg.reduce_dims)
        return d_dy, d_x, d_b, None, None


class BiasActKernel:
    """bias_act on a compiled kernel (CPU or CUDA module from build.load)."""

    def __init__(self, ext, device):
        self.ext, self.device = ext, device

    def bias_act(self, x, b, dim, act, alpha, gain, clamp):
        """Same result as the reference bias_act; x: any shape/layout, b: [x.shape[dim]] or None."""
        if x.ndim == 0:
            raise ValueError("bias_act: x must have at least one dimension")
        dim = dim % x.ndim
        if b is not None:
            if b.ndim != 1 or b.shape[0] != x.shape[dim]:
                raise ValueError(f"bias_act: b has shape {list(b.shape)}, expected [{x.shape[dim]}]")
            b = b.to(x.dtype).contiguous()
        if not _dense(x):
            x = x.contiguous()
        cfg = _Cfg(self.ext, x.ndim, dim, act, float(alpha), float(gain), float(clamp))
        return _BiasAct.apply(x, b, cfg)


# ----------------------------------------------------------------------------------------------- upfirdn2d

class _Upfirdn2d(torch.autograd.Function):
    """x [N, C, H, W] correlated with the prepared filter w (already flipped and scaled by the gain)."""

    @staticmethod
    def forward(ctx, x, w, geom, ext):
        ux, uy, dx, dy, px0, px1, py0, py1 = geom
        y = ext.upfirdn2d(x, w, ux, uy, dx, dy, px0, px1, py0, py1)
        ctx.save_for_backward(w)
        ctx.geom, ctx.ext, ctx.in_hw, ctx.out_hw = geom, ext, x.shape[2:], y.shape[2:]
        return y

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        ux, uy, dx, dy, px0, px1, py0, py1 = ctx.geom
        (h, wd), (oh, ow) = ctx.in_hw, ctx.out_hw
        fh, fw = (w.shape[0], w.shape[-1])
        # The transpose of "upsample, pad, correlate, downsample" is "upsample by down, pad, correlate with
        # the flipped filter, downsample by up"; the end padding makes the result exactly [h, wd].
        geom = (dx, dy, ux, uy,
                fw - px0 - 1, wd * ux - ow * dx + px0 - ux + 1,
                fh - py0 - 1, h * uy - oh * dy + py0 - uy + 1)
        return _Upfirdn2d.apply(grad, w.flip(list(range(w.ndim))), geom, ctx.ext), None, None, None


class Upfirdn2dKernel:
    """upfirdn2d on a compiled kernel (CPU or CUDA module from build.load)."""

    def __init__(self, ext, device):
        self.ext, self.device = ext, device

    def upfirdn2d(self, x, f, up=(1, 1), down=(1, 1), padding=(0, 0, 0, 0), flip_filter=False, gain=1):
        """Same result as the reference upfirdn2d; x [N, C, H, W], f [fh, fw], [k] (separable) or None."""
        if f is not None and f.requires_grad and torch.is_grad_enabled():
            # The kernel has no filter gradient; the reference has.
            return upfirdn2d_ref(x, f, *up, *down, *padding, flip_filter, gain)
        if x.ndim != 4:
            raise ValueError(f"upfirdn2d: x must be [N, C, H, W], got shape {list(x.shape)}")
        if f is None:
            w = torch.full([1, 1], float(gain), dtype=x.dtype, device=x.device)
        else:
            if f.ndim not in (1, 2):
                raise ValueError(f"upfirdn2d: filter must be 1-D or 2-D, got shape {list(f.shape)}")
            w = f.to(device=x.device, dtype=x.dtype) * (gain ** (f.ndim / 2))
            if not flip_filter:
                w = w.flip(list(range(w.ndim)))
            w = w.contiguous()
        geom = tuple(int(v) for v in (*up, *down, *padding))
        return _Upfirdn2d.apply(x, w, geom, self.ext)
