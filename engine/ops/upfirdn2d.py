"""Upsample, FIR-filter, downsample: the resampling primitive of StyleGAN2.

upfirdn2d(x, f, up, down, padding) = zero-insertion upsampling by `up`, padding (negative values crop),
convolution with the FIR filter f, then keeping every `down`-th pixel.
"""

import torch
import torch.nn.functional as F

from engine.ops import dispatch


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


def setup_filter(f, device=torch.device("cpu"), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn a list/array into a filter tensor.

    A 1-D list becomes the 2-D outer product [fh, fw] unless `separable`; by default only long filters
    (8+ taps) are kept separable. normalize: divide by the sum. gain: total gain of the 2-D filter.
    """
    # Made on the CPU even inside a `with torch.device(...)` block: a network laid out on the meta device (to be
    # measured before it is built) keeps its few filter taps real, and meta-device outer products are slow to set up.
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32, device="cpu")
    if f.ndim not in (0, 1, 2) or f.numel() == 0:
        raise ValueError(f"filter must be a non-empty scalar, 1-D or 2-D array, got shape {list(f.shape)}")
    if f.ndim == 0:
        f = f.reshape(1)
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError("a 2-D filter cannot be separable")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


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


def _upfirdn2d_ref(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain):
    identity = f is None
    if identity:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape

    # Zero insertion: each pixel followed by up-1 zeros along each axis.
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    # Positive padding pads with zeros, negative padding crops. Symmetric padding of a 2-D filter is left to
    # the convolution itself, which saves writing a padded copy.
    conv_pad = 0
    if not identity and f.ndim == 2 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        conv_pad = (py0, px0)
    else:
        if max(px0, px1, py0, py1) > 0:
            x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
        if min(px0, px1, py0, py1) < 0:
            x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    if identity:
        x = x * gain if gain != 1 else x
        return x[:, :, ::downy, ::downx] if (downx > 1 or downy > 1) else x

    # conv2d correlates; a true convolution needs the flipped filter.
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), padding=conv_pad, groups=c)
    else:
        k = f.shape[0]
        x = F.conv2d(x, f.reshape(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
        x = F.conv2d(x, f.reshape(1, 1, k, 1).expand(c, 1, k, 1), groups=c)

    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    return x


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
