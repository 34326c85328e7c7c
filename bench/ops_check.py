"""What the compiled ops' check against the reference (engine/ops/verify.py) costs, per op, device and dtype.

The check runs once per machine, the first time an op is used compiled on a device and dtype; later processes
read the stored verdict. This times both in fresh processes, as a user meets them: "check" is the whole first use
(the check itself, in-process on the CPU, in a child process on CUDA, plus storing the verdict), "cached" is a
later process reading the verdict. Each figure is the median (and max) of --repeat fresh processes, each with a
private cache that holds a copy of this machine's finished builds (so nothing in the real cache is touched).

    python bench/ops_check.py                      # CPU, and CUDA when present
    python bench/ops_check.py --device cpu --repeat 5 --json
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
import torch
from engine.ops import dispatch, verify
name, device, dtype = sys.argv[1:4]
k = dispatch._kernel(name, device)
assert k is not None, dispatch._failures
if device == "cuda":
    torch.cuda.init()
t0 = time.perf_counter()
v, fresh = verify.ensure(name, device, dtype, k)
print(json.dumps({"seconds": time.perf_counter() - t0, "fresh": fresh, "ok": v["ok"], "detail": verify.describe(v)}))
"""


def one(cache, name, device, dtype):
    env = dict(os.environ, STUDIO_CACHE=str(cache), PYTHONPATH=str(ROOT))
    env.pop("STUDIO_OPS_FAULT", None)
    p = subprocess.run([sys.executable, "-c", CHILD, name, device, dtype], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"error: the timing process failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    from engine.ops import build, dispatch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], action="append", help="default: cpu, and cuda if present")
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per figure (default 3)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    for device in devices:
        folders = {}
        for name in dispatch.KERNEL_OPS:
            build.load(name, device)  # built once into the real cache; the timings use copies
            folders[name] = build.build_dir(name, device)
        for name in dispatch.KERNEL_OPS:
            for dtype in dispatch._DTYPES[device]:
                first, cached = [], []
                detail = ""
                for _ in range(args.repeat):
                    with tempfile.TemporaryDirectory() as tmp:
                        os.environ["STUDIO_CACHE"] = tmp
                        shutil.copytree(folders[name], build.build_dir(name, device),
                                        ignore=shutil.ignore_patterns("check-*", "*.lock"))
                        r = one(tmp, name, device, dtype)
                        assert r["fresh"], r
                        first.append(r["seconds"])
                        detail = r["detail"] if r["ok"] else "FAILED: " + r["detail"]
                        r = one(tmp, name, device, dtype)
                        assert not r["fresh"], r
                        cached.append(r["seconds"])
                rows.append({"op": name, "device": device, "dtype": dtype,
                             "check_s": statistics.median(first), "check_max_s": max(first),
                             "cached_ms": statistics.median(cached) * 1e3, "verdict": detail})
    if args.json:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median (max) of {args.repeat} processes")
    print(f"{'op':<10} {'device':<6} {'dtype':<9} {'check s':>14} {'cached ms':>10}  verdict")
    for r in rows:
        print(f"{r['op']:<10} {r['device']:<6} {r['dtype']:<9} {r['check_s']:>7.2f} ({r['check_max_s']:.2f}) "
              f"{r['cached_ms']:>10.1f}  {r['verdict']}")


if __name__ == "__main__":
    main()
