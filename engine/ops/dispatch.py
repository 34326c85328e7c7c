"""Which implementation each op uses: the plain-torch reference or a compiled kernel from extensions/.

Contract used by the op modules (bias_act.py, upfirdn2d.py):
    kernel = compiled("bias_act", x)   # an object with the op's method (fused.py), or None -> use the reference
    op_paths()                         # {"bias_act": "compiled C++ kernel", ...} for `info` and the dashboard
    op_status()                        # per op and dtype: verified / failed (why) / unchecked / reference
    training_lines(device, precision)  # the same for a training log, checked now

CUDA tensors use the CUDA kernel. CPU tensors use the C++ kernel only for the ops in CPU_KERNEL (where
bench/ops.py measured it faster than the reference). STUDIO_OPS=ref forces the reference everywhere;
STUDIO_OPS=compiled uses every compiled kernel there is, on the CPU too. A kernel that cannot be built costs one
line on stderr per process (which op, why, that the reference is used) and the run goes on.

A kernel that builds is not trusted yet: the first time it would run on a device and dtype, verify.py checks it
against the reference (forward, first and second derivatives). A failed check sends that op, device and dtype to
the reference for good (until the sources or the machine change), with one line on stderr; STUDIO_OPS=compiled
does not override it. op_status() says, per op, device and dtype, which of these happened.
"""

import os
import sys
import threading

OPS = ("bias_act", "upfirdn2d", "conv2d_resample", "grid_sample")
KERNEL_OPS = ("bias_act", "upfirdn2d")

# CPU policy in "auto" mode, from `python bench/ops.py --device cpu` (figures: docs/BENCHMARKS.md, "Compiled ops on
# the CPU" and "Why the CPU policy is what it is"):
#   bias_act : compiled, except a plain bias add (linear, no clamp: one native op on the reference path too) and
#              calls under 64k elements, where the wrapper's Python and dispatcher overhead outweighs the passes saved.
#   upfirdn2d: compiled at every size, except a plain filter (no resampling) on a channels-last tensor, where
#              oneDNN's depthwise convolution is already as fast as memory allows.
CPU_KERNEL = {"bias_act": True, "upfirdn2d": True}
CPU_MIN_NUMEL = {"bias_act": 65536, "upfirdn2d": 0}
CPU_CHANNELS_LAST_FILTER_REF = True
CPU_LINEAR_REF = True

_DTYPES = {"cpu": ("float32", "float64"), "cuda": ("float16", "bfloat16", "float32", "float64")}

_lock = threading.RLock()
_kernels = {}    # (op, device) -> kernel object
_failures = {}   # (op, device) -> one-line reason
_verdicts = {}   # (op, device, dtype) -> the check's verdict (verify.py); ok=False means the reference for good


def mode():
    m = os.environ.get("STUDIO_OPS", "auto").strip().lower() or "auto"
    return m if m in ("auto", "ref", "compiled") else "auto"


def _wanted(name, device):
    m = mode()
    if m == "ref" or name not in KERNEL_OPS:
        return False
    if device == "cpu" and m == "auto":
        return CPU_KERNEL.get(name, False)
    return device in ("cpu", "cuda")


def _tracing():
    import torch

    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


def _kernel(name, device):
    """The kernel object for (op, device), building it on first use; None when it cannot be had."""
    key = (name, device)
    k = _kernels.get(key)
    if k is not None or key in _failures:
        return k
    with _lock:
        if key in _kernels or key in _failures:
            return _kernels.get(key)
        from engine.ops import build, fused

        try:
            ext = build.load(name, device)
        except build.BuildError as e:
            _failures[key] = str(e)
            kind = "CUDA" if device == "cuda" else "C++"
            print(f"studio: compiled {name} ({kind}) unavailable: {e}; using the reference implementation",
                  file=sys.stderr, flush=True)
            return None
        from engine.ops import verify

        cls = fused.BiasActKernel if name == "bias_act" else fused.Upfirdn2dKernel
        k = _kernels[key] = cls(verify.with_fault(name, ext), device)
        return k


def _verified(name, device, dtype, k):
    """True when the kernel passed its check for this dtype; checks it (once per machine) when not known yet."""
    key = (name, device, dtype)
    v = _verdicts.get(key)
    if v is not None:
        return v["ok"]
    with _lock:
        if key in _verdicts:
            return _verdicts[key]["ok"]
        from engine.ops import verify

        v, fresh = verify.ensure(name, device, dtype, k)
        _verdicts[key] = v
        if not v["ok"]:
            kind = "CUDA" if device == "cuda" else "C++"
            earlier = "" if fresh else " [earlier check; it is redone when the sources or the machine change]"
            print(f"studio: compiled {name} ({kind}) failed its check on {device} {dtype}: {verify.describe(v)}"
                  f"{earlier}; using the reference implementation", file=sys.stderr, flush=True)
        return v["ok"]


def verify_now(device=None, dtypes=None):
    """Build and check every kernel op the dispatch would use on `device` for `dtypes` (default: all of the
    device's kernel dtypes) now, instead of on first use."""
    device = device or _default_device()
    for name in KERNEL_OPS:
        if not _wanted(name, device):
            continue
        k = _kernel(name, device)
        if k is None:
            continue
        for dtype in dtypes or _DTYPES[device]:
            if dtype in _DTYPES[device]:
                _verified(name, device, dtype, k)


def _channels_last(x):
    import torch

    return (x.ndim == 4 and x.shape[1] >= 8 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def compiled(name, x=None, resample=True, linear=False):
    """The compiled kernel for op `name` and tensor `x` (None: the CPU), or None to use the reference code.

    resample: for upfirdn2d, whether the call up- or downsamples (False: a plain filter).
    linear: for bias_act, whether the call is a plain bias add (linear activation, no clamp).
    """
    device = "cpu" if x is None else x.device.type
    if not _wanted(name, device):
        return None
    if x is not None:
        if str(x.dtype).replace("torch.", "") not in _DTYPES[device]:
            return None
        if device == "cpu" and mode() == "auto":
            if x.numel() < CPU_MIN_NUMEL.get(name, 0):
                return None
            if name == "upfirdn2d" and not resample and CPU_CHANNELS_LAST_FILTER_REF and _channels_last(x):
                return None
            if name == "bias_act" and linear and CPU_LINEAR_REF:
                return None
    if _tracing():
        return None
    k = _kernel(name, device)
    if k is None or x is None:
        return k
    return k if _verified(name, device, str(x.dtype).replace("torch.", ""), k) else None


def _default_device():
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:
        return "cpu"


def _cpu_exceptions(name, device):
    """The calls the CPU policy leaves to the reference, as a suffix for op_paths()."""
    if device != "cpu" or mode() != "auto":
        return ""
    notes = []
    if CPU_MIN_NUMEL.get(name, 0) > 0:
        notes.append(f"under {CPU_MIN_NUMEL[name] // 1024}k elements")
    if name == "bias_act" and CPU_LINEAR_REF:
        notes.append("plain bias adds")
    if name == "upfirdn2d" and CPU_CHANNELS_LAST_FILTER_REF:
        notes.append("plain filters on channels-last tensors")
    return f" ({', '.join(notes)}: reference)" if notes else ""


def op_paths(device=None, build=False):
    """{op name: the path it takes on `device` (default: CUDA if present, else the CPU)}.

    build=True builds (or loads) the kernels now, so the answer says whether they work here.
    """
    from engine.ops import build as builder

    device = device or _default_device()
    kind = "CUDA" if device == "cuda" else "C++"
    paths = {}
    for name in KERNEL_OPS:
        key = (name, device)
        if mode() == "ref":
            paths[name] = "reference (STUDIO_OPS=ref)"
        elif not _wanted(name, device):
            paths[name] = f"reference (faster than the {kind} kernel on this CPU)"
        else:
            if build:
                _kernel(name, device)
            if key in _kernels:
                failed = [dt for (op, dev, dt), v in _verdicts.items() if op == name and dev == device and not v["ok"]]
                paths[name] = f"compiled {kind} kernel" + _cpu_exceptions(name, device) + \
                    (f" ({', '.join(failed)}: failed its check, reference)" if failed else "")
            elif key in _failures:
                paths[name] = f"reference (compiled {kind} kernel unavailable: {_failures[key]})"
            elif builder.is_built(name, device):
                paths[name] = f"compiled {kind} kernel (built; loads on first use)"
            else:
                paths[name] = f"compiled {kind} kernel (builds on first use, once per machine)"
    paths["conv2d_resample"] = "reference (torch convolution + upfirdn2d)"
    paths["grid_sample"] = "reference (plain torch, differentiable twice)"
    return paths


def op_status(device=None):
    """Per op and dtype on `device` (default: CUDA if present, else the CPU): a list of
    {"op", "device", "dtype", "state", "detail", "cause", "reason"}, state one of "verified" (compiled and checked
    against the reference), "failed" (failed its check: the reference runs; detail has the error), "unchecked"
    (compiled, checked on first use), "reference" (the kernel is not used: STUDIO_OPS=ref, the CPU policy or a
    failed build). cause says why the reference runs: "mode" (STUDIO_OPS=ref), "policy" (the CPU policy: the
    reference is faster there), "build" (the kernel could not be built), "check" (it failed its check), or None
    (the kernel runs); reason is that in a short phrase (slowpath.py builds the training's slow-path line on it).

    Reads the verdicts this process holds, else the ones stored beside the build; runs no check and no compiler
    build.
    """
    from engine.ops import build as builder
    from engine.ops import verify

    device = device or _default_device()
    kind = "CUDA" if device == "cuda" else "C++"
    rows = []
    for name in KERNEL_OPS:
        for dtype in _DTYPES[device]:
            row = {"op": name, "device": device, "dtype": dtype, "cause": None, "reason": ""}
            if mode() == "ref":
                row.update(state="reference", detail="reference (STUDIO_OPS=ref)", cause="mode",
                           reason="STUDIO_OPS=ref")
            elif not _wanted(name, device):
                row.update(state="reference", detail=f"reference (faster than the {kind} kernel on this CPU)",
                           cause="policy", reason=f"faster than the {kind} kernel on this CPU")
            elif (name, device) in _failures:
                row.update(state="reference",
                           detail=f"reference (compiled {kind} kernel unavailable: {_failures[(name, device)]})",
                           cause="build", reason=f"compiled {kind} kernel unavailable: {_failures[(name, device)]}")
            else:
                v = _verdicts.get((name, device, dtype)) or verify.read_verdict(name, device, dtype)
                failed_build = None
                if v is None and (name, device) not in _kernels:
                    try:
                        failed_build = (builder.build_dir(name, device) / "failed.txt").read_text().strip()
                    except Exception:
                        failed_build = None
                if failed_build:
                    row.update(state="reference", detail=f"reference (compiled {kind} kernel unavailable: "
                               f"{failed_build}; STUDIO_OPS_REBUILD=1 retries)", cause="build",
                               reason=f"compiled {kind} kernel unavailable: {failed_build}")
                elif v is None:
                    built = (name, device) in _kernels or builder.is_built(name, device)
                    row.update(state="unchecked", detail=f"compiled {kind} kernel, "
                               + ("checked against the reference on first use" if built
                                  else "built and checked against the reference on first use"))
                elif v["ok"]:
                    row.update(state="verified", detail=f"compiled {kind} kernel, verified against the reference "
                               f"(worst error {v['worst']:.1e}, tolerance {v['tolerance']:.0e})")
                else:
                    row.update(state="failed", detail=f"reference: the compiled {kind} kernel failed its check: "
                               f"{verify.describe(v)}", cause="check",
                               reason=f"the compiled {kind} kernel failed its check: {verify.describe(v)}")
            rows.append(row)
    return rows


def training_lines(device, precision="fp32"):
    """The first lines of a training log about the compiled ops: the kernels the run will use (float32, and
    float16 / bfloat16 for --precision fp16 / bf16) are checked now, and each op/dtype says what it runs on.
    When an op runs on the reference although a kernel should (a failed build or check, STUDIO_OPS=ref), one
    more line says so with the measured cost (slowpath.py): "slow path: bias_act: reference path (...) - ..."."""
    from engine.ops import slowpath

    device = getattr(device, "type", device)
    if device not in _DTYPES:
        return [f"ops: reference on {device}"]
    dtypes = slowpath.training_dtypes(device, precision)
    verify_now(device, dtypes)
    rows = [r for r in op_status(device) if r["dtype"] in dtypes]
    return ([f"ops: {r['op']} {r['device']} {r['dtype']}: {r['detail']}" for r in rows]
            + slowpath.lines(rows, device, slowpath.device_name(device), dtypes))
