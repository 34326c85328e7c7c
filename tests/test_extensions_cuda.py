"""Compiled CUDA ops (extensions/*.cu) against the reference: built, checked forward / backward / double backward.

Skipped where there is no CUDA device. The first run builds the CUDA kernels (nvcc) into the machine cache.
"""

import math

import pytest
import torch

from engine.ops import dispatch
from engine.ops.bias_act import _bias_act_ref, activation_funcs
from engine.ops.upfirdn2d import _upfirdn2d_ref, setup_filter

import test_extensions as cpu_tests  # shared helpers (inputs, reference comparisons)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

DEV = "cuda"


@pytest.fixture(scope="module")
def ka():
    k = dispatch._kernel("bias_act", DEV)
    assert k is not None, f"the CUDA bias_act kernel did not build: {dispatch._failures.get(('bias_act', DEV))}"
    return k


@pytest.fixture(scope="module")
def ku():
    k = dispatch._kernel("upfirdn2d", DEV)
    assert k is not None, f"the CUDA upfirdn2d kernel did not build: {dispatch._failures.get(('upfirdn2d', DEV))}"
    return k


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act", sorted(activation_funcs))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_act_cuda_matches_reference(ka, act, dtype):
    gen = torch.Generator().manual_seed(hash((act, str(dtype), "cuda")) % 2**31)
    spec = activation_funcs[act]
    for kind in ("nchw", "channels_last", "strided", "sliced", "fc", "last_dim"):
        for clamp, with_bias in ((-1.0, True), (0.7, True), (-1.0, False)):
            x, dim = cpu_tests.make_x(kind, dtype, gen)
            x = (x * 1.5).to(DEV)
            b = torch.randn(x.shape[dim], dtype=dtype, generator=gen).to(DEV) if with_bias else None
            dy = torch.randn(x.shape, dtype=dtype, generator=gen).to(DEV)
            r = torch.randn(x.shape, dtype=dtype, generator=gen).to(DEV)
            a, g = float(spec.def_alpha), float(spec.def_gain)
            got = cpu_tests.run_bias_act(lambda x_, b_, d: ka.bias_act(x_, b_, d, act, a, g, clamp), x, b, dim, dy, r)
            want = cpu_tests.run_bias_act(lambda x_, b_, d: _bias_act_ref(x_, b_, d, spec, a, g, clamp),
                                          x, b, dim, dy, r)
            for u, v in zip(got, want):
                assert u.device.type == DEV
                torch.testing.assert_close(u, v, **tol(dtype), msg=lambda m: f"{act} {kind} clamp={clamp}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bias_act_cuda_half(ka, dtype):
    x = torch.randn(4, 16, 9, 9, device=DEV).to(dtype)
    b = torch.randn(16, device=DEV).to(dtype)
    y = ka.bias_act(x, b, 1, "lrelu", 0.2, math.sqrt(2), 256.0)
    want = _bias_act_ref(x.float(), b.float(), 1, activation_funcs["lrelu"], 0.2, math.sqrt(2), 256.0)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=2e-2)


def test_bias_act_cuda_gradcheck(ka):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=DEV)
    x = (x + 0.2 * torch.sign(x)).requires_grad_(True)
    b = torch.zeros(3, dtype=torch.float64, device=DEV, requires_grad=True)
    for act in ("lrelu", "swish", "tanh"):
        spec = activation_funcs[act]

        def fn(x_, b_):
            return ka.bias_act(x_, b_, 1, act, spec.def_alpha, spec.def_gain, 50.0)

        assert torch.autograd.gradcheck(fn, (x, b))
        assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("fname", sorted(cpu_tests.FILTERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upfirdn2d_cuda_matches_reference(ku, fname, dtype):
    gen = torch.Generator().manual_seed(13)
    f = cpu_tests.FILTERS[fname](dtype)
    f = None if f is None else f.to(DEV)
    for up, down, pad in cpu_tests.GEOMETRIES:
        for layout in ("nchw", "channels_last", "sliced"):
            for flip, gain in ((False, 1.0), (True, 2.5)):
                x = torch.randn(2, 3, 9, 7, dtype=dtype, generator=gen)
                if layout == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                elif layout == "sliced":
                    x = torch.randn(2, 3, 9, 14, dtype=dtype, generator=gen)[..., ::2]
                x = x.to(DEV)
                fh, fw = (1, 1) if f is None else (f.shape[0], f.shape[-1])
                out_h = (x.shape[2] * up[1] + pad[2] + pad[3] - fh) // down[1] + 1
                out_w = (x.shape[3] * up[0] + pad[0] + pad[1] - fw) // down[0] + 1
                if out_h <= 0 or out_w <= 0:
                    continue
                dy = torch.randn(x.shape[0], x.shape[1], out_h, out_w, dtype=dtype, generator=gen).to(DEV)
                r = torch.randn(x.shape, dtype=dtype, generator=gen).to(DEV)
                got = cpu_tests.run_up(lambda t: ku.upfirdn2d(t, f, up, down, pad, flip, gain), x, dy, r)
                want = cpu_tests.run_up(lambda t: _upfirdn2d_ref(t, f, *up, *down, *pad, flip, gain), x, dy, r)
                for u, v in zip(got, want):
                    torch.testing.assert_close(u, v, **tol(dtype),
                                               msg=lambda m: f"{fname} up={up} down={down} pad={pad} {layout}: {m}")


def test_upfirdn2d_cuda_half_and_gradcheck(ku):
    f = setup_filter([1, 3, 3, 1], device=DEV)
    x = torch.randn(2, 8, 16, 16, device=DEV)
    y = ku.upfirdn2d(x.half(), f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4)
    want = _upfirdn2d_ref(x, f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2)
    xd = torch.randn(1, 2, 5, 6, dtype=torch.float64, device=DEV, requires_grad=True)
    fd = f.double()

    def fn(t):
        return ku.upfirdn2d(t, fd, (1, 1), (2, 2), (1, 1, 1, 1), False, 1)

    assert torch.autograd.gradcheck(fn, (xd,))
    assert torch.autograd.gradgradcheck(fn, (xd,))


def test_cuda_dispatch_and_r1(monkeypatch, ka, ku):
    monkeypatch.setenv("STUDIO_OPS", "auto")
    small = torch.randn(2, 8, device=DEV)
    assert dispatch.compiled("bias_act", small) is ka  # no size threshold on CUDA
    assert dispatch.compiled("upfirdn2d", small) is ku
    assert dispatch.op_paths(device=DEV)["bias_act"] == "compiled CUDA kernel"
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64, generator=gen).to(DEV)
    b = torch.randn(4, dtype=torch.float64, generator=gen).to(DEV)
    w = (torch.randn(3, 4, 3, 3, dtype=torch.float64, generator=gen) * 0.3).to(DEV)
    f = setup_filter([1, 3, 3, 1], device=DEV).double()
    monkeypatch.setenv("STUDIO_OPS", "ref")
    want = cpu_tests.r1_step(x, b, w, f)
    monkeypatch.setenv("STUDIO_OPS", "compiled")
    got = cpu_tests.r1_step(x, b, w, f)
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9)
