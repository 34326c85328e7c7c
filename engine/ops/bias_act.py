"""Bias + activation + gain + clamp in one call, as StyleGAN2 uses them after every layer."""

from engine.ops import dispatch
from engine.ops.reference import Activation, activation_funcs  # noqa: F401  (part of this op's interface)
from engine.ops.reference import bias_act_ref as _bias_act_ref


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
