"""Bias + activation + gain + clamp in one call, as StyleGAN2 uses them after every layer."""

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from engine.ops import dispatch


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


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """y = clamp(act(x + b) * gain, -clamp, clamp).

    x: any shape, e.g. [N, C, H, W]; b: [x.shape[dim]] or None; act: a key of `activation_funcs`;
    alpha: lrelu slope (default 0.2); gain: default the activation's def_gain; clamp: None = no clamp.
    Differentiable twice (plain torch ops).
    """
    if act not in activation_funcs:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(activation_funcs)}")
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp) if clamp is not None else -1.0

    kernel = dispatch.compiled("bias_act", x, linear=(act == "linear" and clamp < 0))
    if kernel is not None:
        return kernel.bias_act(x, b, dim, act, alpha, gain, clamp)  # clamp < 0: no clamping
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _bias_act_ref(x, b, dim, spec, alpha, gain, clamp):
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
