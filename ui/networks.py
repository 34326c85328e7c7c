"""The networks the dashboard offers, for every tab that picks one: the choices and their labels (runs' snapshots,
the best one, the demo, uploads), the loaded-network cache and the device they run on."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from engine.errors import UserError
from engine.runs import is_network_file
from ui.common import Studio

UPLOAD_FOLDER = "networks"
DEMO_LABEL = "Demo: emoji (built in)"

_cache: "OrderedDict[tuple, dict]" = OrderedDict()
_cache_lock = threading.Lock()


def device():
    from engine.commands.common import resolve_device

    return resolve_device("auto")


def snapshot_label(run: dict, kimg) -> str:
    """'run 00003 · emoji16 · 2 kimg': the run's number, its dataset and the snapshot's kimg."""
    data = Path(str(run.get("dataset") or "")).name
    data = data[:-4] if data.lower().endswith(".zip") else data
    k = f"{kimg:,}" if isinstance(kimg, int) else f"{float(kimg):,.3f}".rstrip("0").rstrip(".")
    return f"run {run['id']:05d} · {data or run['desc']} · {k} kimg"


def best_label(run: dict, listed=()) -> "tuple[str, Path] | None":
    """('best: run 00003 · kimg 840 · KID 0.0210', its file) for the run's snapshot with the lowest FID/KID
    measured at its snapshots, or None when none was measured or that file is gone. listed: the
    (run, kimg, path) triples of snapshots_newest_first, for the kimg the other labels show."""
    from engine.train.health import best_snapshot

    try:
        best = best_snapshot(run["path"])
    except OSError:
        return None
    if not best or best["path"] is None:
        return None
    kimg = next((k for r, k, p in listed if r["path"] == run["path"] and p.name == best["snapshot"]), best["kimg"])
    k = "?" if kimg is None else (f"{kimg:,}" if isinstance(kimg, int)
                                  else f"{float(kimg):,.3f}".rstrip("0").rstrip("."))
    kind = "KID" if best["metric"].startswith("kid") else "FID"
    value = f"{best['value']:.4f}" if kind == "KID" else f"{best['value']:.2f}"
    return f"best: run {run['id']:05d} · kimg {k} · {kind} {value}", best["path"]


def network_choices(studio: Studio, aliases: bool = False) -> "OrderedDict[str, Path]":
    """{label shown in the picker: file}: every run's snapshots (the run written last first; within a run its best
    snapshot by the FID/KID measured during training, when any was, then its newest snapshot first), then the
    demo, then uploads. With aliases, also '<run folder> / <snapshot file>' for each snapshot,
    a name scripts may use; the picker shows the short labels only.

    Visitors pick labels; paths never come from the page, so nothing outside the workdir can be named.
    """
    from engine.runs import snapshots_newest_first

    out: OrderedDict[str, Path] = OrderedDict()
    extra: dict[str, Path] = {}
    listed = snapshots_newest_first(studio.runs_dir)
    best_seen = set()
    for run, kimg, snap in listed:
        if run["path"] not in best_seen:  # a run's best measured snapshot comes before its newest
            best_seen.add(run["path"])
            best = best_label(run, listed)
            if best:
                out[best[0]] = best[1]
        label = snapshot_label(run, kimg)
        if label in out:  # two files of one kimg: tell them apart by name
            label = f"{label} ({snap.name})"
        out[label] = snap
        extra[f"{run['name']} / {snap.name}"] = snap
    if studio.demo_network.is_file():
        out[DEMO_LABEL] = studio.demo_network
    up = studio.uploads_dir / UPLOAD_FOLDER
    if up.is_dir():
        for f in sorted(up.iterdir()):
            if is_network_file(f):
                out[f"uploaded / {f.name}"] = f
    if aliases:
        for k, v in extra.items():
            out.setdefault(k, v)
    return out


def pick_network(choices, current, offered):
    """What the picker shows after its list was refreshed: the newest snapshot (first choice) when the visitor
    still has the one offered first last time (or nothing, or a network that is gone), else their own pick."""
    first = next(iter(choices), None)
    if not current or current not in choices or current == offered:
        return first
    return current


def load(studio: Studio, label: str) -> dict:
    """The network behind a picker label, loaded once and kept (the three most recent) while the file is unchanged."""
    if not label:
        raise UserError("no network chosen: pick one, or upload a .pt / .pkl file")
    choices = network_choices(studio, aliases=True)
    path = choices.get(label)
    if path is None:
        raise UserError(f"network not found: {label}; press the refresh button to update the list")
    return load_file(studio, path)


def load_file(studio: Studio, path) -> dict:
    """The network in `path` (inside the workdir, or the demo), through the same cache as load()."""
    path = studio.inside(path, "network")
    from engine import load_network

    key = (str(path), path.stat().st_mtime, str(device()))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    net = load_network(str(path), device=device())
    with _cache_lock:
        _cache[key] = net
        while len(_cache) > 3:
            _cache.popitem(last=False)
    return net


