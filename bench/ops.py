"""Time per call of the compiled ops (extensions/) against the plain-torch reference.

Shapes: the layers of a 64 px and a 256 px network of NVIDIA's 'auto' config (channel_base 16384, channel_max
512), batch 8 / 4 on the CPU and 32 / 16 on CUDA, in the layout the networks use there (channels-last on the CPU,
NCHW on CUDA; --layout picks one). Each op is timed forward only ("fwd") and forward + backward ("fwd+bwd").
Prints one table (or, with --json, one JSON line); ratio = reference time / compiled time.

    python bench/ops.py                 # CPU, and CUDA when present
    python bench/ops.py --device cpu --json
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.nets.layers import _memory_format  # noqa: E402
from engine.ops import dispatch  # noqa: E402
from engine.ops.bias_act import _bias_act_ref, activation_funcs  # noqa: E402
from engine.ops.upfirdn2d import _upfirdn2d_ref, setup_filter  # noqa: E402


def channels(res, base=16384, cmax=512):
    return min(base // res, cmax)


def cases(res, batch, memory_format=torch.contiguous_format):
    """(name, op, make_inputs) for the layers of a res-px network; make_inputs(device, dtype) -> kwargs."""
    n, c, c2, half = batch, channels(res), channels(res // 2), res // 2

    def randn(shape, dev, dt):
        x = torch.randn(shape, device=dev, dtype=dt)
        return x.contiguous(memory_format=memory_format) if x.ndim == 4 else x
    f = [1, 3, 3, 1]
    out = []

    def ba(shape, act, clamp):
        def make(dev, dt):
            return dict(x=randn(shape, dev, dt), b=torch.randn(shape[1], device=dev, dtype=dt),
                        act=act, clamp=clamp)
        return make

    out.append((f"bias_act lrelu [{n},{c},{res},{res}]", "bias_act", ba([n, c, res, res], "lrelu", -1.0)))
    out.append((f"bias_act lrelu clamp [{n},{c2},{half},{half}]", "bias_act",
                ba([n, c2, half, half], "lrelu", 256.0)))
    out.append((f"bias_act linear [{n},{c},{res},{res}]", "bias_act", ba([n, c, res, res], "linear", -1.0)))
    out.append((f"bias_act lrelu fc [{n},512]", "bias_act", ba([n, 512], "lrelu", -1.0)))

    def up(shape, upf, downf, pad, gain):
        def make(dev, dt):
            return dict(x=randn(shape, dev, dt), f=setup_filter(f, device=dev), up=upf,
                        down=downf, pad=pad, gain=gain)
        return make

    # G: 3x3 transposed conv (stride 2) output [res+1] filtered to [res]; ToRGB skip image upsampled.
    out.append((f"upfirdn2d G upconv filter [{n},{c},{res + 1},{res + 1}]", "upfirdn2d",
                up([n, c, res + 1, res + 1], 1, 1, (1, 1, 1, 1), 4)))
    out.append((f"upfirdn2d G upsample2d img [{n},3,{half},{half}]", "upfirdn2d",
                up([n, 3, half, half], 2, 1, (2, 1, 2, 1), 4)))
    # D: prefilter before the stride-2 3x3 conv; resnet skip downsample2d.
    out.append((f"upfirdn2d D downconv filter [{n},{c},{res},{res}]", "upfirdn2d",
                up([n, c, res, res], 1, 1, (2, 2, 2, 2), 1)))
    out.append((f"upfirdn2d D downsample2d [{n},{c},{res},{res}]", "upfirdn2d",
                up([n, c, res, res], 1, 2, (1, 1, 1, 1), 1)))
    return out


def runner(op, impl, kw):
    if op == "bias_act":
        spec = activation_funcs[kw["act"]]
        alpha, gain = spec.def_alpha, spec.def_gain
        if impl == "ref":
            return lambda x, b: _bias_act_ref(x, b, 1, spec, alpha, gain, kw["clamp"])
        k = impl
        return lambda x, b: k.bias_act(x, b, 1, kw["act"], alpha, gain, kw["clamp"])
    up_, down_, pad, gain = (kw["up"],) * 2, (kw["down"],) * 2, kw["pad"], kw["gain"]
    if impl == "ref":
        return lambda x, f: _upfirdn2d_ref(x, f, *up_, *down_, *pad, False, gain)
    k = impl
    return lambda x, f: k.upfirdn2d(x, f, up_, down_, pad, False, gain)


def time_pair(fns, device, rounds=9, min_time=0.5):
    """Best time per call of each function, calling them in turns so both see the same machine load."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for fn in fns:
        fn()
        fn()
    sync()
    times = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < rounds or (time.perf_counter() - start < min_time and len(times[0]) < 500):
        for t, fn in zip(times, fns):
            t0 = time.perf_counter()
            fn()
            sync()
            t.append(time.perf_counter() - t0)
    # The least disturbed call: other processes on a shared machine only ever add time.
    return [min(t) for t in times]


def bench_case(op, make, kernel, device, dtype, backward):
    kw = make(device, dtype)
    args = (kw["x"], kw["b"]) if op == "bias_act" else (kw["x"], kw["f"])
    calls = []
    for impl in ("ref", kernel):
        fn = runner(op, impl, kw)
        if backward:
            x = args[0].detach().requires_grad_(True)
            rest = args[1:]
            dy = torch.randn_like(fn(x, *rest))  # the output's layout, as the next layer's gradient arrives

            def call(fn=fn, x=x, rest=rest, dy=dy):
                torch.autograd.backward(fn(x, *rest), dy)
        else:
            def call(fn=fn):
                with torch.no_grad():
                    fn(*args)
        calls.append(call)
    ref, comp = time_pair(calls, device)
    return {"ref": ref, "compiled": comp}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--res", default="64,256", help="network resolutions")
    ap.add_argument("--layout", choices=["auto", "nchw", "channels_last"], default="auto",
                    help="memory layout of the 4-D inputs (auto: what the networks use on the device)")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = ap.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for device in devices:
        dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
        kernels = {op: dispatch._kernel(op, device) for op in dispatch.KERNEL_OPS}
        layout = args.layout
        if layout == "auto":
            net_fmt = _memory_format(torch.device(device), dtype, False)
            layout = "channels_last" if net_fmt == torch.channels_last else "nchw"
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        for res in (int(r) for r in args.res.split(",")):
            batch = {64: 8, 256: 4}.get(res, 4) if device == "cpu" else {64: 32, 256: 16}.get(res, 16)
            for name, op, make in cases(res, batch, fmt):
                if kernels[op] is None:
                    continue
                for backward in (False, True):
                    r = bench_case(op, make, kernels[op], device, dtype, backward)
                    kw = make(device, dtype)
                    resample = op == "upfirdn2d" and max(kw["up"], kw["down"]) > 1
                    linear = op == "bias_act" and kw["act"] == "linear" and kw["clamp"] < 0
                    kernel = dispatch.compiled(op, kw["x"], resample=resample, linear=linear)
                    auto = "ref" if kernel is None else "compiled"
                    rows.append({"device": device, "layout": layout, "res": res, "case": name,
                                 "pass": "fwd+bwd" if backward else "fwd",
                                 "auto": auto,
                                 "ref_ms": r["ref"] * 1e3, "compiled_ms": r["compiled"] * 1e3,
                                 "ratio": r["ref"] / r["compiled"]})
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if "cuda" in devices else None, "dtype": args.dtype}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}))
        return
    print(f"# torch {meta['torch']}, {meta['threads']} CPU threads" + (f", {meta['cuda']}" if meta["cuda"] else ""))
    print(f"{'device':6} {'layout':13} {'res':>4}  {'case':52} {'pass':8} {'ref ms':>9} {'compiled ms':>11} {'ratio':>6}"
          "  auto uses")
    for r in rows:
        print(f"{r['device']:6} {r['layout']:13} {r['res']:>4}  {r['case']:52} {r['pass']:8} {r['ref_ms']:9.3f} {r['compiled_ms']:11.3f}"
              f" {r['ratio']:5.2f}x  {r['auto']}")
    for device in devices:
        for op in dispatch.KERNEL_OPS:
            rs = [r["ratio"] for r in rows if r["device"] == device and r["case"].startswith(op)]
            if rs:
                geo = math.exp(sum(math.log(v) for v in rs) / len(rs))
                print(f"# {device} {op}: geometric mean ratio {geo:.2f}x (min {min(rs):.2f}x, max {max(rs):.2f}x)")


if __name__ == "__main__":
    main()
