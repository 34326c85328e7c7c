"""What quality a preset has reached at a given training length, from measured convergence curves.

The curves are the means over training seeds that bench/convergence.py measured (docs/BENCHMARKS.md), kept in
measured_curves.json beside this module:

    {"curves": [{"preset": "tiny", "resolution": 32, "dataset": "emoji (4,009 images)", "metric": "KID",
                 "num_gen": 200, "num_real": 500, "seeds": 2, "machine": "...", "date": "...",
                 "points": [{"kimg": 2.0, "kid": 0.31, "kid_sd": 0.02, "fid": 180.0, "cpu_min": 1.5}, ...]}]}

Only a curve of the preset with its own settings counts, at the dataset's resolution: a length that was not
measured is answered with the nearest shorter point (or, past the curve, its last point, said as such), never
with an extrapolation. Torch-free, so the dashboard can import it.
"""

import json
from dataclasses import dataclass
from pathlib import Path

CURVES_FILE = Path(__file__).with_name("measured_curves.json")


@dataclass(frozen=True)
class Expectation:
    preset: str
    resolution: int
    kimg: float  # the measured point used
    kid: float
    kid_sd: float | None
    seeds: int
    dataset: str
    beyond: bool  # the asked length is past the longest measured point
    num_gen: int
    num_real: int


def load_curves(path=None):
    """The curves of `path` (default: measured_curves.json) -> list of dicts; [] when the file is missing or bad."""
    try:
        data = json.loads(Path(path or CURVES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    curves = data.get("curves") if isinstance(data, dict) else None
    return [c for c in curves or [] if isinstance(c, dict) and c.get("points")]


def expected_quality(preset, kimg, resolution, curves=None):
    """The measured point of `preset` at `resolution` for a training of `kimg` kimg -> Expectation or None.

    The point used is the last one at or below kimg; past the end of the curve, its last point (beyond=True);
    before the first point after the start, None (nothing was measured that short).
    """
    if curves is None:
        curves = load_curves()
    try:
        kimg = float(kimg)
        resolution = int(resolution)
    except (TypeError, ValueError):
        return None
    if kimg <= 0:
        return None
    for curve in curves:
        if curve.get("preset") != preset or int(curve.get("resolution", -1)) != resolution:
            continue
        points = sorted((p for p in curve["points"] if p.get("kimg", 0) >= 0.5), key=lambda p: p["kimg"])
        if not points:
            continue
        reached = [p for p in points if p["kimg"] <= kimg * 1.02]  # a tick ends a step or two past its kimg
        if not reached:
            return None
        p = reached[-1]
        return Expectation(preset=preset, resolution=resolution, kimg=float(p["kimg"]), kid=float(p["kid"]),
                           kid_sd=None if p.get("kid_sd") is None else float(p["kid_sd"]),
                           seeds=int(curve.get("seeds", 1)), dataset=str(curve.get("dataset", "")),
                           beyond=kimg > points[-1]["kimg"] * 1.02, num_gen=int(curve.get("num_gen", 0)),
                           num_real=int(curve.get("num_real", 0)))
    return None


def quality_text(preset, kimg, resolution, curves=None):
    """One sentence for the Train tab ('' when no measured curve fits)."""
    e = expected_quality(preset, kimg, resolution, curves)
    if e is None:
        return ""
    spread = f" ± {e.kid_sd:.3f}" if e.kid_sd is not None and e.seeds > 1 else ""
    at = f"{e.kimg:.0f}" if e.kimg >= 10 else f"{e.kimg:g}"  # a point at the tick's end: 40.008 kimg reads as 40
    head = (f"Longer than measured: at {at} kimg, the longest measured," if e.beyond
            else f"Expected quality: at {at} kimg")
    return (f"{head} the {e.preset} preset reached **KID {e.kid:.3f}**{spread} ({e.seeds} training "
            f"seed{'s' if e.seeds != 1 else ''}; {e.dataset} at {e.resolution} px; {e.num_gen} generated vs "
            f"{e.num_real} real images; lower is better, 0 means indistinguishable).")
