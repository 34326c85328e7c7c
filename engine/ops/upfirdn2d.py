"""Upsample, FIR-filter, downsample: the resampling primitive of StyleGAN2.

upfirdn2d(x, f, up, down, padding) = zero-insertion upsampling by `up`, padding (negative values crop),
convolution with the FIR filter f, then keeping every `down`-th pixel.
"""

from engine.ops import dispatch
from engine.ops.reference import setup_filter  # noqa: F401  (part of this op's interface)
from engine.ops.reference import upfirdn2d_ref as _upfirdn2d_ref


def _pair(v, what):
    if isinstance(v, int):
        return v, v
    v = [int(t) for t in v]
    if len(v) != 2:
        raise ValueError(f"{what} must be an int or [x, y], got {v}")
    return v[0], v[1]


def parse_padding(padding):
    """int | [px, py] | [x0, x1, y0, y1] -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    p = [int(t) for t in padding]
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p[0], p[1], p[2], p[3]
    raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {p}")


def filter_size(f):
    """(width, height) of a filter; (1, 1) for None."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[1], f.shape[0]


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """x: [N, C, H, W]; f: [fh, fw] or separable [k] or None (identity).

    up, down: int or [x, y]; padding: int, [x, y] or [x0, x1, y0, y1] on the upsampled image.
    flip_filter: correlate instead of convolve. gain: overall scale of the filter.
    Output [N, C, (H*upy + py0 + py1 - fh) // downy + 1, (W*upx + px0 + px1 - fw) // downx + 1].
    """
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    if min(upx, upy, downx, downy) < 1:
        raise ValueError("up and down must be >= 1")
    kernel = dispatch.compiled("upfirdn2d", x, resample=max(upx, upy, downx, downy) > 1)
    if kernel is not None:
        return kernel.upfirdn2d(x, f, up=(upx, upy), down=(downx, downy), padding=(px0, px1, py0, py1),
                                flip_filter=flip_filter, gain=gain)
    return _upfirdn2d_ref(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain)


def filter2d(x, f, padding=0, flip_filter=False, gain=1):
    """Filter x [N, C, H, W] with f, keeping the size (for zero extra padding)."""
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1):
    """[N, C, H, W] -> [N, C, H*up, W*up] (for zero extra padding); gain up**2 keeps the mean."""
    upx, upy = _pair(up, "up")
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1):
    """[N, C, H, W] -> [N, C, H//down, W//down] (for zero extra padding)."""
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain)
