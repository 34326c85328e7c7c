"""Run folders: writing them (trainer, rank 0 only) and reading them (dashboard, resume).

<outdir>/<NNNNN>-<desc>/ holds training_options.json, log.txt, stats.jsonl, status.json, reals.png,
fakes_init.png, fakesNNNNNN.png, network-snapshot-NNNNNN.pt and metric-<name>.jsonl. Every reader here copes
with a run that is being written or was killed mid-write: a torn last line of a .jsonl is skipped, a missing or
half-written status gives None.
"""

import json
import os
import re
import time
from pathlib import Path

from engine.fsutil import atomic_open, write_json_atomic
from engine.procs import pid_alive

RUN_RE = re.compile(r"^(\d{5})-(.+)$")
# NVIDIA's names (KKKKKK = kimg, rounded down), or with _III (the images past that kimg, 000-999) for a second and
# later file within one kimg. "_" sorts after ".", so a plain sort of the names is also the order of kimg.
SNAPSHOT_RE = re.compile(r"^network-snapshot-(\d{6})(?:_(\d{3}))?\.pt$")
FAKES_RE = re.compile(r"^fakes(\d{6})(?:_(\d{3}))?\.png$")
# Any snapshot name a record may carry: ours (.pt) or NVIDIA's (.pkl), as a file name or a path.
ANY_SNAPSHOT_RE = re.compile(r"network-snapshot-(\d{6})(?:_(\d{3}))?\.(?:pt|pkl)$")

FAKES_INIT = "fakes_init.png"  # the grid drawn before the first step
REALS = "reals.png"  # a grid of the training images

STATES = ("running", "stopped", "finished", "failed")
# Every network file a user may pick or upload: our snapshots and exports, and NVIDIA's pickles.
NETWORK_SUFFIXES = (".pt", ".pkl")
SNAPSHOT_PREFIX = "network-snapshot-"
STATUS_FILE = "status.json"
OPTIONS_FILE = "training_options.json"
STATS_FILE = "stats.jsonl"
LOG_FILE = "log.txt"
# A stop request that needs no signal (Windows has none that lets a process finish its step): the trainer of the
# run finishes its step, writes a snapshot and exits as on SIGTERM when this file appears after it started.
STOP_FILE = "stop.request"


def is_network_file(name):
    """True for a file name ending in one of NETWORK_SUFFIXES (any case)."""
    return Path(str(name)).suffix.lower() in NETWORK_SUFFIXES


def run_number(name):
    """'00003' of a run folder name '00003-emoji16-tiny', or None for any other name."""
    m = RUN_RE.match(str(name))
    return m.group(1) if m else None


def run_dirs(outdir):
    """Every run folder (<NNNNN>-<desc>) under outdir, in name order; [] when outdir does not exist."""
    outdir = Path(outdir)
    try:
        return sorted(p for p in outdir.iterdir() if RUN_RE.match(p.name) and p.is_dir())
    except OSError:
        return []


def log_path(run_dir):
    """<run_dir>/log.txt: the trainer's console lines."""
    return Path(run_dir) / LOG_FILE


def request_stop(run_dir, who="the dashboard"):
    """Ask the trainer of `run_dir` to stop after its step (with a snapshot), on any platform."""
    path = Path(run_dir) / STOP_FILE
    path.write_text(f"stop requested by {who} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n", encoding="utf-8")
    return path


def stop_requested_since(run_dir, since):
    """Whether a stop was requested for `run_dir` at or after time `since` (an older request, left by a trainer
    that stopped before, does not count)."""
    try:
        return (Path(run_dir) / STOP_FILE).stat().st_mtime >= since
    except OSError:
        return False


def clear_stop_request(run_dir):
    try:
        (Path(run_dir) / STOP_FILE).unlink()
    except OSError:
        pass


def has_status(run_dir):
    """Whether the trainer has written the run's status.json yet."""
    return (Path(run_dir) / STATUS_FILE).exists()


def is_run_folder(folder):
    """Whether `folder` holds a run of this program (its training_options.json), not just any network file."""
    return (Path(folder) / OPTIONS_FILE).exists()


# -- writing ----------------------------------------------------------------------------------------------------


def append_jsonl(path, record):
    """Append one JSON line and flush it to disk (a crash can tear at most this line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def next_run_dir(outdir, desc):
    """<outdir>/<NNNNN>-<desc> with NNNNN one above the highest existing run number; created here."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    while True:
        ids = [int(run_number(p.name)) for p in run_dirs(outdir)]
        run_dir = outdir / f"{max(ids, default=-1) + 1:05d}-{desc}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:  # another trainer took this number a moment ago
            continue


def write_status(run_dir, state, *, kimg, total_kimg, tick, sec_per_kimg=None, snapshot=None, message="",
                 started=None, pid=None):
    """status.json, written atomically: what the dashboard polls."""
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    now = time.time()
    write_json_atomic(Path(run_dir) / STATUS_FILE, {
        "state": state, "pid": int(pid if pid is not None else os.getpid()), "kimg": float(kimg),
        "total_kimg": float(total_kimg), "tick": int(tick),
        "sec_per_kimg": None if sec_per_kimg is None else float(sec_per_kimg),
        "snapshot": snapshot, "message": str(message), "updated": now, "started": started or now})


def _true_name(prefix, suffix, cur_nimg, run_dir):
    """NVIDIA's name for the kimg, unless run_dir already holds a file of that kimg written at another point:
    then the finer name with the images past the whole kimg, so no file replaces another."""
    whole, rest = divmod(int(cur_nimg), 1000)
    plain = f"{prefix}{whole:06d}{suffix}"
    if run_dir is None or not (Path(run_dir) / plain).exists():
        return plain
    return f"{prefix}{whole:06d}_{rest:03d}{suffix}"


def snapshot_name(cur_nimg, run_dir=None):
    """network-snapshot-KKKKKK.pt, or network-snapshot-KKKKKK_III.pt when run_dir has one of that kimg already."""
    return _true_name(SNAPSHOT_PREFIX, ".pt", cur_nimg, run_dir)


def fakes_name(cur_nimg, run_dir=None):
    """fakesKKKKKK.png, or fakesKKKKKK_III.png when run_dir has a grid of that kimg already."""
    return _true_name("fakes", ".png", cur_nimg, run_dir)


def _name_key(match):
    """(kimg as named, images past it) of a SNAPSHOT_RE / FAKES_RE match: NVIDIA's name first within its kimg."""
    return int(match.group(1)), int(match.group(2)) if match.group(2) else -1


def snapshot_kimg(name):
    """The kimg a snapshot or grid name states (KKKKKK_III -> KKKKKK.III), or None for another name."""
    base = Path(str(name)).name
    m = ANY_SNAPSHOT_RE.fullmatch(base) or FAKES_RE.match(base)
    if m is None:
        return None
    return int(m.group(1)) + (int(m.group(2)) / 1000 if m.group(2) else 0.0)


def truncate_jsonl(path, keep):
    """Rewrite a .jsonl keeping only the records for which keep(record) is true (atomic). Torn lines go."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in _read_jsonl(path) if keep(r)]
    with atomic_open(path) as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")


# -- reading ----------------------------------------------------------------------------------------------------


def _read_jsonl(path):
    records = []
    try:
        with open(path, "r", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill while it was written
                if isinstance(rec, dict):
                    records.append(rec)
    except OSError:
        return []
    return records


def read_status(run_dir):
    """status.json as a dict (plus 'alive': whether its pid still runs), or None if missing or unreadable."""
    try:
        with open(Path(run_dir) / STATUS_FILE) as f:
            status = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict):
        return None
    status["alive"] = status.get("state") == "running" and pid_alive(status.get("pid", -1))
    return status


def read_stats(run_dir):
    """stats.jsonl as a list of dicts, one per tick (a torn last line is skipped)."""
    return _read_jsonl(Path(run_dir) / STATS_FILE)


def metric_path(run_dir, metric):
    """<run_dir>/metric-<metric>.jsonl: NVIDIA's file of one metric's records."""
    return Path(run_dir) / f"metric-{metric}.jsonl"


def metric_files(run_dir):
    """{metric name: <run_dir>/metric-<name>.jsonl} of the metric files a run has, in name order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return {}
    return {p.stem[len("metric-"):]: p for p in sorted(run_dir.glob("metric-*.jsonl"))}


def _stat_mean(rec, key):
    v = rec.get(key)
    v = v.get("mean") if isinstance(v, dict) else v
    return float(v) if isinstance(v, (int, float)) else None


def steady_ticks(stats):
    """The stats.jsonl records of ticks that are not start-up (their sec/kimg is the training speed): not tick 0
    (one step), not the first full tick of a process (it carries the first calls' costs: a new run's tick 1, a
    resumed process's first tick), not a tick without a positive sec/kimg.

    A resumed process shows in stats.jsonl as a tick that came much later than the one before it could have
    (the time between the two records exceeds the tick's own time and maintenance: the run was not running).
    """
    vals = []
    prev_ts = None
    warm = False  # a full tick of the current process has been seen
    for i, rec in enumerate(stats):
        spk = _stat_mean(rec, "Timing/sec_per_kimg")
        tick = _stat_mean(rec, "Progress/tick")
        ts = rec.get("timestamp") if isinstance(rec.get("timestamp"), (int, float)) else None
        busy = (_stat_mean(rec, "Timing/sec_per_tick") or 0.0) + (_stat_mean(rec, "Timing/maintenance_sec") or 0.0)
        restarted = prev_ts is not None and ts is not None and ts - prev_ts > busy + 30.0
        prev_ts = ts
        if i == 0 or restarted:
            warm = False
        if not tick:
            continue
        if not warm:
            warm = True
            continue
        if not spk or spk <= 0:
            continue
        vals.append(rec)
    return vals


def read_metrics(run_dir):
    """{metric name: [records of metric-<name>.jsonl]}."""
    return {name: _read_jsonl(p) for name, p in metric_files(run_dir).items()}


def write_options(run_dir, options):
    """training_options.json (the resolved settings, a dict), written atomically."""
    write_json_atomic(Path(run_dir) / OPTIONS_FILE, options)


def read_options(run_dir):
    """training_options.json as a dict, or None if missing, unreadable or not an object."""
    try:
        with open(Path(run_dir) / OPTIONS_FILE) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def list_snapshots(run_dir):
    """[(kimg as named, Path)] sorted by kimg (NVIDIA's name before the finer ones of its kimg)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    snaps = [(_name_key(m), p) for p in run_dir.iterdir() if (m := SNAPSHOT_RE.match(p.name))]
    snaps.sort(key=lambda t: (t[0], t[1].stat().st_mtime if t[1].exists() else 0))
    return [(snapshot_kimg(p.name), p) for _, p in snaps]


def latest_snapshot(run_dir):
    """The newest network-snapshot-NNNNNN.pt of a run folder, or None."""
    snaps = list_snapshots(run_dir)
    return snaps[-1][1] if snaps else None


def list_fakes(run_dir):
    """[(kimg as named, Path)]: fakes_init.png (None) first, then the grids in kimg order."""
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is None or not run_dir.is_dir():
        return []
    grids = sorted((_name_key(m), p) for p in run_dir.iterdir() if (m := FAKES_RE.match(p.name)))
    init = run_dir / FAKES_INIT
    return ([(None, init)] if init.is_file() else []) + [(snapshot_kimg(p.name), p) for _, p in grids]


def fakes_kimg(path, stats=None):
    """The kimg at which grid `path` was drawn: exact for a finer name; for NVIDIA's name (kimg rounded down) the
    tick of stats.jsonl (a list of its records) written last before the grid, when one of that kimg is there."""
    named = snapshot_kimg(path)
    if named is None or "_" in Path(path).name:
        return named
    try:
        mtime = Path(path).stat().st_mtime
    except OSError:
        return named
    best = None
    for rec in stats or ():
        kimg, ts = rec.get("Progress/kimg"), rec.get("timestamp")
        kimg = kimg.get("mean") if isinstance(kimg, dict) else kimg
        if isinstance(kimg, (int, float)) and isinstance(ts, (int, float)) and int(kimg + 1e-9) == int(named) \
                and ts <= mtime + 1e-3:
            best = float(kimg)
    return named if best is None else best


def latest_fakes(run_dir):
    """The newest fakesKKKKKK[_III].png (or fakes_init.png), or None."""
    grids = list_fakes(run_dir)
    return grids[-1][1] if grids else None


def list_runs(outdir):
    """Every run folder under outdir, oldest first: dicts with id, name, path, desc, dataset, cfg, state, kimg,
    total_kimg, snapshots, latest_snapshot, latest_fakes, updated."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        return []
    runs = []
    for p in run_dirs(outdir):
        m = RUN_RE.match(p.name)
        status = read_status(p) or {}
        options = read_options(p) or {}
        snap = latest_snapshot(p)
        fakes = latest_fakes(p)
        runs.append({
            "id": int(m.group(1)), "name": p.name, "path": str(p), "desc": m.group(2),
            "dataset": options.get("data"), "cfg": options.get("cfg"),
            "state": status.get("state"), "alive": bool(status.get("alive")),
            "kimg": status.get("kimg"), "total_kimg": status.get("total_kimg", options.get("total_kimg")),
            "message": status.get("message", ""),
            "snapshots": len(list_snapshots(p)), "latest_snapshot": str(snap) if snap else None,
            "latest_fakes": str(fakes) if fakes else None,
            "updated": status.get("updated", p.stat().st_mtime)})
    return sorted(runs, key=lambda r: r["id"])


def _same_path(a, b):
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError, TypeError):
        return False


def find_resume_latest(outdir, dataset_path):
    """The newest snapshot of the newest run in outdir that trained on dataset_path, or None."""
    for run in reversed(list_runs(outdir)):
        if run["latest_snapshot"] and run["dataset"] and _same_path(run["dataset"], dataset_path):
            return Path(run["latest_snapshot"])
    return None


def snapshots_newest_first(outdir):
    """Every snapshot under outdir as (run, kimg, path), for pickers: the run whose newest snapshot was written
    last comes first (a resumed old run counts as new), and within a run the highest kimg first. `run` is the dict
    list_runs gives; a snapshot that vanishes while the list is made is left out."""
    runs = []
    for run in list_runs(outdir):
        snaps = []
        for kimg, path in list_snapshots(run["path"]):
            try:
                snaps.append((kimg, path, path.stat().st_mtime))
            except OSError:
                continue
        if snaps:
            runs.append((max(t for _, _, t in snaps), run["id"], run, snaps))
    runs.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return [(run, kimg, path) for _, _, run, snaps in runs for kimg, path, _ in reversed(snaps)]
