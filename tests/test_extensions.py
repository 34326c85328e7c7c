"""Compiled CPU ops (extensions/) against the plain-torch reference, the build machinery and the dispatch.

The kernels are built once per machine into the normal cache (~/.cache/stylegan-studio/extensions or
$STUDIO_CACHE) and reused by later runs; the first build takes about a minute on 2 cores.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest
import torch

from engine.ops import build, dispatch
from engine.ops.bias_act import _bias_act_ref, activation_funcs, bias_act
from engine.ops.upfirdn2d import _upfirdn2d_ref, setup_filter, upfirdn2d

ROOT = Path(__file__).resolve().parents[1]
HAVE_CXX = shutil.which(os.environ.get("CXX") or "c++") is not None

pytestmark = pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler on this machine: nothing to build")


def _seed_of(*parts):
    """A fixed seed per case (the same in every process, unlike hash() of a string)."""
    return zlib.crc32(" ".join(map(str, parts)).encode())


@pytest.fixture(scope="module")
def ka():
    k = dispatch._kernel("bias_act", "cpu")
    assert k is not None, f"the C++ bias_act kernel did not build: {dispatch._failures.get(('bias_act', 'cpu'))}"
    return k


@pytest.fixture(scope="module")
def ku():
    k = dispatch._kernel("upfirdn2d", "cpu")
    assert k is not None, f"the C++ upfirdn2d kernel did not build: {dispatch._failures.get(('upfirdn2d', 'cpu'))}"
    return k


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def grads_or_zero(out, inputs):
    """d out / d inputs, zeros where out does not depend on an input (or on nothing at all)."""
    if not out.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    gs = torch.autograd.grad(out, inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, inputs)]


# --------------------------------------------------------------------------------------------------- bias_act

def make_x(kind, dtype, gen):
    """(x, dim) in several shapes and memory layouts; all odd sizes."""
    if kind == "nchw":
        return torch.randn(2, 5, 7, 3, dtype=dtype, generator=gen), 1
    if kind == "channels_last":
        return torch.randn(2, 5, 7, 3, dtype=dtype, generator=gen).to(memory_format=torch.channels_last), 1
    if kind == "strided":  # a transposed view: dense but not contiguous
        return torch.randn(3, 7, 5, 2, dtype=dtype, generator=gen).permute(3, 2, 1, 0), 1
    if kind == "sliced":  # not dense: every other column
        return torch.randn(2, 5, 7, 6, dtype=dtype, generator=gen)[..., ::2], 1
    if kind == "fc":
        return torch.randn(9, 11, dtype=dtype, generator=gen), 1
    if kind == "last_dim":
        return torch.randn(3, 4, 5, dtype=dtype, generator=gen), -1
    raise ValueError(kind)


def run_bias_act(fn, x0, b0, dim, dy0, r0):
    """y, dx, db and the second-order gradients of (dx * r).sum() + db.sum() w.r.t. x, b, dy."""
    x = x0.detach().clone().requires_grad_(True)
    b = None if b0 is None else b0.detach().clone().requires_grad_(True)
    dy = dy0.detach().clone().requires_grad_(True)
    y = fn(x, b, dim)
    inputs = [x] + ([b] if b is not None else [])
    g = torch.autograd.grad(y, inputs, dy, create_graph=True)
    loss = (g[0] * r0).sum() + (g[1].sum() if b is not None else 0)
    second = grads_or_zero(loss, inputs + [dy])
    return [y] + list(g) + second


@pytest.mark.parametrize("act", sorted(activation_funcs))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_act_matches_reference(ka, act, dtype):
    gen = torch.Generator().manual_seed(_seed_of(act, dtype))
    spec = activation_funcs[act]
    for kind in ("nchw", "channels_last", "strided", "sliced", "fc", "last_dim"):
        for clamp, with_bias, alpha, gain in ((-1.0, True, None, None), (0.7, True, None, None),
                                              (-1.0, False, 0.1, 2.5), (1.3, True, 0.3, 0.5)):
            x, dim = make_x(kind, dtype, gen)
            x = x * 1.5
            b = torch.randn(x.shape[dim], dtype=dtype, generator=gen) if with_bias else None
            dy = torch.randn(x.shape, dtype=dtype, generator=gen)
            r = torch.randn(x.shape, dtype=dtype, generator=gen)
            a = float(spec.def_alpha if alpha is None else alpha)
            g = float(spec.def_gain if gain is None else gain)
            got = run_bias_act(lambda x_, b_, d: ka.bias_act(x_, b_, d, act, a, g, clamp), x, b, dim, dy, r)
            want = run_bias_act(lambda x_, b_, d: _bias_act_ref(x_, b_, d, spec, a, g, clamp), x, b, dim, dy, r)
            names = ["y", "dx"] + (["db"] if b is not None else []) + ["d2x"] + (["d2b"] if b is not None else []) \
                + ["d2dy"]
            for name, u, v in zip(names, got, want):
                assert u.shape == v.shape
                torch.testing.assert_close(u, v, **tol(dtype), msg=lambda m: f"{act} {kind} clamp={clamp} {name}: {m}")


@pytest.mark.parametrize("act", ["lrelu", "linear", "tanh", "swish", "elu", "softplus"])
def test_bias_act_gradcheck(ka, act):
    gen = torch.Generator().manual_seed(7)
    # Keep values away from the kinks (0 for relu-like, the clamp) so finite differences are valid.
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=gen)
    x = x + 0.2 * torch.sign(x)
    b = torch.zeros(3, dtype=torch.float64).requires_grad_(True)
    x.requires_grad_(True)
    spec = activation_funcs[act]

    def fn(x_, b_):
        return ka.bias_act(x_, b_, 1, act, spec.def_alpha, spec.def_gain, 50.0)

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_bias_act_keeps_layout_and_rejects_bad_bias(ka):
    x = torch.randn(2, 4, 5, 5).to(memory_format=torch.channels_last)
    y = ka.bias_act(x, torch.ones(4), 1, "lrelu", 0.2, math.sqrt(2), -1.0)
    assert y.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="b has shape"):
        ka.bias_act(x, torch.ones(5), 1, "lrelu", 0.2, 1.0, -1.0)
    # Half on the CPU is not a kernel dtype: the dispatch sends it to the reference.
    assert dispatch.compiled("bias_act", torch.zeros(1 << 17, dtype=torch.float16)) is None


# -------------------------------------------------------------------------------------------------- upfirdn2d

FILTERS = {
    "4tap_2d": lambda dt: setup_filter([1, 3, 3, 1]).to(dt),
    "4tap_sep": lambda dt: setup_filter([1, 3, 3, 1], separable=True).to(dt),
    "rand_3x5": lambda dt: torch.randn(3, 5, dtype=dt, generator=torch.Generator().manual_seed(3)),
    "none": lambda dt: None,
}

GEOMETRIES = [  # (up, down, padding)
    ((1, 1), (1, 1), (1, 1, 1, 1)),
    ((2, 2), (1, 1), (2, 1, 2, 1)),      # upsample2d
    ((1, 1), (2, 2), (1, 1, 1, 1)),      # downsample2d
    ((3, 2), (2, 3), (-1, 2, 3, -2)),    # uneven factors, crops
    ((2, 1), (1, 2), (0, 0, 0, 0)),
    ((1, 1), (1, 1), (-2, -1, 0, -3)),   # crop only
    ((4, 4), (4, 4), (5, 5, 5, 5)),
]


def run_up(fn, x0, dy0, r0):
    """y, dx, and d/d dy of (dx * r).sum() (upfirdn2d is linear: its x-Hessian is zero)."""
    x = x0.detach().clone().requires_grad_(True)
    dy = dy0.detach().clone().requires_grad_(True)
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    (d2,) = torch.autograd.grad((dx * r0).sum(), dy)
    return y, dx, d2


@pytest.mark.parametrize("fname", sorted(FILTERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upfirdn2d_matches_reference(ku, fname, dtype):
    gen = torch.Generator().manual_seed(11)
    f = FILTERS[fname](dtype)
    for up, down, pad in GEOMETRIES:
        # channels_last with 3 channels is reordered to planes and back; with 16 it is filtered as it lies.
        for layout in ("nchw", "channels_last", "channels_last16", "sliced"):
            for flip, gain in ((False, 1.0), (True, 2.5)):
                x = torch.randn(2, 3, 9, 7, dtype=dtype, generator=gen)
                if layout == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                elif layout == "channels_last16":
                    x = torch.randn(1, 16, 9, 7, dtype=dtype, generator=gen).to(memory_format=torch.channels_last)
                elif layout == "sliced":
                    x = torch.randn(2, 3, 9, 14, dtype=dtype, generator=gen)[..., ::2]
                fh, fw = (1, 1) if f is None else (f.shape[0], f.shape[-1])
                out_h = (x.shape[2] * up[1] + pad[2] + pad[3] - fh) // down[1] + 1
                out_w = (x.shape[3] * up[0] + pad[0] + pad[1] - fw) // down[0] + 1
                if out_h <= 0 or out_w <= 0:
                    continue
                dy = torch.randn(x.shape[0], x.shape[1], out_h, out_w, dtype=dtype, generator=gen)
                if layout.startswith("channels_last"):
                    dy = dy.to(memory_format=torch.channels_last)  # as the next layer's gradient arrives
                r = torch.randn(x.shape, dtype=dtype, generator=gen)
                got = run_up(lambda t: ku.upfirdn2d(t, f, up, down, pad, flip, gain), x, dy, r)
                want = run_up(lambda t: _upfirdn2d_ref(t, f, *up, *down, *pad, flip, gain), x, dy, r)
                if layout.startswith("channels_last"):
                    # The networks' CPU layout goes through without a reorder to NCHW in the next layer.
                    assert got[0].is_contiguous(memory_format=torch.channels_last), layout
                    assert got[1].is_contiguous(memory_format=torch.channels_last), layout
                for name, u, v in zip(("y", "dx", "d2dy"), got, want):
                    torch.testing.assert_close(
                        u, v, **tol(dtype), msg=lambda m: f"{fname} up={up} down={down} pad={pad} {layout} {name}: {m}")


def test_upfirdn2d_gradcheck(ku):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    for f, up, down, pad in ((setup_filter([1, 3, 3, 1]).double(), 2, 1, (2, 1, 2, 1)),
                             (torch.randn(3, 2, dtype=torch.float64, generator=gen), (1, 2), (2, 1), (1, 0, 2, 1))):
        up2 = up if isinstance(up, tuple) else (up, up)
        down2 = down if isinstance(down, tuple) else (down, down)

        def fn(t):
            return ku.upfirdn2d(t, f, up2, down2, pad, False, 1.5)

        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_upfirdn2d_filter_gradient_uses_reference(ku):
    # The kernel has no filter gradient; a trainable filter still gets one (through the reference).
    f = setup_filter([1, 3, 3, 1]).requires_grad_(True)
    x = torch.randn(1, 2, 6, 6)
    ku.upfirdn2d(x, f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4).sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------- dispatch, end to end

def test_public_ops_follow_studio_ops(monkeypatch, ka, ku):
    big = torch.randn(4, 32, 32, 32)
    small = torch.randn(2, 8)
    monkeypatch.setenv("STUDIO_OPS", "ref")
    assert dispatch.compiled("bias_act", big) is None and dispatch.compiled("upfirdn2d", big) is None
    paths = dispatch.op_paths(device="cpu")
    assert set(paths) == set(dispatch.OPS) and paths["bias_act"].startswith("reference")
    monkeypatch.setenv("STUDIO_OPS", "compiled")
    assert dispatch.compiled("bias_act", small) is ka
    assert dispatch.compiled("upfirdn2d", big) is ku
    assert dispatch.op_paths(device="cpu")["bias_act"] == "compiled C++ kernel"
    monkeypatch.setenv("STUDIO_OPS", "auto")
    # auto: the CPU policy, with tiny tensors left to the reference (the wrapper's overhead dominates).
    assert dispatch.compiled("bias_act", small) is None
    assert dispatch.compiled("bias_act", big) is (ka if dispatch.CPU_KERNEL["bias_act"] else None)
    assert dispatch.compiled("upfirdn2d", big) is (ku if dispatch.CPU_KERNEL["upfirdn2d"] else None)
    # A plain filter on channels-last activations goes to oneDNN's depthwise convolution; resampling does not.
    nhwc = big.to(memory_format=torch.channels_last)
    want_filter = None if dispatch.CPU_CHANNELS_LAST_FILTER_REF else ku
    assert dispatch.compiled("upfirdn2d", nhwc, resample=False) is want_filter
    assert dispatch.compiled("upfirdn2d", nhwc, resample=True) is ku
    assert dispatch.compiled("upfirdn2d", big, resample=False) is ku
    # A plain bias add is one native op in the reference.
    assert dispatch.compiled("bias_act", big, linear=True) is (None if dispatch.CPU_LINEAR_REF else ka)
    monkeypatch.setenv("STUDIO_OPS", "compiled")
    assert dispatch.compiled("upfirdn2d", nhwc, resample=False) is ku
    assert dispatch.compiled("bias_act", big, linear=True) is ka


def test_channels_last_stays_channels_last_through_a_block(monkeypatch, ka, ku):
    """The networks' CPU layout survives every op of a resampling block, forward and backward (the reference's
    downsampling is a strided view of a channels-last tensor, which is left as it is)."""
    f = setup_filter([1, 3, 3, 1])
    for m in ("auto", "compiled", "ref"):
        monkeypatch.setenv("STUDIO_OPS", m)
        x = torch.randn(2, 16, 8, 8).to(memory_format=torch.channels_last).requires_grad_(True)
        h = bias_act(x, torch.zeros(16), act="lrelu")
        h1 = upfirdn2d(h, f, padding=1)        # plain filter
        h2 = upfirdn2d(h, f, down=2, padding=1)  # resampling
        for t in (h, h1, h2) if m != "ref" else (h, h1):
            assert t.is_contiguous(memory_format=torch.channels_last), (m, t.shape)
        (g,) = torch.autograd.grad(h1.sum() + h2.square().sum(), x)
        assert g.is_contiguous(memory_format=torch.channels_last), m


def r1_step(x0, b0, w0, f):
    """A tiny D-like block: bias_act, filtered downsampling, conv; returns the R1 term's weight gradients."""
    x = x0.detach().clone().requires_grad_(True)
    b = b0.detach().clone().requires_grad_(True)
    w = w0.detach().clone().requires_grad_(True)
    h = bias_act(x, b, act="lrelu", clamp=3.0)
    h = upfirdn2d(h, f, down=2, padding=1)
    h = torch.nn.functional.conv2d(h, w, padding=1)
    h = bias_act(h, None, act="softplus")
    (gx,) = torch.autograd.grad(h.sum(), x, create_graph=True)
    penalty = gx.square().sum()
    return [h.detach()] + list(torch.autograd.grad(penalty, [b, w]))


def test_r1_through_public_ops_matches_reference(monkeypatch, ka, ku):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64, generator=gen)
    b = torch.randn(4, dtype=torch.float64, generator=gen)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, generator=gen) * 0.3
    f = setup_filter([1, 3, 3, 1]).double()
    monkeypatch.setenv("STUDIO_OPS", "ref")
    want = r1_step(x, b, w, f)
    monkeypatch.setenv("STUDIO_OPS", "compiled")
    got = r1_step(x, b, w, f)
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------- build machinery

FALLBACK_SCRIPT = textwrap.dedent("""
    import torch
    from engine.ops import dispatch
    from engine.ops.bias_act import bias_act, _bias_act_ref, activation_funcs
    from engine.ops.upfirdn2d import upfirdn2d, _upfirdn2d_ref, setup_filter
    x = torch.randn(2, 3, 8, 8)
    f = setup_filter([1, 3, 3, 1])
    for _ in range(3):
        y = bias_act(x, torch.ones(3), act="lrelu")
        assert torch.equal(y, _bias_act_ref(x, torch.ones(3), 1, activation_funcs["lrelu"], 0.2, 2 ** 0.5, -1.0))
        u = upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4)
        assert torch.equal(u, _upfirdn2d_ref(x, f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4))
    paths = dispatch.op_paths(device="cpu")
    assert paths["bias_act"].startswith("reference (compiled C++ kernel unavailable"), paths
    print("ran on")
""")


def run_broken_compiler(cache):
    env = dict(os.environ, CXX="false", STUDIO_CACHE=str(cache), STUDIO_OPS="compiled",
               PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_broken_compiler_falls_back_with_one_line_per_op(tmp_path):
    for attempt in range(2):  # the second process finds the recorded failure and does not retry
        t0 = time.monotonic()
        p = run_broken_compiler(tmp_path / "cache")
        assert p.returncode == 0, p.stderr
        assert "ran on" in p.stdout
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert "Traceback" not in p.stderr
        assert len(lines) == 2, lines
        for op, line in zip(("bias_act", "upfirdn2d"), lines):
            assert line.startswith(f"studio: compiled {op} (C++) unavailable:"), line
            assert "'false'" in line and line.endswith("using the reference implementation"), line
        if attempt == 1:
            assert "earlier build" in lines[0]
            assert time.monotonic() - t0 < 60


def test_cache_folder_keyed_by_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path))
    a = build.build_dir("bias_act", "cpu")
    assert a.is_relative_to(tmp_path / "extensions")
    assert torch.__version__.split("+")[0] in a.parent.name
    monkeypatch.setattr(build, "_compiler_id", lambda: "c++: some other compiler 99")
    b = build.build_dir("bias_act", "cpu")
    assert a != b and a.name == b.name  # same sources, different compiler -> different machine key
    assert build.build_dir("upfirdn2d", "cpu").parent == b.parent


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from engine.ops.build import BuildLock
    lock = BuildLock(sys.argv[1], wait_s=30)
    assert lock.acquire()
    with open(sys.argv[2], "a") as fh:
        fh.write("start %f\\n" % time.time())
    time.sleep(float(sys.argv[3]))
    with open(sys.argv[2], "a") as fh:
        fh.write("end %f\\n" % time.time())
    lock.release()
""")


@pytest.mark.slow
def test_lock_serialises_processes(tmp_path):
    lock, log = tmp_path / "studio.lock", tmp_path / "log.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(lock), str(log), "0.6"], env=env, cwd=ROOT)
             for _ in range(3)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    events = log.read_text().split()
    kinds = events[0::2]
    assert kinds == ["start", "end"] * 3  # never two holders at once
    assert not lock.exists()


def test_lock_owner_alive_means_wait_then_give_up(tmp_path):
    lock = tmp_path / "studio.lock"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(lock), str(tmp_path / "log"), "8"], env=env,
                              cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        assert build.BuildLock(lock, wait_s=1.0).acquire() is False  # a live, beating owner is not broken
        assert time.monotonic() - t0 < 5
    finally:
        holder.kill()
        holder.wait()
    # The owner was killed without releasing: its lock is stale and is taken over at once.
    t0 = time.monotonic()
    taker = build.BuildLock(lock, wait_s=10.0)
    assert taker.acquire()
    assert time.monotonic() - t0 < 3
    taker.release()
    assert not lock.exists()


def test_lock_without_heartbeat_is_stale(tmp_path):
    lock = tmp_path / "studio.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "another-machine", "time": 0, "token": "x"}))
    old = time.time() - 3600
    os.utime(lock, (old, old))
    taker = build.BuildLock(lock, wait_s=5.0)
    t0 = time.monotonic()
    assert taker.acquire()
    assert time.monotonic() - t0 < 2
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    taker.release()


def test_finished_build_loads_without_compiler(ka, monkeypatch):
    # A later process imports the cached library directly; no compiler or ninja is run.
    assert build.is_built("bias_act", "cpu")
    monkeypatch.setattr(build, "_compile", lambda *a, **k: pytest.fail("rebuilt a finished build"))
    assert build.load("bias_act", "cpu") is not None
