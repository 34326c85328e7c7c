"""A compiled kernel proves itself against the reference code before the dispatch lets it run.

The first time an op is about to run compiled on a device and dtype, a short check runs both implementations on
inputs shaped like the networks' calls (bias_act: lrelu with the default gain, clamps, linear layers, channels-last
and NCHW, with and without bias; upfirdn2d: upsample2d / downsample2d by 2 with 4-tap and separable 12-tap
filters, plain filters, flips, gains, crops, channels-last and NCHW) and compares the forward result, the first
derivatives and the second derivatives that R1 and path length regularisation take (the gradient of a gradient).
Errors are measured relative to the largest value of each result (at least 1), against a tolerance per dtype.

The verdict is a small JSON file beside the build (engine/ops/build.py), so it is kept per machine and goes away
with the build folder when the kernel sources, torch, the compiler, the CPU or the GPU change; its name also
carries a hash of this check and of the reference code, so changing those checks again. A failed check (a
mismatch, an exception, a non-finite value) sends that op, device and dtype to the reference for good, with one
line on stderr naming the op, device, dtype and the worst error.

On CUDA the check runs in a child process (`python -m engine.ops.verify OP cuda DTYPE`): a kernel that makes
an illegal memory access leaves a sticky CUDA error that would poison every later CUDA call of the process
that made it, so the training process must not be the one that runs an untried kernel. A child that dies is
a failed check like any other. On the CPU the check runs in-process; an exception is caught and a C++ kernel
bug that would crash the process would crash the same process on its first real call anyway.
STUDIO_OPS_CHECK_SUBPROCESS=1 runs the CPU check in a child too (the tests use it to cover that path).

STUDIO_OPS_FAULT is a test hook: "bias_act=perturb,upfirdn2d=nan" makes the named compiled ops return a wrong
element (perturb, also any other word), NaN (nan), raise (raise), kill the process (abort), or read out of
bounds (device_assert: on CUDA a device-side assert, which leaves the sticky error), so the tests can show that a
wrong kernel is caught. The hook is part of the verdict's key, so a faulty run never leaves a verdict for a sound
one.
"""

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from engine.ops.filters import symlet_lowpass

ROOT = Path(__file__).resolve().parents[2]

# Largest error relative to the largest value of a result, per dtype. The kernels accumulate in float32 for the
# half types and round once at the end; the reference for half inputs is computed in float32 from the same inputs.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}

CHILD_TIMEOUT_S = 300.0
checks_run = 0  # checks run by this process (the tests read it to see that a cached verdict was reused)


# ---------------------------------------------------------------------------------------------- the test hook

def faults():
    """{op: kind} from STUDIO_OPS_FAULT (test hook; empty normally)."""
    spec = os.environ.get("STUDIO_OPS_FAULT", "").strip()
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        op, _, kind = part.partition("=")
        out[op.strip()] = kind.strip() or "perturb"
    return out


class _FaultyExt:
    """A kernel module whose results are deliberately wrong (STUDIO_OPS_FAULT)."""

    def __init__(self, ext, kind):
        self._ext, self._kind = ext, kind

    def __getattr__(self, attr):
        import torch

        fn = getattr(self._ext, attr)
        kind = self._kind

        def call(*args):
            if kind == "raise":
                raise RuntimeError(f"deliberate fault in {attr} (STUDIO_OPS_FAULT)")
            if kind == "abort":
                os.abort()
            y = fn(*args)
            if kind == "device_assert":  # an out-of-bounds read: on CUDA a device-side assert, a sticky error
                y = y + y.reshape(-1)[torch.full([1], y.numel() + 7, device=y.device)].sum()
                if y.is_cuda:
                    torch.cuda.synchronize()
            if y.numel():
                y = y.clone()
                if kind == "nan":
                    y.fill_(float("nan"))
                else:  # one wrong element, as an off-by-one at an edge would give
                    y.as_strided([1], [1], y.storage_offset()).add_(0.1 * (1 + float(y.abs().max())))
            return y

        return call


def with_fault(name, ext):
    kind = faults().get(name)
    return ext if kind is None else _FaultyExt(ext, kind)


# -------------------------------------------------------------------------------------------------- the cases

# (shape, channels_last, act, bias, alpha, gain, clamp): the layers' calls (conv + lrelu with clamp, the mapping's
# fully connected lrelu, toRGB's linear with clamp, a plain scaled add) and one smooth activation (keeps x).
BIAS_ACT_CASES = [
    ([2, 16, 6, 6], False, "lrelu", True, 0.2, math.sqrt(2), -1.0),
    ([2, 16, 6, 6], True, "lrelu", True, 0.2, math.sqrt(2), 1.0),
    ([4, 24], False, "lrelu", True, 0.2, math.sqrt(2), -1.0),
    ([2, 3, 6, 6], False, "linear", True, 0.0, 1.0, 0.7),
    ([2, 16, 6, 6], True, "linear", False, 0.0, 0.5, -1.0),
    ([2, 8, 5, 5], False, "swish", True, 0.0, math.sqrt(2), 2.0),
]

# (name, shape, channels_last, filter, up, down, padding, flip, gain): upsample2d / downsample2d / filter2d as the
# blocks, conv2d_resample, toRGB and the augmentation call them.
UPFIRDN2D_CASES = [
    ("upsample2d", [2, 16, 6, 6], True, "4tap", 2, 1, (2, 1, 2, 1), False, 4.0),
    ("upsample2d image", [2, 3, 6, 6], False, "4tap", 2, 1, (2, 1, 2, 1), False, 4.0),
    ("downsample2d", [2, 16, 8, 8], False, "4tap", 1, 2, (1, 1, 1, 1), True, 1.0),
    ("downsample2d", [2, 16, 8, 8], True, "4tap", 1, 2, (1, 1, 1, 1), False, 1.0),
    ("filter after transposed conv", [2, 8, 9, 9], False, "4tap", 1, 1, (1, 1, 1, 1), True, 4.0),
    ("augment upsample", [2, 3, 7, 7], False, "12tap", 2, 1, (6, 5, 6, 5), False, 4.0),
    ("augment downsample with crop", [2, 3, 24, 24], False, "12tap", 1, 2, (-3, -3, -3, -3), True, 1.0),
    ("plain filter", [2, 16, 6, 6], True, "4tap", 1, 1, (1, 2, 1, 2), False, 1.0),
    ("no filter, strided", [2, 8, 8, 8], False, None, 1, 2, (0, 0, 0, 0), False, 1.0),
]


def _filters(torch):
    from engine.ops.reference import setup_filter

    sym6 = torch.as_tensor(symlet_lowpass(6), dtype=torch.float32)  # the augmentation's 12-tap filter, 1-D
    return {"4tap": setup_filter([1, 3, 3, 1]), "12tap": sym6 / sym6.sum(), None: None}


def _randn(torch, shape, gen, device, dtype, channels_last=False):
    t = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return t.to(memory_format=torch.channels_last) if channels_last and t.ndim == 4 else t


def _grads(torch, out, inputs):
    gs = torch.autograd.grad(out, inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, inputs)]


def _bias_act_results(torch, fn, x0, b0, dy0, r0, rb0):
    """y, dx, db, then d/d(x, b, dy) of (dx * r).sum() + (db * rb).sum()."""
    x = x0.detach().clone().requires_grad_(True)
    b = None if b0 is None else b0.detach().clone().requires_grad_(True)
    dy = dy0.detach().clone().requires_grad_(True)
    inputs = [x] + ([b] if b is not None else [])
    y = fn(x, b)
    g = torch.autograd.grad(y, inputs, dy, create_graph=True)
    loss = (g[0] * r0).sum() + ((g[1] * rb0).sum() if b is not None else 0)
    out = [("y", y), ("dx", g[0])] + ([("db", g[1])] if b is not None else [])
    names = ["d2x"] + (["d2b"] if b is not None else []) + ["d2dy"]
    return out + list(zip(names, _grads(torch, loss, inputs + [dy])))


def _upfirdn2d_results(torch, fn, x0, dy0, r0):
    """y, dx, and d/d dy of (dx * r).sum() (the op is linear, so that is its only second derivative)."""
    x = x0.detach().clone().requires_grad_(True)
    dy = dy0.detach().clone().requires_grad_(True)
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    (d2,) = _grads(torch, (dx * r0).sum(), [dy])
    return [("y", y), ("dx", dx), ("d2dy", d2)]


def _error(torch, got, want):
    """Largest |got - want| relative to max(1, largest |want|); inf for a wrong shape or a non-finite value."""
    if tuple(got.shape) != tuple(want.shape):
        return math.inf, f"shape {list(got.shape)} instead of {list(want.shape)}"
    g = got.detach().to(want.dtype)
    if not bool(torch.isfinite(g).all()):
        return math.inf, "non-finite value"
    if g.numel() == 0:
        return 0.0, ""
    w = want.detach()
    return float((g - w).abs().max()) / max(1.0, float(w.abs().max())), ""


def _off_the_clamp(torch, x, b, spec, alpha, gain, clamp):
    """x moved away from inputs whose output lies within 2 % of the clamp. There the derivative is 0 or not by a
    rounding: the kernels decide from their output rounded to the dtype (as NVIDIA's do), the reference from the
    exact value, and in float16 / bfloat16 the two would differ for a sound kernel."""
    for _ in range(4):
        v = x.double() + (0 if b is None else b.double().reshape([1, -1] + [1] * (x.ndim - 2)))
        near = ((spec.func(v, alpha) * gain).abs() - clamp).abs() < 0.02 * clamp + 0.01
        if not bool(near.any()):
            break
        x = torch.where(near, x + 0.1, x)
    return x


def _cases(name, kernel, device, dtype):
    """(label, run_compiled, run_reference) for every case of op `name`."""
    import torch

    from engine.ops.reference import activation_funcs
    from engine.ops.reference import bias_act_ref as _bias_act_ref
    from engine.ops.reference import upfirdn2d_ref as _upfirdn2d_ref

    dt = getattr(torch, dtype)
    ref_dt = dt if dt in (torch.float32, torch.float64) else torch.float32
    gen = torch.Generator().manual_seed(20240 + len(dtype))  # a private stream: the global RNG is not touched

    def up(t):  # the reference sees the same values, in float32 for the half types
        return None if t is None else t.to(ref_dt)

    if name == "bias_act":
        for shape, cl, act, has_b, alpha, gain, clamp in BIAS_ACT_CASES:
            x = _randn(torch, shape, gen, device, dt, cl) * 1.5
            b = _randn(torch, [shape[1]], gen, device, dt) if has_b else None
            spec = activation_funcs[act]
            if clamp >= 0:
                x = _off_the_clamp(torch, x, b, spec, alpha, gain, clamp)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
            dy, r = _randn(torch, shape, gen, device, dt, cl), _randn(torch, shape, gen, device, dt, cl)
            rb = _randn(torch, [shape[1]], gen, device, dt)
            label = (f"{act} {'channels-last ' if cl else ''}{shape}" + (" clamp" if clamp >= 0 else "")
                     + ("" if has_b else " no bias"))

            def run_k(x=x, b=b, dy=dy, r=r, rb=rb, act=act, alpha=alpha, gain=gain, clamp=clamp):
                return _bias_act_results(torch, lambda x_, b_: kernel.bias_act(x_, b_, 1, act, alpha, gain, clamp),
                                         x, b, dy, r, rb)

            def run_r(x=x, b=b, dy=dy, r=r, rb=rb, spec=spec, alpha=alpha, gain=gain, clamp=clamp):
                return _bias_act_results(torch, lambda x_, b_: _bias_act_ref(x_, b_, 1, spec, alpha, gain, clamp),
                                         up(x), up(b), up(dy), up(r), up(rb))

            yield label, run_k, run_r
    else:
        filters = _filters(torch)
        for what, shape, cl, fname, u, d, pad, flip, gain in UPFIRDN2D_CASES:
            f = filters[fname]
            f = None if f is None else f.to(device)
            x = _randn(torch, shape, gen, device, dt, cl)
            fh, fw = (1, 1) if f is None else (f.shape[0], f.shape[-1])
            oh = (shape[2] * u + pad[2] + pad[3] - fh) // d + 1
            ow = (shape[3] * u + pad[0] + pad[1] - fw) // d + 1
            dy = _randn(torch, [shape[0], shape[1], oh, ow], gen, device, dt, cl)
            r = _randn(torch, shape, gen, device, dt, cl)
            label = f"{what} {'channels-last ' if cl else ''}{shape} up {u} down {d} pad {list(pad)}" \
                + (" flip" if flip else "")
            geom = ((u, u), (d, d), pad)

            def run_k(x=x, dy=dy, r=r, f=f, geom=geom, flip=flip, gain=gain):
                return _upfirdn2d_results(torch, lambda t: kernel.upfirdn2d(t, f, *geom, flip, gain), x, dy, r)

            def run_r(x=x, dy=dy, r=r, f=f, geom=geom, flip=flip, gain=gain):
                (ux, uy), (dx, dy_), p = geom
                return _upfirdn2d_results(torch, lambda t: _upfirdn2d_ref(t, f, ux, uy, dx, dy_, *p, flip, gain),
                                          up(x), up(dy), up(r))

            yield label, run_k, run_r


def run_check(name, device, dtype, kernel):
    """Compare `kernel` (fused.BiasActKernel / Upfirdn2dKernel) with the reference; returns the verdict dict."""
    global checks_run
    import torch

    checks_run += 1
    tol = TOLERANCE[dtype]
    worst, where, error, label = 0.0, "", None, ""
    t0 = time.perf_counter()
    # The inputs are tiny: on the CPU more threads only add wake-ups, which on a busy machine cost seconds
    # (docs/BENCHMARKS.md, "The compiled ops' check before first use").
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    # The check must not depend on, or change, the caller's autograd and autocast state.
    with torch.inference_mode(False), torch.enable_grad(), \
            torch.autocast(device_type=device, enabled=False):
        try:
            label = "preparing the inputs"
            cases = list(_cases(name, kernel, device, dtype))
            for label, run_k, run_r in cases:
                got, want = run_k(), run_r()
                for (part, g), (_, w) in zip(got, want):
                    err, why = _error(torch, g, w)
                    if err > worst:
                        worst, where = err, (f"{why} in " if why else "") + f"{part} of {label}"
                if worst > tol:
                    break  # one mismatch is enough; the rest would only cost time
            if device == "cuda":
                torch.cuda.synchronize()
        except Exception as e:  # any failure of the kernel is a failed check, never a crash of the caller
            error = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            where = label
        finally:
            torch.set_num_threads(threads)
    ok = error is None and worst <= tol
    return {"op": name, "device": device, "dtype": dtype, "ok": ok, "worst": worst if math.isfinite(worst) else None,
            "tolerance": tol, "where": where, "error": error, "seconds": round(time.perf_counter() - t0, 3),
            "checked": time.time()}


def describe(v):
    """One phrase: why a verdict failed, or how well it passed."""
    if v.get("error"):
        return v["error"] + (f" (in {v['where']})" if v.get("where") else "")
    if v.get("worst") is None:
        return f"{v['where']} (tolerance {v['tolerance']:.0e})"
    return f"worst error {v['worst']:.1e} in {v['where']} (tolerance {v['tolerance']:.0e})"


# --------------------------------------------------------------------------------------- verdicts on disk

def _check_key(device):
    """What a verdict depends on besides the build folder: this check, the reference code (reference.py), the
    autograd wrappers and entry points, the filters the cases use, the test hook, the GPU."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for rel in ("verify.py", "reference.py", "fused.py", "bias_act.py", "upfirdn2d.py", "filters.py"):
        h.update((here / rel).read_bytes())
    h.update(json.dumps(sorted(faults().items())).encode())
    if device == "cuda":
        import torch

        h.update(" ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())).encode())
    return h.hexdigest()[:10]


def verdict_path(name, device, dtype):
    from engine.ops import build

    return build.build_dir(name, device) / f"check-{device}-{dtype}-{_check_key(device)}.json"


def read_verdict(name, device, dtype):
    """The stored verdict, or None (never checked, unreadable, or the folder cannot be named)."""
    try:
        v = json.loads(verdict_path(name, device, dtype).read_text())
    except Exception:
        return None
    return v if isinstance(v, dict) and isinstance(v.get("ok"), bool) else None


def _write_verdict(path, v):
    from engine.fsutil import write_text_atomic

    write_text_atomic(path, json.dumps(v) + "\n")


def _isolated(device):
    return device == "cuda" or os.environ.get("STUDIO_OPS_CHECK_SUBPROCESS", "") not in ("", "0")


def _check_in_child(name, device, dtype):
    """Run the check in a child process; a child that dies or hangs is a failed check."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    t0, started = time.perf_counter(), time.time()
    try:
        p = subprocess.run([sys.executable, "-m", "engine.ops.verify", name, device, dtype], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        rc, text = p.returncode, (p.stderr or "") + (p.stdout or "")
    except subprocess.TimeoutExpired:
        rc, text = "timeout", f"no answer after {CHILD_TIMEOUT_S:.0f} s"
    except OSError as e:
        rc, text = "error", str(e)
    v = read_verdict(name, device, dtype)
    if v is not None and v.get("checked", 0) >= started:
        return v  # the child finished its check (even if the process then died on the way out)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else "no output"
    how = f"exit code {rc}" if isinstance(rc, int) else rc
    if isinstance(rc, int) and rc < 0:
        how = f"killed by signal {-rc}"
    return {"op": name, "device": device, "dtype": dtype, "ok": False, "worst": None,
            "tolerance": TOLERANCE[dtype], "where": "", "error": f"the check crashed ({how}): {last[:200]}",
            "seconds": round(time.perf_counter() - t0, 3), "checked": time.time()}


def ensure(name, device, dtype, kernel):
    """The verdict for (op, device, dtype): the stored one, else a fresh check (stored). Returns (verdict, fresh)."""
    from engine.ops import build

    v = read_verdict(name, device, dtype)
    if v is not None:
        return v, False
    try:
        path = verdict_path(name, device, dtype)
    except Exception as e:  # no place to keep it: check anyway, every process
        path = None
        note = str(e)
    lock = None
    if path is not None:
        # Several ranks of one run start at once: one checks, the others wait and read its verdict.
        lock = build.BuildLock(path.with_name(path.name + ".lock"), wait_s=CHILD_TIMEOUT_S + 60)
        if not lock.acquire():
            lock = None
        else:
            v = read_verdict(name, device, dtype)
            if v is not None:
                lock.release()
                return v, False
    try:
        v = _check_in_child(name, device, dtype) if _isolated(device) else run_check(name, device, dtype, kernel)
        if path is not None:
            with contextlib.suppress(OSError):
                _write_verdict(path, v)
        else:
            v["note"] = f"verdict not stored: {note}"
        return v, True
    finally:
        if lock is not None:
            lock.release()


def main(argv=None):
    """Child process: check one op on one device and dtype, and store the verdict."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m engine.ops.verify OP DEVICE DTYPE", file=sys.stderr)
        return 2
    name, device, dtype = args
    from engine.ops import build, fused

    if device == "cuda":
        import torch

        torch.cuda.init()
    ext = with_fault(name, build.load(name, device))
    cls = fused.BiasActKernel if name == "bias_act" else fused.Upfirdn2dKernel
    v = run_check(name, device, dtype, cls(ext, device))
    _write_verdict(verdict_path(name, device, dtype), v)
    print(json.dumps(v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
