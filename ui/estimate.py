"""How long a training will take here: sec/kimg measured on this machine, never guessed.

Two sources, best first: the ticks of earlier comparable runs (same preset, resolution, dataset size and batch),
else a short warm-up of the chosen settings — the real trainer started on the chosen dataset for a few small
ticks in a scratch folder, stopped as soon as two ticks after the first are timed. Start-up is never counted:
tick 0 (one step with the first-call costs) and the first tick of every process are left out. A figure from
earlier runs is the median over their ticks; runs that failed, and runs far off the others (another load on the
machine, a sleep), are left out. Warm-ups are kept in <workdir>/.supervisor/estimates.json so the figure is still
there after a reload.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine import compat
from engine.errors import UserError
from engine.timefmt import format_time
from engine.fsutil import write_json_atomic
from engine.runs import read_options, read_stats, run_dirs, steady_ticks
from ui.common import ROOT
from ui.supervisor import Supervisor

WARMUP_TIMEOUT_S = 240


@dataclass
class Estimate:
    sec_per_kimg: float
    source: str  # "run <name>", "<n> runs" or "warm-up"
    preset: str
    resolution: int
    batch: int | None
    measured_s: float = 0.0
    ticks: int = 0  # how many timed ticks the figure rests on
    low: float = 0.0  # the spread of those ticks (runs: of the runs' medians)
    high: float = 0.0
    runs: int = 0
    size: int = 0
    startup_s: float = 0.0  # from the launch to the end of tick 0 (set-up and the first step)
    overhead_per_kimg: float = 0.0  # snapshots and grids, in seconds per kimg trained


ANOMALY_FACTOR = 2.0  # a run whose median is this far from the others' median ran under other conditions


def _value(rec: dict, key: str) -> float | None:
    v = rec.get(key)
    v = v.get("mean") if isinstance(v, dict) else v
    return float(v) if isinstance(v, (int, float)) else None


def _timed_ticks(stats: list[dict]) -> list[float]:
    """sec/kimg of the ticks that are not start-up (see _timed_records)."""
    return [_value(r, "Timing/sec_per_kimg") for r in steady_ticks(stats)]


def _startup_s(stats: list[dict]) -> float | None:
    """Set-up plus tick 0 (one step with its first-call costs) of a run's first process."""
    if not stats or _value(stats[0], "Progress/tick") != 0:
        return None
    return (_value(stats[0], "Timing/maintenance_sec") or 0.0) + (_value(stats[0], "Timing/sec_per_tick") or 0.0)


def _overhead_per_kimg(stats: list[dict]) -> float:
    """Seconds of snapshots and grids (the maintenance of the timed ticks) per kimg trained."""
    recs = steady_ticks(stats)
    kimg = sum((_value(r, "Timing/sec_per_tick") or 0.0) / (_value(r, "Timing/sec_per_kimg") or 1.0) for r in recs)
    maint = sum(_value(r, "Timing/maintenance_sec") or 0.0 for r in recs)
    return maint / kimg if kimg > 0 else 0.0


def _sec_per_kimg(stats: list[dict]) -> float | None:
    """Median sec/kimg of the ticks after start-up."""
    vals = _timed_ticks(stats)
    return statistics.median(vals) if vals else None


def _run_facts(run_dir: Path, launch: dict | None) -> dict:
    opts = read_options(run_dir) or {}
    cli = opts.get("cli") if isinstance(opts.get("cli"), dict) else {}
    cfg = (launch or {}).get("cfg") or cli.get("cfg") or opts.get("cfg")
    if cfg is None:
        parts = run_dir.name.split("-")
        cfg = parts[2] if len(parts) > 2 else None
    ds = opts.get("dataset") if isinstance(opts.get("dataset"), dict) else {}
    res = opts.get("resolution") or (opts.get("training_set_kwargs") or {}).get("resolution") or ds.get("resolution")
    b = ((launch or {}).get("options") or {}).get("batch") or cli.get("batch") or opts.get("batch_size") or \
        opts.get("batch")
    return {"cfg": cfg, "resolution": res, "size": ds.get("size"), "batch": b}


def _run_matches(run_dir: Path, preset: str, resolution: int, batch: int | None, launch: dict | None,
                 size: int = 0) -> bool:
    f = _run_facts(run_dir, launch)
    if f["cfg"] != preset or f["resolution"] is None or int(f["resolution"]) != int(resolution):
        return False
    if size and f["size"] and int(f["size"]) != int(size):
        return False
    if batch and f["batch"] and int(f["batch"]) != int(batch):
        return False
    return True


def from_previous_runs(sup: Supervisor, preset: str, resolution: int, batch: int | None,
                       size: int = 0) -> Estimate | None:
    """The median sec/kimg of comparable earlier runs, each run summed up by the median of its timed ticks."""
    per_run = []
    for v in sup.runs():
        if v.run_dir is None or v.state in ("failed", "unknown") or \
                not _run_matches(v.run_dir, preset, resolution, batch, v.launch, size):
            continue
        stats = read_stats(v.run_dir)
        ticks = _timed_ticks(stats)
        if ticks:
            per_run.append((v.name, statistics.median(ticks), len(ticks), _startup_s(stats),
                            _overhead_per_kimg(stats)))
    if not per_run:
        return None
    mid = statistics.median(r[1] for r in per_run)
    kept = [r for r in per_run if mid / ANOMALY_FACTOR <= r[1] <= mid * ANOMALY_FACTOR]
    spk = statistics.median(r[1] for r in kept)
    source = f"run {kept[0][0]}" if len(kept) == 1 else f"{len(kept)} runs"
    startups = [r[3] for r in kept if r[3] is not None]
    return Estimate(spk, source, preset, resolution, batch, ticks=sum(r[2] for r in kept),
                    low=min(r[1] for r in kept), high=max(r[1] for r in kept), runs=len(kept), size=size,
                    startup_s=statistics.median(startups) if startups else 0.0,
                    overhead_per_kimg=statistics.median(r[4] for r in kept))


def _saved_path(sup: Supervisor) -> Path:
    return Path(sup.workdir) / ".supervisor" / "estimates.json"


def _key(preset: str, resolution: int, size: int, batch: int | None) -> str:
    return f"{preset}/{int(resolution)}px/{int(size or 0)}img/b{int(batch or 0)}"


def saved_warm_up(sup: Supervisor, preset: str, resolution: int, batch: int | None, size: int = 0) -> Estimate | None:
    try:
        rec = json.loads(_saved_path(sup).read_text()).get(_key(preset, resolution, size, batch))
        return Estimate(**rec) if isinstance(rec, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def _save_warm_up(sup: Supervisor, est: Estimate) -> None:
    path = _saved_path(sup)
    try:
        saved = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        saved = {}
    saved[_key(est.preset, est.resolution, est.size, est.batch)] = asdict(est)
    write_json_atomic(path, saved, indent=1)


def known(sup: Supervisor, resolution: int, size: int, preset: str, batch: int | None) -> Estimate | None:
    """What is known without training anything: earlier runs, else a warm-up measured before."""
    return from_previous_runs(sup, preset, resolution, batch, size) or saved_warm_up(sup, preset, resolution, batch,
                                                                                      size)


def warm_up(workdir: Path, data: Path, preset: str, resolution: int, batch: int | None,
            timeout: float = WARMUP_TIMEOUT_S) -> Estimate:
    """Train `preset` on `data` for a few short ticks in <workdir>/.estimate and time them."""
    scratch = workdir / ".estimate"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    # Ticks of a few minibatches each: long enough to time, short enough to finish in a minute on a CPU.
    b = batch or 32
    tick = max(0.004, 4 * b / 1000)
    cmd = [sys.executable, "-m", "engine", "train", f"--data={data}", f"--outdir={scratch}", f"--cfg={preset}",
           f"--kimg={tick * 40:g}", f"--tick={tick:g}", "--snap=1000", "--metrics=none", "--seed=0"]
    if batch:
        cmd.append(f"--batch={batch}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    log = scratch / "console.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, **compat.detached_popen_kwargs())
    spk, stats = None, []
    try:
        while time.time() - t0 < timeout:
            runs = run_dirs(scratch)
            stats = read_stats(runs[0]) if runs else []
            if len(stats) >= 3:
                spk = _sec_per_kimg(stats)
                break
            if proc.poll() is not None:
                spk = _sec_per_kimg(stats)
                break
            time.sleep(0.3)
    finally:
        if proc.poll() is None:
            compat.kill_tree(proc.pid)
            if proc.poll() is None:
                proc.kill()
        proc.wait()
    if spk is None:
        lines = [ln for ln in log.read_text("utf-8", errors="replace").splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "no output")
        shutil.rmtree(scratch, ignore_errors=True)
        raise UserError(f"the warm-up of preset {preset} did not finish two ticks: {why}")
    shutil.rmtree(scratch, ignore_errors=True)
    ticks = _timed_ticks(stats)
    # The warm-up writes no snapshot after tick 0, so it has no figure for their cost.
    return Estimate(spk, "warm-up", preset, resolution, batch, measured_s=time.time() - t0, ticks=len(ticks),
                    low=min(ticks), high=max(ticks), startup_s=_startup_s(stats) or 0.0)


def estimate(sup: Supervisor, data: Path, resolution: int, channels: int, preset: str,
             batch: int | None, size: int = 0) -> Estimate:
    """Earlier comparable runs, else a new warm-up (kept for the next time)."""
    found = from_previous_runs(sup, preset, resolution, batch, size)
    if found is not None:
        return found
    est = warm_up(sup.workdir, data, preset, resolution, batch)
    est.size = size
    _save_warm_up(sup, est)
    return est


def describe(est: Estimate, kimg: float) -> str:
    spread = f"{est.low:.1f}–{est.high:.1f} s/kimg" if est.high > est.low else ""
    if est.source == "warm-up":
        where = (f"measured by a {est.measured_s:.0f} s warm-up of these settings, {est.ticks} timed "
                 f"tick{'s' if est.ticks != 1 else ''}{', ' + spread if spread else ''}")
        sure = "a first figure: a long run under the same load usually lands within a third of it"
    else:
        same = "same preset, resolution" + (", dataset size" if est.size else "") + (", batch" if est.batch else "")
        where = (f"median of {est.ticks} timed tick{'s' if est.ticks != 1 else ''} from {est.source} ({same})"
                 f"{'; the runs went at ' + spread if spread and est.runs > 1 else ''}")
        sure = ("fairly sure: several runs agree" if est.runs >= 3 and est.high <= 1.5 * est.low
                else "rough: few runs to compare, or they differ; other load on the machine changes it")
    text = f"**{est.sec_per_kimg:.1f} s per kimg** on this machine ({where}; start-up not counted). "
    if kimg > 0:
        train_s = est.sec_per_kimg * kimg
        extra_s = est.overhead_per_kimg * kimg
        total = train_s + extra_s + est.startup_s
        parts = [f"training {format_time(train_s, 'page')}"]
        if extra_s >= 1:
            parts.append(f"snapshots and grids {format_time(extra_s, 'page')}")
        parts.append(f"start-up {format_time(est.startup_s, 'page')}" if est.startup_s >= 1 else "plus start-up")
        text += (f"{kimg:g} kimg will take about **{format_time(total, 'page')}** ({', '.join(parts)}). "
                 f"How sure: {sure}.")
    return text
