"""engine.ops against direct float64 computations, plus first and second derivatives."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.ops.bias_act import bias_act, activation_funcs
from engine.ops.upfirdn2d import setup_filter, upfirdn2d, filter2d, upsample2d, downsample2d
from engine.ops.conv2d_resample import conv2d_resample
from engine.ops.grid_sample import grid_sample, grid_sample_reference
from engine.ops.fma import fma

D64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- bias_act

FORMULAS = {
    "linear": (lambda v: v, 1.0),
    "relu": (lambda v: np.maximum(v, 0), math.sqrt(2)),
    "lrelu": (lambda v: np.where(v >= 0, v, 0.2 * v), math.sqrt(2)),
    "tanh": (np.tanh, 1.0),
    "sigmoid": (lambda v: 1 / (1 + np.exp(-v)), 1.0),
    "elu": (lambda v: np.where(v >= 0, v, np.exp(v) - 1), 1.0),
    "selu": (lambda v: 1.0507009873554805 * np.where(v >= 0, v, 1.6732632423543772 * (np.exp(v) - 1)), 1.0),
    "softplus": (lambda v: np.log1p(np.exp(v)), 1.0),
    "swish": (lambda v: v / (1 + np.exp(-v)), math.sqrt(2)),
}


def test_activation_table_is_complete():
    assert set(activation_funcs) == set(FORMULAS)
    for name, (_, gain) in FORMULAS.items():
        assert activation_funcs[name].def_gain == pytest.approx(gain)


@pytest.mark.parametrize("act", sorted(FORMULAS))
def test_bias_act_matches_formula(act):
    x = torch.randn(3, 4, 5, 2, dtype=D64, generator=_gen(1)) * 2
    b = torch.randn(4, dtype=D64, generator=_gen(2))
    func, gain = FORMULAS[act]
    ref = func((x + b.reshape(1, 4, 1, 1)).numpy()) * gain
    out = bias_act(x, b, act=act)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)
    # explicit gain and clamp, bias along another dimension
    b2 = torch.randn(5, dtype=D64, generator=_gen(3))
    ref2 = np.clip(func((x + b2.reshape(1, 1, 5, 1)).numpy()) * 0.7, -0.5, 0.5)
    out2 = bias_act(x, b2, dim=2, act=act, gain=0.7, clamp=0.5)
    np.testing.assert_allclose(out2.numpy(), ref2, rtol=1e-12, atol=1e-12)


def test_bias_act_lrelu_alpha_and_no_bias_keeps_input():
    x = torch.randn(2, 3, 4, dtype=D64, generator=_gen(4))
    before = x.clone()
    out = bias_act(x, None, act="lrelu", alpha=0.1, gain=1)
    np.testing.assert_allclose(out.numpy(), np.where(before >= 0, before, 0.1 * before), rtol=0, atol=1e-15)
    assert torch.equal(x, before)  # the in-place fast path must not touch the input
    with pytest.raises(ValueError):
        bias_act(x, None, act="nope")


@pytest.mark.parametrize("act", sorted(FORMULAS))
def test_bias_act_gradgradcheck(act):
    # Values away from 0 so relu-type kinks do not disturb the finite differences.
    x = torch.randn(2, 3, 3, dtype=D64, generator=_gen(5))
    x = (x + 0.3 * x.sign()).requires_grad_(True)
    b = torch.tensor([0.01, -0.02, 0.03], dtype=D64, requires_grad=True)
    fn = lambda x, b: bias_act(x, b, act=act, clamp=5.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


# ---------------------------------------------------------------- upfirdn2d

def _upfirdn_loops(x, f, up, down, pad, flip_filter=False, gain=1.0):
    """Direct definition: zero-insert, pad/crop, true 2-D convolution (valid), subsample."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * upy, w * upx))
    u[:, :, ::upy, ::upx] = x
    big = np.zeros((n, c, h * upy + abs(py0) + abs(py1), w * upx + abs(px0) + abs(px1)))
    big[:, :, abs(py0): abs(py0) + h * upy, abs(px0): abs(px0) + w * upx] = u
    y0 = abs(py0) - py0   # crop amounts for negative padding
    x0 = abs(px0) - px0
    y1 = big.shape[2] - (abs(py1) - py1)
    x1 = big.shape[3] - (abs(px1) - px1)
    padded = big[:, :, y0:y1, x0:x1]
    f = np.asarray(f, dtype=np.float64) * gain
    fh, fw = f.shape
    oh = padded.shape[2] - fh + 1
    ow = padded.shape[3] - fw + 1
    out = np.zeros((n, c, oh, ow))
    for yy in range(oh):
        for xx in range(ow):
            for i in range(fh):
                for j in range(fw):
                    tap = f[i, j] if flip_filter else f[fh - 1 - i, fw - 1 - j]
                    out[:, :, yy, xx] += padded[:, :, yy + i, xx + j] * tap
    return out[:, :, ::downy, ::downx]


@pytest.mark.parametrize("up,down,pad,flip", [
    ((1, 1), (1, 1), (1, 2, 0, 1), False),
    ((2, 2), (1, 1), (2, 1, 2, 1), False),
    ((2, 1), (1, 2), (1, 1, 2, 2), True),
    ((1, 1), (2, 2), (1, 1, 1, 1), False),
    ((3, 3), (2, 2), (0, 0, 1, 1), False),
    ((1, 1), (1, 1), (-1, 2, 1, -1), True),
])
def test_upfirdn2d_matches_loops(up, down, pad, flip):
    x = torch.randn(2, 2, 5, 6, dtype=D64, generator=_gen(6))
    f = torch.tensor([[1, 2, 0.5], [0.3, -1, 2], [1.5, 0.2, 1], [0.1, 0.4, -0.7]], dtype=D64)  # asymmetric 4x3
    out = upfirdn2d(x, f, up=list(up), down=list(down), padding=list(pad), flip_filter=flip, gain=1.5)
    ref = _upfirdn_loops(x.numpy(), f.numpy(), up, down, pad, flip_filter=flip, gain=1.5 ** (2 / 2))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("up,down,pad", [((2, 2), (1, 1), (1, 0, -1, 2)), ((1, 1), (2, 3), (2, 2, 0, 0))])
def test_upfirdn2d_without_filter(up, down, pad):
    x = torch.randn(1, 2, 4, 5, dtype=D64, generator=_gen(17))
    out = upfirdn2d(x, None, up=list(up), down=list(down), padding=list(pad), gain=2)
    ref = _upfirdn_loops(x.numpy(), np.ones((1, 1)), up, down, pad, gain=2.0)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_padding_forms_and_separable_filter():
    x = torch.randn(1, 3, 6, 6, dtype=D64, generator=_gen(7))
    f2 = setup_filter([1, 3, 3, 1]).to(D64)
    assert f2.shape == (4, 4) and float(f2.sum()) == pytest.approx(1.0)
    f1 = setup_filter([1, 3, 3, 1], separable=True).to(D64)
    assert f1.shape == (4,)
    a = upfirdn2d(x, f2, up=2, padding=2)
    b = upfirdn2d(x, f1, up=2, padding=[2, 2])
    c = upfirdn2d(x, f2, up=2, padding=[2, 2, 2, 2])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    # long 1-D filters stay separable by default; gain scales the whole 2-D response
    assert setup_filter(list(range(1, 9))).ndim == 1
    g = setup_filter([1, 2, 1], gain=4)
    assert float(g.sum()) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        upfirdn2d(x, f2, padding=[1, 2, 3])


def test_resampling_helpers_keep_size_and_mean():
    f = setup_filter([1, 3, 3, 1]).to(D64)
    const = torch.full([1, 2, 8, 8], 0.75, dtype=D64)
    up = upsample2d(const, f)
    down = downsample2d(const, f)
    same = filter2d(const, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4) and same.shape == (1, 2, 8, 8)
    # away from the zero-padded border a constant image stays constant (filter sums to 1, gain up**2)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 0.75))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 0.75))
    torch.testing.assert_close(same[..., 2:-2, 2:-2], torch.full_like(same[..., 2:-2, 2:-2], 0.75))


def test_upfirdn2d_gradgradcheck():
    f = setup_filter([1, 3, 3, 1]).to(D64)
    x = torch.randn(1, 2, 4, 4, dtype=D64, generator=_gen(8), requires_grad=True)
    for kw in (dict(up=2, padding=[2, 1, 2, 1]), dict(down=2, padding=1), dict(up=2, down=2, padding=1)):
        fn = lambda x: upfirdn2d(x, f, **kw)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


# ---------------------------------------------------------------- conv2d_resample

def _conv_resample_ref(x, w, f, up, down, padding, groups, flip_weight):
    """Generic definition: pad + upsample through f (gain up^2), plain conv, then filter + subsample."""
    fw, fh = f.shape[1], f.shape[0]
    p = [padding] * 4
    if up > 1:
        p = [p[0] + (fw + up - 1) // 2, p[1] + (fw - up) // 2, p[2] + (fh + up - 1) // 2, p[3] + (fh - up) // 2]
    if down > 1:
        p = [p[0] + (fw - down + 1) // 2, p[1] + (fw - down) // 2,
             p[2] + (fh - down + 1) // 2, p[3] + (fh - down) // 2]
    x = upfirdn2d(x, f if up > 1 else None, up=up, padding=p, gain=up ** 2)
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        x = upfirdn2d(x, f, down=down)
    return x


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("flip_weight", [True, False])
def test_conv2d_resample_matches_generic(k, up, down, groups, flip_weight):
    f = setup_filter([1, 3, 3, 1]).to(D64)
    x = torch.randn(2, 4, 6, 6, dtype=D64, generator=_gen(9))
    w = torch.randn(6, 4 // groups, k, k, dtype=D64, generator=_gen(10))
    out = conv2d_resample(x, w, f=f, up=up, down=down, padding=k // 2, groups=groups, flip_weight=flip_weight)
    ref = _conv_resample_ref(x, w, f, up, down, k // 2, groups, flip_weight)
    assert out.shape == ref.shape == (2, 6, 6 * up // down, 6 * up // down)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_conv2d_resample_asymmetric_padding_and_grads():
    x = torch.randn(1, 2, 5, 5, dtype=D64, generator=_gen(11), requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=D64, generator=_gen(12), requires_grad=True)
    out = conv2d_resample(x, w, padding=[0, 1, 1, 2])
    ref = F.conv2d(F.pad(x, [0, 1, 1, 2]), w)
    torch.testing.assert_close(out, ref)
    f = setup_filter([1, 3, 3, 1]).to(D64)
    for up, down in ((2, 1), (1, 2)):
        fn = lambda x, w: conv2d_resample(x, w, f=f, up=up, down=down, padding=1)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w))
        assert torch.autograd.gradgradcheck(fn, (x, w))


# ---------------------------------------------------------------- grid_sample, fma

def _bilinear_loops(img, gx, gy):
    c, h, w = img.shape
    ix = ((gx + 1) * w - 1) / 2
    iy = ((gy + 1) * h - 1) / 2
    x0, y0 = math.floor(ix), math.floor(iy)
    out = np.zeros(c)
    for yy, wy in ((y0, 1 - (iy - y0)), (y0 + 1, iy - y0)):
        for xx, wx in ((x0, 1 - (ix - x0)), (x0 + 1, ix - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += img[:, yy, xx] * wx * wy
    return out


def test_grid_sample_matches_direct_bilinear():
    x = torch.randn(2, 3, 5, 6, dtype=D64, generator=_gen(13))
    g = torch.rand(2, 4, 3, 2, dtype=D64, generator=_gen(14)) * 2.6 - 1.3   # some points fall outside
    out = grid_sample(x, g)
    ref_impl = grid_sample_reference(x, g)
    for n in range(2):
        for i in range(4):
            for j in range(3):
                ref = _bilinear_loops(x[n].numpy(), float(g[n, i, j, 0]), float(g[n, i, j, 1]))
                np.testing.assert_allclose(out[n, :, i, j].numpy(), ref, atol=1e-12)
                np.testing.assert_allclose(ref_impl[n, :, i, j].numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("fn", [grid_sample, grid_sample_reference])
def test_grid_sample_gradgradcheck(fn):
    x = torch.randn(1, 2, 4, 4, dtype=D64, generator=_gen(15), requires_grad=True)
    g = (torch.rand(1, 3, 3, 2, dtype=D64, generator=_gen(16)) * 1.8 - 0.9).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, g))
    assert torch.autograd.gradgradcheck(fn, (x, g))


def test_fma():
    a = torch.randn(2, 3, 1, 1, dtype=D64, requires_grad=True)
    b = torch.randn(2, 3, 4, 4, dtype=D64, requires_grad=True)
    c = torch.randn(4, 4, dtype=D64, requires_grad=True)
    torch.testing.assert_close(fma(a, b, c), a * b + c)
    assert torch.autograd.gradgradcheck(fma, (a, b, c))
