"""Compiled CUDA ops (extensions/*.cu) against the reference: built, checked forward / backward / double backward,
and the dispatch's own check (engine/ops/verify.py) in its CUDA form: a child process per op and dtype, which
passes sound kernels in every dtype and catches wrong ones, a device-side assert included, without touching the
CUDA context of the process that asked.

Skipped where there is no CUDA device. The first run builds the CUDA kernels (nvcc) into the machine cache.
"""

import math
import zlib

import pytest
import torch

from engine.ops import build, dispatch, verify
from engine.ops.bias_act import _bias_act_ref, activation_funcs
from engine.ops.upfirdn2d import _upfirdn2d_ref, setup_filter, upfirdn2d
from engine.ops.bias_act import bias_act

import test_extensions as cpu_tests  # shared helpers (inputs, reference comparisons)
import test_ops_verify

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
    gen = torch.Generator().manual_seed(zlib.crc32(f"{act} {dtype} cuda".encode()))
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


# ------------------------------------------------------------------------------- the dispatch's check on CUDA

@pytest.fixture
def cuda_cache(ka, ku, tmp_path, monkeypatch):
    folders = {name: build.build_dir(name, DEV) for name in dispatch.KERNEL_OPS}
    return test_ops_verify.use_private_cache(monkeypatch, tmp_path / "cache", DEV, folders)


def test_cuda_kernels_pass_their_check_in_every_dtype(cuda_cache):
    for name in dispatch.KERNEL_OPS:
        k = dispatch._kernel(name, DEV)
        for dtype in ("float16", "bfloat16", "float32", "float64"):
            before = verify.checks_run
            v, fresh = verify.ensure(name, DEV, dtype, k)
            assert fresh and verify.checks_run == before  # checked in a child process, not here
            assert v["ok"], f"{name} {dtype}: {verify.describe(v)}"
            print(f"{name} cuda {dtype}: {verify.describe(v)}, {v['seconds']:.2f} s in the child")
            assert verify.ensure(name, DEV, dtype, k) == (v, False)  # stored beside the build


def test_cuda_wrong_kernels_are_caught_and_the_context_survives(cuda_cache, monkeypatch, capsys):
    monkeypatch.setenv("STUDIO_OPS_FAULT", "bias_act=device_assert,upfirdn2d=perturb")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 16, 8, 8, generator=gen).to(DEV, memory_format=torch.channels_last)
    b = torch.randn(16, generator=gen).to(DEV)
    f = setup_filter([1, 3, 3, 1], device=DEV)
    capsys.readouterr()
    for dt in (torch.float16, torch.float32):
        y = bias_act(x.to(dt), b.to(dt), act="lrelu", clamp=256.0)
        u = upfirdn2d(x.to(dt), f, up=2, padding=[2, 1, 2, 1], gain=4)
        assert torch.equal(y, _bias_act_ref(x.to(dt), b.to(dt), 1, activation_funcs["lrelu"], 0.2, math.sqrt(2),
                                            256.0))
        assert torch.equal(u, _upfirdn2d_ref(x.to(dt), f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4))
    torch.cuda.synchronize()  # the device-side assert happened in the child: this process's context is clean
    assert float(torch.ones(3, device=DEV).sum()) == 3.0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 4, lines  # one per op and dtype
    for op in ("bias_act", "upfirdn2d"):
        for dt in ("float16", "float32"):
            assert any(ln.startswith(f"studio: compiled {op} (CUDA) failed its check on cuda {dt}: ") for ln in lines)
    states = {(r["op"], r["dtype"]): r["state"] for r in dispatch.op_status(DEV)}
    assert states[("bias_act", "float16")] == states[("upfirdn2d", "float32")] == "failed"
    assert states[("bias_act", "bfloat16")] == "unchecked"
