"""bench/demo64_gpu.py: the rules of what comes back from the GPU call, the file plan, the dataset's trip, and the
whole rehearsal (prepare, train in a time box, evaluate) on the CPU at 8 px."""

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "demo64_gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("demo64_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


demo = load_script()


def test_out_rules_name_every_breach(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    (good / "manifest.json").write_text("{}")
    (good / "a").mkdir()
    (good / "a" / "b").mkdir()
    (good / "a" / "b" / "deep-ok.bin").write_bytes(b"x")
    assert demo.out_problems(good) == []

    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(8):
        (bad / f"f{i}.bin").write_bytes(b"x")
    with open(bad / "big.bin", "wb") as f:
        f.truncate(demo.HARD_FILE_LIMIT + 1)  # sparse: no 16 MiB written
    (bad / "odd name.txt").write_text("x")
    (bad / "a" / "b" / "c").mkdir(parents=True)
    (bad / "a" / "b" / "c" / "deep.bin").write_bytes(b"x")
    (bad / "link.bin").symlink_to(bad / "f0.bin")
    problems = " | ".join(demo.out_problems(bad))
    assert "big.bin" in problems and "over 16777216" in problems
    assert "odd name.txt" in problems
    assert "deep.bin: more than 2 folders down" in problems
    assert "link.bin: a link" in problems
    assert "11 files, over 8" in problems


def test_tar_size_is_what_tarfile_writes(tmp_path):
    import tarfile

    for count, size in ((1, 1000), (3, 513), (2, 1_000_000)):
        names = []
        for i in range(count):
            path = tmp_path / f"gema-{i:06d}.500kimg.pt"
            path.write_bytes(os.urandom(size))
            names.append(path)
        with tarfile.open(tmp_path / "t.tar", "w") as tar:
            for path in names:
                tar.add(path, arcname=path.name)
        assert (tmp_path / "t.tar").stat().st_size == demo.tar_size(size, count)


def test_export_plan_fits_the_limits():
    export = 2_600_000
    # the 64 px run: a 38.1 MB snapshot in 3 parts, run.tar and manifest.json
    count, per_tar = demo.plan_exports(demo.TOTAL_LIMIT - 38_100_000 - 2_000_000, export, fixed_files=5)
    assert per_tar == 6 and count == 8
    assert demo.tar_size(export, per_tar) <= demo.FILE_LIMIT < demo.tar_size(export, per_tar + 1)
    tars = -(-count // per_tar)
    assert 5 + tars <= demo.MAX_FILES
    # one file left: at most one tar of exports, however many bytes remain
    assert demo.plan_exports(10 ** 9, export, fixed_files=7) == (6, 6)
    assert demo.plan_exports(10 ** 9, export, fixed_files=8) == (0, 6)
    assert demo.plan_exports(10 ** 9, demo.FILE_LIMIT, fixed_files=1) == (0, 0)  # one export would not fit a tar
    assert demo.plan_exports(10 ** 9, 1000, fixed_files=1, max_exports=4)[0] == 4


def test_points_spread_over_time_keep_first_and_last():
    times = [0, 5, 10, 20, 40, 60, 61, 62, 100]
    assert demo.pick_points(times, 3) == [0, 4, 8]   # 50 s is nearest to 40
    assert demo.pick_points(times, 5) == [0, 3, 4, 7, 8]  # targets 25, 50, 75: 40 and 60 tie for 50, the earlier wins
    assert demo.pick_points(times, 20) == list(range(9))
    assert demo.pick_points(times, 1) == [8]
    assert demo.pick_points([], 3) == [] and demo.pick_points(times, 0) == []
    picked = demo.pick_points(list(range(0, 600, 7)), 9)
    assert len(picked) == 9 and len(set(picked)) == 9 and picked[0] == 0 and picked[-1] == len(range(0, 600, 7)) - 1


def test_split_and_join_check_the_whole_file(tmp_path):
    src = tmp_path / "snap.pt"
    blob = os.urandom(100)
    src.write_bytes(blob)
    out = tmp_path / "out"
    out.mkdir()
    parts = demo.split_file(src, out, "s.pt", part_bytes=30)
    assert [n for n, _ in parts] == ["s.pt.part1of4", "s.pt.part2of4", "s.pt.part3of4", "s.pt.part4of4"]
    assert [s for _, s in parts] == [30, 30, 30, 10]
    digest = demo.sha256(src)
    names = [n for n, _ in parts]
    assert demo.join_parts(out, names, digest, tmp_path / "joined.pt") is None
    assert (tmp_path / "joined.pt").read_bytes() == blob
    (out / names[1]).write_bytes(b"y" * 30)
    assert "do not match" in demo.join_parts(out, names, digest, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()
    (out / names[2]).unlink()
    assert demo.join_parts(out, names, digest, tmp_path / "bad.pt") == "missing s.pt.part3of4"
    assert demo.split_file(src, out, "whole.pt", part_bytes=100) == [("whole.pt", 100)]


def test_dataset_pack_rebuilds_the_same_images(tmp_path):
    src = tmp_path / "squares8.zip"
    rng = np.random.RandomState(0)
    images = {}
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(5):
            img = rng.randint(0, 255, size=(8, 8, 3)).astype(np.uint8)
            name = f"00000/img{i:08d}.png"
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            z.writestr(name, buf.getvalue())
            images[name] = img
        z.writestr("dataset.json", json.dumps({"labels": None}))
    pack = tmp_path / "carry" / "squares8.pixels.tar.xz"
    demo.pack_dataset(src, pack)
    rebuilt = demo.unpack_dataset(pack, tmp_path / "there")
    assert rebuilt.name == "squares8.zip"  # the name a continued run recognises its dataset by
    with zipfile.ZipFile(rebuilt) as z:
        assert sorted(z.namelist()) == sorted(list(images) + ["dataset.json"])
        assert json.loads(z.read("dataset.json")) == {"labels": None}
        for name, img in images.items():
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(z.read(name)))), img)
    blob = bytearray(pack.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # a damaged copy
    pack.write_bytes(bytes(blob))
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); "
                           f"import demo64_gpu as d; d.unpack_dataset({str(pack)!r}, {str(tmp_path / 'x')!r})"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def run(args, tmp_path):
    env = dict(os.environ, STUDIO_CACHE=str(tmp_path / "cache"), STUDIO_DETECTOR="offline", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT)] + args, cwd=ROOT, env=env, capture_output=True, text=True)
    return proc, proc.stdout + proc.stderr


@pytest.mark.slow
def test_rehearsal_at_8px_brings_back_what_the_evaluation_needs(tmp_path):
    work = tmp_path / "work"
    out = tmp_path / "OUT"
    proc, text = run(["prepare", "--res", "8", "--work", str(work), "--max-images", "200", "--ref-images", "40",
                      "--no-baseline"], tmp_path)
    assert proc.returncode == 0, text[-3000:]
    assert (work / "carry" / "emoji8.pixels.tar.xz").is_file() and (work / "data" / "emoji8-ref.zip").is_file()
    assert "G_ema export (float16)" in text and "full training snapshot about" in text

    proc, text = run(["train", "--device", "cpu", "--res", "8", "--work", str(work), "--out", str(out),
                      "--box", "20", "--budget", "150", "--tick", "0.64", "--max-exports", "3"], tmp_path)
    assert proc.returncode == 0, text[-3000:]
    assert "rules of $OUT: kept" in text
    assert demo.out_problems(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["problems"] == [] and manifest["device"] == "cpu"
    assert manifest["attempts"][0]["state"] == "stopped"  # the box ended it, with its last snapshot
    exports = manifest["exports"]
    assert len(exports) == 3 and len(manifest["points"]) >= 3
    assert exports[0]["snapshot"] == manifest["points"][0]["snapshot"]        # the untrained network
    assert exports[-1]["snapshot"] == manifest["training_snapshot"]["snapshot"]  # and the end of the run
    kimgs = [p["kimg"] for p in exports]
    secs = [p["total_sec"] for p in exports]
    assert kimgs == sorted(kimgs) and secs == sorted(secs) and secs[0] > 0
    names = sorted(f.name for f in out.iterdir())
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    parts = manifest["training_snapshot"]["parts"]
    assert manifest["training_snapshot"]["bytes"] > demo.FILE_LIMIT and len(parts) == 2  # split, then rebuilt below
    assert all((out / p).stat().st_size <= demo.FILE_LIMIT for p in parts)

    proc, text = run(["evaluate", "--returned", str(out), "--work", str(work), "--images", "6", "--real", "12"],
                     tmp_path)
    assert proc.returncode == 0, text[-3000:]
    ev = work / "eval-cpu8"
    table = (ev / "table.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and "trainer minutes" not in line]
    assert len(rows) == 3
    for row, p in zip(rows, exports):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[5] == p["file"] and float(cells[1]) == pytest.approx(p["kimg"], abs=0.06)
        assert np.isfinite(float(cells[2])) and float(cells[3]) > 0
    assert (ev / "curve.png").stat().st_size > 1000
    records = [json.loads(line) for line in (ev / "curve.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["num_gen"] == 6 and r["num_real"] == 12 for r in records)

    from engine.checkpoint import load_snapshot

    resume = work / "resume-cpu8.pt"
    snap = load_snapshot(resume)  # rebuilt from its parts: a full training snapshot to continue from
    assert snap["progress"]["kimg"] == pytest.approx(manifest["training_snapshot"]["kimg"], abs=1e-3)
    assert f"--resume {resume}" in text  # the command that continues the run

    # A damaged return: the snapshot is not rebuilt (the good one stays), the points already measured are reused.
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    part = bad / parts[1]
    blob = bytearray(part.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    part.write_bytes(bytes(blob))
    before = demo.sha256(resume)
    proc, text = run(["evaluate", "--returned", str(bad), "--work", str(work), "--images", "6", "--real", "12"],
                     tmp_path)
    assert proc.returncode == 0, text[-3000:]
    assert f"{parts[1]} differs" in text and "cannot be rebuilt" in text
    assert text.count("measured before") == 3
    assert demo.sha256(resume) == before
