"""The reference ops in plain torch: bias + activation and upfirdn2d, with their filter and activation tables.

They live apart from the public ops (bias_act.py, upfirdn2d.py), which choose between them and a compiled kernel
through dispatch.py, so that the kernels' checks (verify.py) and wrappers (fused.py) can use them without
importing the dispatcher that imports them.

bias_act_ref(x, b, dim, spec, alpha, gain, clamp) and upfirdn2d_ref(x, f, upx, upy, downx, downy, px0, px1, py0,
py1, flip_filter, gain) take the arguments already parsed by bias_act.bias_act and upfirdn2d.upfirdn2d.
"""

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Activation:
    func: Callable        # (x, alpha) -> y
    def_alpha: float      # default slope parameter (lrelu only)
    def_gain: float       # keeps the output's second moment near 1 for unit-variance input


def _lrelu(x, alpha):
    return F.leaky_relu(x, alpha)


def _swish(x, alpha):
    return torch.sigmoid(x) * x


activation_funcs = {
    "linear": Activation(lambda x, a: x, 0.0, 1.0),
    "relu": Activation(lambda x, a: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": Activation(_lrelu, 0.2, math.sqrt(2)),
    "tanh": Activation(lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": Activation(lambda x, a: torch.sigmoid(x), 0.0, 1.0),
    "elu": Activation(lambda x, a: F.elu(x), 0.0, 1.0),
    "selu": Activation(lambda x, a: F.selu(x), 0.0, 1.0),
    "softplus": Activation(lambda x, a: F.softplus(x), 0.0, 1.0),
    "swish": Activation(_swish, 0.0, math.sqrt(2)),
}


def bias_act_ref(x, b, dim, spec, alpha, gain, clamp):
    # Without autograd the intermediate results are private, so the in-place forms save copies.
    inplace = not (torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad)))
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        b = b.to(x.dtype).reshape(shape)
        x = x + b
    elif inplace and spec.func is _lrelu:
        x = x.clone()  # never modify the caller's tensor
    if inplace and spec.func is _lrelu:
        F.leaky_relu_(x, alpha)
        if gain != 1:
            x.mul_(gain)
        if clamp >= 0:
            x.clamp_(-clamp, clamp)
        return x
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


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


def upfirdn2d_ref(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain):
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
