"""2-D convolution combined with upsampling/downsampling through a FIR filter.

Semantics (the generic path): upfirdn2d(x, f, up, padding, gain=up**2) -> conv2d(w) -> upfirdn2d(f, down).
The fast paths below compute the same thing with fewer operations.
"""

import torch.nn.functional as F

from engine.ops import upfirdn2d as _up
from engine.ops.upfirdn2d import filter_size, parse_padding


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    # F.conv2d correlates; flip_weight=False asks for a true convolution.
    if not flip_weight:
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def _transpose_weight(w, groups):
    """[O, I/g, kh, kw] -> [I, O/g, kh, kw], the layout conv_transpose2d expects."""
    o, ig, kh, kw = w.shape
    if groups == 1:
        return w.transpose(0, 1)
    w = w.reshape(groups, o // groups, ig, kh, kw).transpose(1, 2)
    return w.reshape(groups * ig, o // groups, kh, kw)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """x: [N, I, H, W]; w: [O, I/groups, kh, kw]; f: FIR filter from setup_filter (or None).

    up, down: integer factors (same in x and y); padding: int, [x, y] or [x0, x1, y0, y1], given at
    the resolution the convolution runs at. Returns [N, O, H', W'].
    """
    if not (isinstance(up, int) and isinstance(down, int) and up >= 1 and down >= 1):
        raise ValueError(f"up and down must be positive integers, got {up}, {down}")
    o, ig, kh, kw = w.shape
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)

    # The filter's own padding, so that resampling keeps the image centred.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 kernel: resampling and the convolution commute, so do the convolution at the lower resolution.
    if kh == 1 and kw == 1 and down > 1 and up == 1:
        x = _up.upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kh == 1 and kw == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return _up.upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)

    # Downsampling only: filter at full resolution, then a strided convolution.
    if down > 1 and up == 1:
        x = _up.upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling: a strided transposed convolution does the zero insertion and the convolution at once
    # (it convolves, hence the inverted flip), then the filter runs on its output.
    if up > 1:
        w = _transpose_weight(w, groups)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        # conv_transpose2d's padding crops symmetrically; the rest goes to the filter step.
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = _up.upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                          flip_filter=flip_filter)
        if down > 1:
            x = _up.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling and symmetric padding: one ordinary convolution.
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Anything else (asymmetric or negative padding): pad/crop, then convolve.
    x = _up.upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return _conv(x, w, groups=groups, flip_weight=flip_weight)
