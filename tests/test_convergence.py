"""bench/convergence.py end to end on a tiny synthetic dataset: the real trainer, the real metrics, 8 px."""

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.train.expected import expected_quality, load_curves

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "convergence.py"


def make_dataset(path, count=24, res=8):
    rng = np.random.RandomState(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(count):
            img = np.zeros([res, res, 3], np.uint8)
            img[:] = rng.randint(0, 255, size=3)
            y, x = rng.randint(0, res // 2, size=2)
            img[y:y + res // 2, x:x + res // 2] = rng.randint(0, 255, size=3)  # a square on a plain ground
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            z.writestr(f"00000/img{i:08d}.png", buf.getvalue())
        z.writestr("dataset.json", json.dumps({"labels": None}))


def run(args, tmp_path, script=BENCH):
    """A bench script (default bench/convergence.py) in a subprocess with the offline detector and a private cache."""
    # One thread per process: on a busy machine idle-spinning worker threads only add CPU time.
    env = dict(os.environ, STUDIO_CACHE=str(tmp_path / "cache"), STUDIO_DETECTOR="offline", OMP_NUM_THREADS="1")
    # No timeout: on a shared machine the wall time says little (the whole test costs about 10 CPU seconds).
    return subprocess.run([sys.executable, str(script)] + args, cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_convergence_writes_curve_plot_grids_and_export(tmp_path):
    data = tmp_path / "squares8.zip"
    make_dataset(data)
    out = tmp_path / "study"
    export = tmp_path / "curves.json"
    proc = run(["--data", str(data), "--cfg", "tiny", "--kimg", "1", "--points", "1", "--images", "4",
                "--real", "6", "--seeds", "2", "--batch", "64", "--grid", "4", "--out", str(out),
                "--export", str(export), "--export-label", "squares"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    records = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert sorted((r["seed"], r["point"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for seed in (0, 1):
        start, end = sorted((r for r in records if r["seed"] == seed), key=lambda r: r["point"])
        assert start["kimg"] < 0.1 and end["kimg"] >= 1.0  # the untrained network, then the end of training
        assert 0 < start["wall_s"] < end["wall_s"] and 0 < start["cpu_s"] < end["cpu_s"]
        for r in (start, end):
            assert np.isfinite(r["kid"]) and np.isfinite(r["fid"]) and r["fid"] > 0
            assert r["num_gen"] == 4 and r["num_real"] == 6 and r["resolution"] == 8
            grid = Image.open(out / r["grid"])
            assert grid.size == (4 * 8 + 3, 8)  # 4 images of 8 px in a row, 1 px apart
    # the two seeds are different trainings: their networks (and so their values) differ
    ends = [r["kid"] for r in records if r["point"] == 1]
    assert ends[0] != ends[1]

    png = Image.open(out / "curves.png")
    assert png.format == "PNG" and png.size[0] > 600
    summary = (out / "summary.md").read_text()
    assert "| kimg | KID mean | KID seed sd |" in summary and "--cfg tiny --batch 64" in summary

    # only an unchanged preset is exported for the Train tab; this study changed --batch
    assert load_curves(export) == []

    # --plot-only redraws from the curve file; a second setting is added beside the first
    (out / "curves.png").unlink()
    proc = run(["--plot-only", "--out", str(out)], tmp_path)
    assert proc.returncode == 0 and (out / "curves.png").is_file()


def test_export_of_an_unchanged_preset_feeds_the_expectation(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    base = {"setting": "tiny", "cfg": "tiny", "flags": [], "data_name": "d.zip", "num_gen": 6, "num_real": 10,
            "detector": "x", "machine": "m", "date": "2026-01-01", "resolution": 8, "grid": "g.png",
            "wall_s": 1.0, "cpu_s": 2.0}
    lines = []
    for seed, kids in ((0, (0.5, 0.3)), (1, (0.6, 0.1))):
        for point, (kimg, kid) in enumerate(zip((0.032, 1.024), kids)):
            lines.append(dict(base, seed=seed, point=point, kimg=kimg, kid=kid, fid=100.0))
    (out / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    export = tmp_path / "curves.json"
    proc = run(["--plot-only", "--out", str(out), "--export", str(export), "--export-label", "squares"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    e = expected_quality("tiny", 2, 8, load_curves(export))
    assert e.kimg == 1.024 and abs(e.kid - 0.2) < 1e-9 and abs(e.kid_sd - 0.1414) < 1e-3 and e.seeds == 2
    assert e.beyond and e.dataset == "squares"


def test_points_closer_than_one_kimg_are_refused(tmp_path):
    proc = run(["--data", str(tmp_path / "x.zip"), "--kimg", "1", "--points", "2", "--out", str(tmp_path / "o")],
               tmp_path)
    assert proc.returncode == 2 and "at least 1 kimg" in proc.stderr


def test_flags_that_repeat_the_preset_or_only_mirror_the_data_are_no_change():
    import importlib.util

    spec = importlib.util.spec_from_file_location("convergence_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # tiny's own path-length weight is 0, its mapping depth 2 and its batch 8: repeating them, or x-flipping the data, is tiny
    assert bench.changed_flags("tiny", ["--mirror", "1", "--pl-weight", "0", "--map", "2"]) == []
    assert bench.changed_flags("tiny", ["--pl-weight", "2"]) == ["--pl-weight", "2"]
    assert bench.changed_flags("tiny", ["--mirror", "1", "--cbase", "4096", "--batch", "16"]) == \
        ["--cbase", "4096", "--batch", "16"]
    assert bench.changed_flags("tiny", ["--batch", "8"]) == []  # tiny's own batch
    assert bench.changed_flags("nosuchpreset", ["--map", "2"]) == ["--map", "2"]
    # Values the preset derives (R1 gamma 0.0002 * res^2 / batch, G_ema half-life batch * 10 / 32 kimg) count as
    # the preset's own at the curve's resolution only.
    assert bench.changed_flags("tiny", ["--gamma", "0.0256", "--ema", "2.5", "--glr", "0.0025"]) == []
    assert bench.changed_flags("tiny", ["--gamma", "0.0256"], resolution=16) == ["--gamma", "0.0256"]
    assert bench.changed_flags("tiny", ["--ema", "10", "--target", "0.6"]) == ["--ema", "10"]


def test_a_one_seed_curve_is_extended_by_its_runs_continuation(tmp_path):
    ref = tmp_path / "ref.zip"
    make_dataset(ref)
    point = {"kid_sd": None, "fid": 100.0, "cpu_min": 1.0, "seeds": 1}
    curve = {"preset": "tiny", "resolution": 8, "dataset": "squares", "metric": "KID", "num_gen": 200,
             "num_real": 500, "seeds": 1, "detector": "det", "source": "bench/convergence.py",
             "points": [dict(point, kimg=20.0, kid=0.1), dict(point, kimg=40.0, kid=0.08)]}
    export = tmp_path / "curves.json"
    export.write_text(json.dumps({"curves": [curve]}))
    ema = tmp_path / "ema.jsonl"
    rows = [("run", 40.0, 200, 0.081), ("run", 60.0, 200, 0.07), ("run", 80.0, 200, 0.06), ("run", 100.0, 1000, 0.05),
            ("ema10", 100.0, 200, 0.04)]
    ema.write_text("".join(json.dumps({"name": n, "kimg": k, "nimg": int(k * 1000), "images": i, "real": 500,
                                       "kid": kid, "fid": 90.0, "detector": "det"}) + "\n" for n, k, i, kid in rows))
    args = ["--export", str(export), "--ref", str(ref), "--cfg", "tiny", "--extend-from", str(ema)]
    proc = run(args + ["--extend-name", "run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "added 2 point(s)" in proc.stdout
    curves = load_curves(export)
    # Only the run's own G_ema, past the curve's end, measured with the curve's image counts and detector.
    assert [p["kimg"] for p in curves[0]["points"]] == [20.0, 40.0, 60.0, 80.0]
    assert "continued" in curves[0]["source"]
    e = expected_quality("tiny", 70, 8, curves)
    assert e.kimg == 60.0 and e.kid == 0.07 and not e.beyond
    assert expected_quality("tiny", 90, 8, curves).beyond
    # A curve that is a mean over several seeds is not extended by one trajectory; a missing curve is one line.
    export.write_text(json.dumps({"curves": [dict(curve, seeds=2)]}))
    proc = run(args, tmp_path)
    assert proc.returncode == 1 and "one trajectory" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(["--export", str(export), "--ref", str(ref), "--cfg", "small", "--extend-from", str(ema)], tmp_path)
    assert proc.returncode == 1 and "no curve of --cfg small at 8 px" in proc.stderr
