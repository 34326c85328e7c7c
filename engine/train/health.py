"""Training health: warnings a user can act on, read from the statistics a run writes.

Each check takes plain data (stats.jsonl records, feature arrays, a run folder) and returns a list of
HealthWarning: one line saying what is seen and what to do. The trainer calls Monitor.tick() once per tick and
writes the lines to log.txt; the dashboard calls check_run(run_dir), which also sees what only an outside
observer can (a process that stopped ticking).

    D overfitting   ADA p at its ceiling or rising near ADA's top speed; the real sign near 1
    divergence      a loss that is NaN/Inf or several times its recent level; NaN-skipped steps piling up
    mode collapse   fake features far less spread than real ones (check_mode_collapse, given features; at
                    snapshots with metrics, from the fake_spread_ratio the FID/KID computation records)
    copying         fakes nearer the training images than those are to each other (check_copying, given
                    features; at snapshots with metrics, from the fake_close_share the FID/KID computation records;
                    engine/metrics/copies.py has the full check, `python -m engine copies`)
    stalled         no tick for several tick-times (check_stalled, from status.json and stats.jsonl)
    disk            too little free space for the next snapshot

best_snapshot(run_dir) names the snapshot with the lowest FID/KID measured so far ('best: kimg 840, KID 0.021').

Records are dicts as in stats.jsonl: {'Progress/kimg': {'num', 'mean', 'std'}, ..., 'timestamp': seconds}.
"""

import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import runs
from engine.train.options import ADA_TARGET

KIMG = "Progress/kimg"
AUGMENT = "Progress/augment"
SIGN_REAL = "Loss/signs/real"
LOSS_G = "Loss/G/loss"
LOSS_D = "Loss/D/loss"
NAN_SKIPS = "Progress/nan_skips"  # training steps skipped in the tick for a NaN/Inf loss or gradient
SEC_PER_TICK = "Timing/sec_per_tick"
MAINTENANCE = "Timing/maintenance_sec"


@dataclass(frozen=True)
class HealthWarning:
    kind: str      # overfitting | divergence | collapse | copying | stalled | disk
    message: str   # one line: what is seen, then what to do

    def __str__(self):
        return f"warning: {self.message}"


@dataclass
class Limits:
    """Where each warning starts. The defaults suit NVIDIA's presets and the small CPU ones alike."""
    window: int = 5                  # ticks looked at for trends and sustained values
    p_ceiling: float = 1.0           # ADA clamps p to [0, 1]
    p_ceiling_margin: float = 0.05   # p within this of the ceiling counts as at the ceiling
    p_rise_min: float = 0.05         # ignore smaller rises of p
    p_rise_speed: float = 0.75       # share of ADA's top speed (1 per ada_kimg) that counts as rising fast
    sign_real_max: float = 0.9       # a real sign this near 1 over the whole window: D is sure of every real
    explode_ratio: float = 5.0       # a loss this many times its recent median ...
    explode_margin: float = 5.0      # ... and this much above it has exploded
    nan_skips_max: int = 3           # this many NaN-skipped steps within the window
    collapse_ratio: float = 0.5      # fake feature spread below this share of the real one
    copy_share: float = 0.25         # fakes nearer a real than the reals' 5th-percentile spacing (chance: 5%)
    stall_factor: float = 4.0        # no tick for this many tick-times ...
    stall_min_sec: float = 120.0     # ... and at least this long
    disk_snapshots: float = 3.0      # free space for fewer than this many snapshots ...
    disk_min_bytes: int = 512 * 2 ** 20  # ... or below this: warn


def value(record, key):
    """The mean of statistic `key` in one record (a plain number is taken as it is), or None."""
    entry = record.get(key) if isinstance(record, dict) else None
    if isinstance(entry, dict):
        entry = entry.get("mean")
    if isinstance(entry, bool) or not isinstance(entry, (int, float)):
        return None
    return float(entry)


def series(records, key):
    """[(kimg, value)] of the records that have `key` (kimg None where the record lacks it)."""
    return [(value(r, KIMG), v) for r in records if (v := value(r, key)) is not None]


def _kimg_text(kimg):
    return f"kimg {kimg:.1f}" if kimg is not None else "the last tick"


# --------------------------------------------------------------------------------------------------------------
# From the statistics of each tick


def check_overfitting(records, ada_kimg=500.0, ada_target=ADA_TARGET, adaptive=True, limits=None):
    """D overfitting: ADA p at its ceiling or rising near ADA's top speed, or the real sign near 1.

    adaptive: whether ADA sets p (--aug ada); a fixed p (--aug fixed --p X) says nothing about overfitting, and
    the real sign is judged only without ADA.
    """
    lim = limits or Limits()
    out = []
    p = series(records, AUGMENT)[-lim.window:] if adaptive else []
    if p:
        kimg, p_now = p[-1]
        if p_now >= lim.p_ceiling - lim.p_ceiling_margin:
            out.append(HealthWarning("overfitting", (
                f"ADA p is at its ceiling ({p_now:.2f} at {_kimg_text(kimg)}): D overfits even with full "
                f"augmentation and augmentations may leak into the images; add images or --mirror 1, or stop and "
                f"keep the best snapshot so far")))
        elif len(p) >= 3 and p[0][0] is not None and kimg is not None and kimg > p[0][0]:
            rise = p_now - p[0][1]
            top_speed_rise = (kimg - p[0][0]) / max(float(ada_kimg), 1e-9)
            if rise >= lim.p_rise_min and rise >= lim.p_rise_speed * top_speed_rise:
                out.append(HealthWarning("overfitting", (
                    f"ADA p is rising fast ({p[0][1]:.2f} -> {p_now:.2f} over {kimg - p[0][0]:.1f} kimg, near "
                    f"ADA's top speed): D is overfitting the dataset quickly; add images or --mirror 1, and watch "
                    f"the fakes for leaking augmentations (rotated or tinted images)")))
    # With ADA on, a high real sign is what raises p: the two p checks above say when that stops sufficing.
    sign = [v for _, v in series(records, SIGN_REAL)[-lim.window:]] if not adaptive else []
    if len(sign) >= min(3, lim.window) and min(sign) >= lim.sign_real_max:
        out.append(HealthWarning("overfitting", (
            f"D is overfitting: its real sign has stayed at {sign[-1]:.2f} (1 = it is sure of every real image; ADA "
            f"would hold it at {ada_target:g}); use --aug ada, add images or --mirror 1; the best snapshot is "
            f"likely an earlier one")))
    return out


def check_divergence(records, limits=None):
    """A loss that became NaN/Inf or exploded, or NaN-skipped steps piling up."""
    lim = limits or Limits()
    out = []
    for key, name in ((LOSS_G, "G loss"), (LOSS_D, "D loss")):
        s = series(records, key)
        if not s:
            continue
        kimg, now = s[-1]
        if not math.isfinite(now):
            out.append(HealthWarning("divergence", (
                f"the {name} is {now} at {_kimg_text(kimg)}: training has diverged; resume from the last "
                f"snapshot with a lower --glr/--dlr, a higher --gamma or --precision fp32")))
            continue
        recent = [v for _, v in s[-2:]]
        before = [abs(v) for _, v in s[:-2][-2 * lim.window:] if math.isfinite(v)]
        if len(before) < 3:
            continue
        base = statistics.median(before)
        level = sum(recent) / len(recent)
        if level > lim.explode_ratio * base and level > base + lim.explode_margin:
            out.append(HealthWarning("divergence", (
                f"the {name} exploded to {level:.3g} at {_kimg_text(kimg)} (it was about {base:.3g}): training "
                f"is diverging; if it does not come back within a few ticks, resume from an earlier snapshot "
                f"with a lower --glr/--dlr or a higher --gamma")))
    skips = series(records, NAN_SKIPS)[-lim.window:]
    total = sum(v for _, v in skips if math.isfinite(v))
    if total >= lim.nan_skips_max:
        out.append(HealthWarning("divergence", (
            f"{total:.0f} training steps were skipped for NaN/Inf values in the last {len(skips)} ticks: training "
            f"is unstable; lower --glr/--dlr, raise --gamma or use --precision fp32, resuming from a snapshot "
            f"from before the skips")))
    return out


def check_records(records, ada_kimg=500.0, ada_target=ADA_TARGET, adaptive=True, limits=None):
    """Every check that needs only the statistics records."""
    return (check_overfitting(records, ada_kimg=ada_kimg, ada_target=ada_target, adaptive=adaptive, limits=limits)
            + check_divergence(records, limits=limits))


# --------------------------------------------------------------------------------------------------------------
# Mode collapse, from features of real and generated images


def feature_spread(features):
    """Root mean squared distance of feature vectors [N, D] from their mean (N >= 2)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {list(x.shape)}")
    # mean |x|^2 - |mean x|^2: no [N, D] temporary, which matters for 50k x 2048 features
    mean = x.mean(axis=0)
    return float(np.sqrt(max(np.einsum("ij,ij->", x, x) / x.shape[0] - mean @ mean, 0.0)))


def check_mode_collapse(real_features, fake_features, kimg=None, limits=None):
    """Fakes far less diverse than reals: fake feature spread below collapse_ratio of the real one.

    real_features, fake_features: [N, D] arrays from one feature detector (e.g. the FID Inception features).
    """
    lim = limits or Limits()
    real, fake = feature_spread(real_features), feature_spread(fake_features)
    if real <= 0:
        return []
    ratio = fake / real
    if ratio >= lim.collapse_ratio:
        return []
    return [HealthWarning("collapse", (
        f"mode collapse: generated images are far less varied than the dataset at {_kimg_text(kimg)} (feature "
        f"spread {ratio:.0%} of the reals'); resume from an earlier snapshot, use --aug ada with more data, or a "
        f"higher --gamma"))]


def check_metric_spread(metrics, limits=None):
    """Mode collapse from the metric records ({name: [metric-<name>.jsonl records]}): the newest snapshot's
    fake_spread_ratio (fake / real feature spread, written by the FID/KID computation) is below collapse_ratio
    and has fallen well below the run's best. An untrained network's fakes are alike too, so only a drop counts.
    """
    lim = limits or Limits()
    points = []
    for records in (metrics or {}).values():
        for r in records:
            ratio = r.get("fake_spread_ratio")
            if isinstance(ratio, (int, float)) and math.isfinite(ratio) and isinstance(r.get("snapshot_pkl"), str):
                points.append((r.get("timestamp") or 0, r["snapshot_pkl"], float(ratio)))
    if len(points) < 2:
        return []
    points.sort()
    _, snap, now = points[-1]
    best = max(ratio for _, _, ratio in points[:-1])
    if now >= lim.collapse_ratio or now >= 0.7 * best:
        return []
    kimg = runs.snapshot_kimg(snap)
    return [HealthWarning("collapse", (
        f"mode collapse: generated images are far less varied than the dataset at {_kimg_text(kimg)} (feature "
        f"spread {now:.0%} of the reals', down from {best:.0%}); resume from the snapshot before the drop, use "
        f"--aug ada with more data, or a higher --gamma"))]


# --------------------------------------------------------------------------------------------------------------
# Copying, from features of real and generated images


def _copying_warning(share, kimg):
    return HealthWarning("copying", (
        f"the network may be copying its training images at {_kimg_text(kimg)}: {share:.0%} of fakes are nearer a "
        f"training image than 95% of training images are to any other (about 5% for new images); check with "
        f"`python -m engine copies` (Train tab: Is it copying?), keep an earlier snapshot, add images or more augmentation (--aug ada, "
        f"--mirror 1)"))


def check_copying(real_features, fake_features, kimg=None, limits=None):
    """Fakes coming closer to the training set than its images are to each other (Inception features [N, D]):
    the share of fakes whose nearest real is nearer than the reals' 5th percentile of nearest-other distances
    reaches copy_share (5 times chance)."""
    from engine.metrics.copies import feature_copy_figures

    lim = limits or Limits()
    figures = feature_copy_figures(real_features, fake_features)
    if figures is None or figures["close_share"] < lim.copy_share:
        return []
    return [_copying_warning(figures["close_share"], kimg)]


def check_metric_copies(metrics, limits=None):
    """Copying from the metric records ({name: records}): the newest snapshot's fake_close_share (written by the
    FID/KID computation) reaches copy_share."""
    lim = limits or Limits()
    points = []
    for records in (metrics or {}).values():
        for r in records:
            share = r.get("fake_close_share")
            if isinstance(share, (int, float)) and math.isfinite(share) and isinstance(r.get("snapshot_pkl"), str):
                points.append((r.get("timestamp") or 0, r["snapshot_pkl"], float(share)))
    if not points:
        return []
    _, snap, share = max(points)
    if share < lim.copy_share:
        return []
    return [_copying_warning(share, runs.snapshot_kimg(snap))]


# --------------------------------------------------------------------------------------------------------------
# From outside the process: a run folder


def tick_seconds(records, window=10):
    """The longest recent tick including its maintenance (grids, snapshot, metrics), or None before a tick."""
    times = []
    for r in records[-window:]:
        t = value(r, SEC_PER_TICK)
        if t is None:
            continue
        times.append(t + (value(r, MAINTENANCE) or 0.0))
    return max(times) if times else None


def check_stalled(run_dir, records=None, status=None, now=None, limits=None):
    """A running process that has not ticked for several tick-times (status.json and stats.jsonl)."""


    lim = limits or Limits()
    status = runs.read_status(run_dir) if status is None else status
    if not status or status.get("state") != "running" or not status.get("alive", True):
        return []
    records = runs.read_stats(run_dir) if records is None else records
    if not records:
        return []  # the first tick includes start-up, which has no measure to compare against
    last = records[-1].get("timestamp")
    typical = tick_seconds(records)
    if not isinstance(last, (int, float)) or not typical:
        return []
    now = time.time() if now is None else now
    quiet = now - float(last)
    if quiet < max(lim.stall_factor * typical, lim.stall_min_sec):
        return []
    from engine.timefmt import format_time

    return [HealthWarning("stalled", (
        f"no tick for {format_time(quiet)} (a tick has taken up to {format_time(typical)}): the training process "
        f"may be stuck; read the end of log.txt, then Stop and Resume from the last snapshot"))]


def check_disk(run_dir, snapshot_bytes=None, limits=None):
    """Too little free space on the run folder's disk for the next snapshot."""


    lim = limits or Limits()
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return []
    if snapshot_bytes is None:
        latest = runs.latest_snapshot(run_dir)
        try:
            snapshot_bytes = latest.stat().st_size if latest else 0
        except OSError:
            snapshot_bytes = 0
    if free >= max(lim.disk_snapshots * snapshot_bytes, lim.disk_min_bytes):
        return []
    size = f" and a snapshot takes {snapshot_bytes / 2 ** 30:.2f} GiB" if snapshot_bytes else ""
    return [HealthWarning("disk", (
        f"only {free / 2 ** 30:.2f} GiB free on the disk of {run_dir}{size}: free space (old snapshots, other "
        f"runs) before the next snapshot, or writing it will fail"))]


def check_run(run_dir, now=None, limits=None):
    """Every warning that a run folder's files show (for the dashboard): statistics, stall and disk."""


    records = runs.read_stats(run_dir)
    options = runs.read_options(run_dir) or {}
    ada_kimg = options.get("ada_kimg") if isinstance(options.get("ada_kimg"), (int, float)) else 500.0
    ada_target = options.get("ada_target") if isinstance(options.get("ada_target"), (int, float)) else ADA_TARGET
    adaptive = options.get("aug", "ada") == "ada"
    out = check_records(records, ada_kimg=ada_kimg, ada_target=ada_target, adaptive=adaptive, limits=limits)
    metrics = runs.read_metrics(run_dir)
    out += check_metric_spread(metrics, limits=limits)
    out += check_metric_copies(metrics, limits=limits)
    out += check_stalled(run_dir, records=records, now=now, limits=limits)
    status = runs.read_status(run_dir)
    if status and status.get("state") == "running":
        out += check_disk(run_dir, limits=limits)
    return out


def as_markdown(warnings):
    """Warnings as a bulleted Markdown list ('' when there are none)."""
    return "\n".join(f"- ⚠ {w.message}" for w in warnings)


# --------------------------------------------------------------------------------------------------------------
# In the trainer


class Monitor:
    """Checks each tick's statistics, the disk and the metrics; returns the lines to log: each kind of warning
    again only every `repeat_ticks` ticks while it lasts (at once when it comes back after clearing), and
    'best: kimg 840, KID 0.021 (network-snapshot-000840.pt)' whenever a measured snapshot becomes the best."""

    def __init__(self, run_dir, ada_kimg=500.0, ada_target=ADA_TARGET, adaptive=True, repeat_ticks=50, history=100,
                 limits=None):
        self.run_dir = Path(run_dir) if run_dir else None
        self.ada_kimg = ada_kimg
        self.ada_target = ada_target
        self.adaptive = adaptive
        self.repeat_ticks = repeat_ticks
        self.history = history
        self.limits = limits or Limits()
        self.records = []
        self.ticks = 0
        self._last_logged = {}  # kind -> tick it was last logged
        self._best = None       # the best snapshot last named in the log
        self._failed = False

    def tick(self, entries):
        """entries: this tick's stats record -> list of 'warning: ...' lines (usually empty). Never raises."""
        self.ticks += 1
        try:
            self.records = (self.records + [entries])[-self.history:]
            found = check_records(self.records, ada_kimg=self.ada_kimg, ada_target=self.ada_target,
                                  adaptive=self.adaptive, limits=self.limits)
            best = None
            if self.run_dir is not None:
                metrics = runs.read_metrics(self.run_dir)
                found += check_disk(self.run_dir, limits=self.limits)
                found += check_metric_spread(metrics, limits=self.limits)
                found += check_metric_copies(metrics, limits=self.limits)
                best = best_snapshot(self.run_dir, metrics=metrics)
        except Exception as e:  # a health check must never stop training
            if self._failed:
                return []
            self._failed = True
            return [f"note: training health checks are off for this run ({type(e).__name__}: {e})"]
        lines = []
        kinds = set()
        for w in found:
            kinds.add(w.kind)
            last = self._last_logged.get(w.kind)
            if last is None or self.ticks - last >= self.repeat_ticks or last == self.ticks:
                lines.append(str(w))
                self._last_logged[w.kind] = self.ticks
        for kind in list(self._last_logged):
            if kind not in kinds:
                del self._last_logged[kind]
        if best is not None and best["snapshot"] != self._best:
            self._best = best["snapshot"]
            lines.append(f"{best['label']} ({best['snapshot']})")
        return lines


# --------------------------------------------------------------------------------------------------------------
# The best snapshot so far, from the metrics computed at snapshots


def best_snapshot(run_dir, metric=None, metrics=None):
    """The snapshot with the lowest FID/KID in the run's metric-<name>.jsonl files, or None when none is measured.

    metric: the metric to rank by (e.g. 'kid1k'); None: the one measured at the most snapshots (ties: fid first).
    -> {'metric', 'value', 'snapshot' (file name), 'path' (Path, None when the file is gone), 'kimg', 'label'}
    where label reads 'best: kimg 840, KID 0.021'. FID and KID are both lower-is-better.
    metrics: the run's metric records when already read ({name: records}, as runs.read_metrics returns).
    """


    run_dir = Path(run_dir)
    points = {}
    for name, records in (runs.read_metrics(run_dir) if metrics is None else metrics).items():
        for r in records:
            value_ = (r.get("results") or {}).get(name) if isinstance(r.get("results"), dict) else None
            snap = r.get("snapshot_pkl")
            if not isinstance(value_, (int, float)) or not math.isfinite(value_) or not isinstance(snap, str):
                continue
            kimg = runs.snapshot_kimg(snap)
            points.setdefault(name, {})[snap] = (float(value_), kimg)  # a re-measured snapshot: the latest value
    if not points:
        return None
    if metric is None:
        metric = min(points, key=lambda n: (-len(points[n]), not n.startswith("fid"), n))
    elif metric not in points:
        return None
    snap, (best, kimg) = min(points[metric].items(), key=lambda kv: (kv[1][0], kv[1][1] or 0))
    path = run_dir / snap
    kind = "KID" if metric.startswith("kid") else "FID"
    shown = f"{best:.4f}" if kind == "KID" else f"{best:.2f}"
    return {"metric": metric, "value": best, "snapshot": snap, "path": path if path.is_file() else None,
            "kimg": kimg, "label": f"best: kimg {f'{kimg:g}' if kimg is not None else '?'}, {kind} {shown}"}
