"""Building blocks of StyleGAN2 with equalised learning rate.

Weights are stored as unit-variance samples and scaled at run time (weight_gain), so every layer
learns at the same speed whatever its fan-in. Parameter and buffer names follow NVIDIA's
StyleGAN2-ADA so state dicts move between the two unchanged.
"""


import numpy as np
import torch

from engine.ops import bias_act as _ba
from engine.ops import upfirdn2d as _up
from engine.ops.bias_act import bias_act
from engine.ops.conv2d_resample import conv2d_resample
from engine.ops.fma import fma
from engine.nets.misc import assert_shape


def _half_on_cuda(use_fp16, force_fp32, device):
    """float16 only where asked and on CUDA; the CPU always computes in float32."""
    if use_fp16 and not force_fp32 and device.type == "cuda":
        return torch.float16
    return torch.float32


# oneDNN's CPU convolutions work in NHWC; NCHW activations are reordered on every call (the generator's cost of
# that: docs/BENCHMARKS.md, "Speed on the CPU against NVIDIA's code").
CPU_CHANNELS_LAST = True


def _memory_format(device, dtype, channels_last):
    """Layout for a block's activations: NHWC on the CPU, and on CUDA where NVIDIA's fp16_channels_last asks."""
    if device.type == "cpu":
        return torch.channels_last if CPU_CHANNELS_LAST else torch.contiguous_format
    if channels_last and dtype == torch.float16:
        return torch.channels_last
    return torch.contiguous_format


class FullyConnectedLayer(torch.nn.Module):
    """y = act(x @ (weight * weight_gain).T + bias * lr_multiplier). x: [N, in] -> [N, out]."""

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1,
                 bias_init=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        # In place: the same values, and on the meta device (networks measured before they are built) an in-place
        # division needs none of the Python decompositions an out-of-place one sets up on first use.
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]).div_(lr_multiplier))
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return bias_act(x, b, act=self.activation)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(torch.nn.Module):
    """Equalised-lr convolution with optional up/downsampling. x: [N, I, H, W] -> [N, O, H*up/down, W*up/down].

    trainable=False stores weight and bias as buffers (frozen discriminator layers keep their names).
    """

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _up.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = _ba.activation_funcs[activation].def_gain
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        b = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(b) if b is not None else None
        else:
            self.register_buffer("weight", weight)
            if b is not None:
                self.register_buffer("bias", b)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        # NVIDIA's convention: the upsampling conv is a true convolution, the others correlate.
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")


def modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None,
                     demodulate=True, flip_weight=True, fused_modconv=False):
    """StyleGAN2's modulated convolution.

    x: [N, I, H, W]; weight: [O, I, kh, kw]; styles: [N, I]; noise: broadcastable to the output or None.
    Per sample the weight is scaled by the styles along I and, with demodulate, each output channel is
    rescaled to unit norm: w'[n,o,i,k] = w[o,i,k] s[n,i] / sqrt(sum_ik (w[o,i,k] s[n,i])^2 + 1e-8).
    fused_modconv=False computes the same thing as (x * s) conv w, then * demod, which needs one ordinary
    batched convolution instead of N grouped ones (much faster on the CPU and in training).
    Returns [N, O, H', W'].
    """
    n = x.shape[0]
    o, i, kh, kw = weight.shape
    assert_shape(styles, [n, i], "styles")

    # float16 would overflow on w * s; both are pre-scaled (demodulation cancels any scale of w and s).
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / np.sqrt(i * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    dcoefs = None
    if demodulate:
        # sum_ik (w s)^2 = sum_i s_i^2 * (sum_k w_oik^2): a small matmul instead of an [N, O, I, k, k] tensor.
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate and noise is not None:
            return fma(x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1), noise.to(x.dtype))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        if noise is not None:
            return x + noise.to(x.dtype)
        return x

    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, i, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding, groups=n,
                        flip_weight=flip_weight)
    x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + noise + bias + activation.

    x: [N, I, H, W], w: [N, w_dim] -> [N, O, resolution, resolution].
    """

    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _up.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = _ba.activation_funcs[activation].def_gain
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="random", fused_modconv=False, gain=1):
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)
        if not fused_modconv and self._can_fold(x, w):
            return self._forward_folded(x, styles, noise_mode, gain)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) \
                * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)

    def _can_fold(self, x, w):
        """CPU inference with a positively homogeneous activation (act(g*y) = g*act(y) for g > 0)."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.activation not in ("lrelu", "relu", "linear"):
            return False
        return not torch.is_grad_enabled() or not any(
            t.requires_grad for t in (x, w, self.weight, self.bias, self.affine.weight))

    def _forward_folded(self, x, styles, noise_mode, gain):
        """Same result as forward(), in two passes over the output instead of four: demodulation, gain,
        noise and bias go into one multiply-add, then the activation runs in place."""
        n = x.shape[0]
        g = self.act_gain * gain
        dcoefs = (styles.square() @ self.weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]
        x = x * styles.reshape(n, -1, 1, 1)
        y = conv2d_resample(x, self.weight, f=self.resample_filter, up=self.up, padding=self.padding,
                            flip_weight=(self.up == 1))
        shift = self.bias.reshape(1, -1, 1, 1) * g                                            # [1, O, 1, 1]
        if self.use_noise and noise_mode == "const":
            shift = shift + (self.noise_const * (self.noise_strength * g))                    # [1, O, H, W]
        elif self.use_noise and noise_mode == "random":
            noise = torch.randn([n, 1, self.resolution, self.resolution], device=x.device)
            shift = shift + noise * (self.noise_strength * g)                                # [N, O, H, W]
        torch.addcmul(shift, y, (dcoefs * g).reshape(n, -1, 1, 1), out=y)
        if self.activation == "lrelu":
            torch.nn.functional.leaky_relu_(y, _ba.activation_funcs["lrelu"].def_alpha)
        elif self.activation == "relu":
            torch.relu_(y)
        if self.conv_clamp is not None:
            y.clamp_(-self.conv_clamp * gain, self.conv_clamp * gain)
        return y

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 conv without demodulation to image channels. x: [N, I, H, W] -> [N, C_img, H, W]."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w, fused_modconv=False):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self):
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class MinibatchStdLayer(torch.nn.Module):
    """Appends the per-group standard deviation of the features as extra channels.

    x: [N, C, H, W] -> [N, C + num_channels, H, W]. The batch is split into N/G groups of G = min(group_size, N)
    samples taken with stride N/G (sample k belongs to group k mod N/G); N must be divisible by G.
    """

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        f = self.num_channels
        if n % g != 0:
            raise ValueError(f"minibatch std: batch size {n} is not divisible by the group size {g}")
        if c % f != 0:
            raise ValueError(f"minibatch std: {c} channels are not divisible into {f} groups")
        y = x.reshape(g, -1, f, c // f, h, w)          # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)                       # variance over the group
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])                        # [n, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)    # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self):
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


__all__ = ["FullyConnectedLayer", "Conv2dLayer", "modulated_conv2d", "SynthesisLayer", "ToRGBLayer",
           "MinibatchStdLayer"]
