"""How long a training will take here: sec/kimg measured on this machine, never guessed.

Two sources, best first: a finished tick of an earlier run with the same preset and resolution (its
Timing/sec_per_kimg), else a short warm-up of the chosen settings — the real trainer started on the chosen
dataset for a few small ticks in a scratch folder, stopped as soon as two ticks after the first are timed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.train.runs import read_stats
from ui.common import ROOT, fmt_duration
from ui.supervisor import Supervisor

WARMUP_TIMEOUT_S = 240


@dataclass
class Estimate:
    sec_per_kimg: float
    source: str  # "run <name>" or "warm-up"
    preset: str
    resolution: int
    batch: int | None
    measured_s: float = 0.0


def _sec_per_kimg(stats: list[dict]) -> float | None:
    """Median sec/kimg of the ticks after the first (the first holds start-up and one-off costs)."""
    vals = []
    for rec in stats[1:]:
        v = rec.get("Timing/sec_per_kimg")
        v = v.get("mean") if isinstance(v, dict) else v
        if isinstance(v, (int, float)) and v > 0:
            vals.append(float(v))
    if not vals:
        return None
    vals.sort()
    return vals[len(vals) // 2]


def _run_matches(run_dir: Path, preset: str, resolution: int, batch: int | None, launch: dict | None) -> bool:
    try:
        opts = json.loads((run_dir / "training_options.json").read_text())
    except (OSError, ValueError):
        opts = {}
    cli = opts.get("cli") if isinstance(opts.get("cli"), dict) else {}
    cfg = (launch or {}).get("cfg") or cli.get("cfg") or opts.get("cfg")
    if cfg is None:
        parts = run_dir.name.split("-")
        cfg = parts[2] if len(parts) > 2 else None
    if cfg != preset:
        return False
    res = opts.get("resolution") or (opts.get("training_set_kwargs") or {}).get("resolution") or \
        (opts.get("dataset") or {}).get("resolution")
    if res is not None and int(res) != int(resolution):
        return False
    if res is None:
        return False
    if batch:
        b = (launch or {}).get("options", {}).get("batch") or cli.get("batch") or opts.get("batch_size") or \
            opts.get("batch")
        if b and int(b) != int(batch):
            return False
    return True


def from_previous_runs(sup: Supervisor, preset: str, resolution: int, batch: int | None) -> Estimate | None:
    for v in sup.runs():
        if v.run_dir is None or not _run_matches(v.run_dir, preset, resolution, batch, v.launch):
            continue
        spk = _sec_per_kimg(read_stats(v.run_dir))
        if spk:
            return Estimate(spk, f"run {v.name}", preset, resolution, batch)
    return None


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
                                stdin=subprocess.DEVNULL, start_new_session=True)
    spk = None
    try:
        while time.time() - t0 < timeout:
            runs = [p for p in scratch.iterdir() if p.is_dir()]
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
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        proc.wait()
    if spk is None:
        lines = [ln for ln in log.read_text("utf-8", errors="replace").splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "no output")
        shutil.rmtree(scratch, ignore_errors=True)
        raise UserError(f"the warm-up of preset {preset} did not finish two ticks: {why}")
    shutil.rmtree(scratch, ignore_errors=True)
    return Estimate(spk, "warm-up", preset, resolution, batch, measured_s=time.time() - t0)


def estimate(sup: Supervisor, data: Path, resolution: int, channels: int, preset: str,
             batch: int | None) -> Estimate:
    return from_previous_runs(sup, preset, resolution, batch) or warm_up(sup.workdir, data, preset, resolution,
                                                                         batch)


def describe(est: Estimate, kimg: float) -> str:
    where = (f"measured by a {est.measured_s:.0f} s warm-up of these settings" if est.source == "warm-up"
             else f"from {est.source}, same preset and resolution")
    text = (f"**{est.sec_per_kimg:.1f} s per kimg** on this machine ({where}). ")
    if kimg > 0:
        text += f"{kimg:g} kimg will take about **{fmt_duration(est.sec_per_kimg * kimg)}**, plus snapshots."
    return text
