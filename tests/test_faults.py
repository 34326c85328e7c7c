"""Faults a user meets: a second trainer on a live run, a full disk, damaged files, hostile names and numbers."""

import errno
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine import fsutil
from engine.errors import UserError
from engine import runs
from engine.train import runlock
from engine.data.dataset import report_path as dataset_report_path
from engine.train.launch import train
from train_helpers import make_dataset, tiny_options

ROOT = Path(__file__).resolve().parents[1]
ENFORCE_FAIL = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: "
                "file write failed")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "blobs", n=8, res=8)


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    """A finished tiny run (8 px, two ticks, one snapshot) -> its outdir; tests copy it before changing it."""
    outdir = tmp_path_factory.mktemp("runs")
    assert train(tiny_options(data, outdir, kimg=0.008, tick=0.004)) == 0
    return outdir


def _copy_run(finished_run, tmp_path):
    import shutil

    shutil.copytree(finished_run, tmp_path / "runs")
    (run,) = [Path(r["path"]) for r in runs.list_runs(tmp_path / "runs")]
    for p in run.glob(runlock.LOCK_NAME):
        p.unlink()
    return tmp_path / "runs", run


def _one_line_error(capsys, argv):
    from engine.__main__ import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# -- one trainer per run --------------------------------------------------------------------------------------


def _hold_lock(run_dir):
    """A live subprocess that holds the run's lock until its stdin closes."""
    code = ("import sys; from engine.train import runlock; lock = runlock.acquire(sys.argv[1]); "
            "print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=str(ROOT), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_run_held_by_a_live_trainer_is_refused_naming_its_pid(data, finished_run, tmp_path, capsys):
    outdir, run = _copy_run(finished_run, tmp_path)
    holder = _hold_lock(run)
    try:
        # The holder's snapshot being written (kept while it lives; what kill -9 leaves behind once it is dead).
        stale = run / ".network-snapshot-000000.pt.k3j2h1.tmp"
        stale.write_bytes(b"\0" * 200_000)
        before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
        with pytest.raises(UserError, match=rf"in use by training process pid {holder.pid}\b"):
            train(tiny_options(data, outdir, kimg=0.016, tick=0.004, resume="latest"))
        assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing written, nothing removed
        assert runs.read_status(run)["state"] == "finished"  # the status reader is not disturbed by the lock
        assert runlock.read_owner(run)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking: its lock is taken over, the killed writer's temporary goes.
    assert train(tiny_options(data, outdir, kimg=0.012, tick=0.004, resume="latest")) == 0
    assert runs.read_status(run)["state"] == "finished" and runs.read_status(run)["kimg"] == pytest.approx(0.012)
    assert not stale.exists()
    assert "removed 1 temporary file(s)" in capsys.readouterr().out
    assert len(runs.list_runs(outdir)) == 1


@pytest.mark.slow
def test_two_trainers_resuming_one_run_the_second_is_refused(data, finished_run, tmp_path):
    """Two real `train --resume latest` processes: the first continues the run, the second exits with one line."""
    import signal

    from polling import wait_for

    outdir, run = _copy_run(finished_run, tmp_path)
    ticks_before = len(runs.read_stats(run))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "engine", "train", "--data", str(data), "--outdir", str(outdir), "--resume",
            "latest", "--kimg", "100", "--tick", "0.004", "--workers", "0", "--progress", "0"]
    first = subprocess.Popen(args, cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(runs.read_stats(run)) > ticks_before or first.poll() is not None, 120,
                 "the first trainer to continue the run")
        assert first.poll() is None
        second = subprocess.run(args, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        err = second.stderr.strip()
        assert err == err.splitlines()[-1] and err.startswith("error: run folder ")
        assert f"in use by training process pid {first.pid}" in err
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    ticks = [s["Progress/tick"]["mean"] for s in runs.read_stats(run)]
    assert ticks == list(range(len(ticks)))  # every tick logged once
    assert runs.read_status(run)["state"] == "stopped"


def test_a_new_run_clears_temporaries_of_dead_runs_but_not_of_live_ones(data, finished_run, tmp_path, capsys):
    outdir, dead_run = _copy_run(finished_run, tmp_path)
    live_run = outdir / "00007-live"
    live_run.mkdir()
    holder = _hold_lock(live_run)
    try:
        dead_tmp = dead_run / ".network-snapshot-000000.pt.a1b2c3.tmp"
        live_tmp = live_run / ".network-snapshot-000004.pt.d4e5f6.tmp"
        for p in (dead_tmp, live_tmp):
            p.write_bytes(b"\0" * 50_000)
        assert train(tiny_options(data, outdir, kimg=0.004)) == 0  # a new run beside them
        assert not dead_tmp.exists() and live_tmp.exists()
        assert "removed 1 temporary file(s)" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()


def test_a_trainer_that_waited_for_the_lock_continues_from_the_snapshots_written_meanwhile(
        data, finished_run, tmp_path, monkeypatch, capsys):
    """Two `--resume latest` of one run: B looks for the run while A holds it, A trains on and finishes, then B
    gets the lock. B must continue from A's newest snapshot (chosen under the lock), not from the one that was
    newest when B started, which would overwrite A's later stats, grids and snapshots."""
    outdir, run = _copy_run(finished_run, tmp_path)
    first_snapshot = runs.latest_snapshot(run).name
    real_acquire = runlock.acquire
    calls = []

    def acquire_after_a(run_dir):
        calls.append(Path(run_dir))
        if len(calls) == 1:  # B asks for the lock; A has it, trains on and ends first
            assert train(tiny_options(data, outdir, kimg=0.016, tick=0.004, resume="latest")) == 0
        return real_acquire(run_dir)

    monkeypatch.setattr(runlock, "acquire", acquire_after_a)
    capsys.readouterr()
    assert train(tiny_options(data, outdir, kimg=0.024, tick=0.004, resume="latest")) == 0
    out = capsys.readouterr().out
    resumed = [ln for ln in out.splitlines() if ln.startswith("resumed ")]
    assert len(resumed) == 2, out
    assert f"from {first_snapshot} at kimg 0.008" in resumed[0]
    assert "at kimg 0.016" in resumed[1] and first_snapshot not in resumed[1], resumed[1]
    kimgs = [s["Progress/kimg"]["mean"] for s in runs.read_stats(run)]
    assert kimgs == sorted(kimgs) and len(set(kimgs)) == len(kimgs), kimgs  # every tick once, in order
    assert kimgs[-1] == pytest.approx(0.024)
    assert runs.read_status(run)["state"] == "finished" and len(runs.list_runs(outdir)) == 1


def test_resume_takes_a_run_folder_for_its_newest_snapshot(data, finished_run, tmp_path, capsys):
    outdir, run = _copy_run(finished_run, tmp_path)
    newest = runs.latest_snapshot(run).name
    assert train(tiny_options(data, outdir, kimg=0.012, tick=0.004, resume=str(run))) == 0
    assert f"resumed {run} from {newest} at kimg 0.008" in capsys.readouterr().out
    assert len(runs.list_runs(outdir)) == 1 and runs.read_status(run)["kimg"] == pytest.approx(0.012)
    plain = tmp_path / "not-a-run"
    plain.mkdir()
    err = _one_line_error(capsys, ["train", "--data", str(data), "--outdir", str(outdir), "--cfg", "tiny",
                                   "--workers", "0", "--resume", str(plain)])
    assert "is a folder but not a run folder" in err and "not-a-run" in err
    assert not any(plain.iterdir())


def test_without_flock_the_pid_in_the_lock_file_decides(tmp_path, monkeypatch):
    from engine import compat

    monkeypatch.setattr(compat, "fcntl", None)
    monkeypatch.setattr(compat, "msvcrt", None)
    run = tmp_path / "00000-x"
    run.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / runlock.LOCK_NAME).write_text(f'{{"pid": {live.pid}, "started": 1700000000}}')
        with pytest.raises(UserError, match=f"pid {live.pid}"):
            runlock.acquire(run)
    finally:
        live.kill()
        live.wait()
    # live.pid is now dead (and reaped): a stale lock, taken over
    lock = runlock.acquire(run)
    assert runlock.read_owner(run)["pid"] == os.getpid()
    lock.release()


# -- numbers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,value", [("--kimg", "nan"), ("--kimg", "inf"), ("--kimg", "-1"), ("--tick", "inf"),
                                        ("--gamma", "nan"), ("--glr", "-0.1"), ("--p", "nan"),
                                        ("--max-steps", "-3")])
def test_non_finite_or_negative_numbers_are_one_line_and_leave_no_run_folder(data, tmp_path, capsys, flag, value):
    err = _one_line_error(capsys, ["train", "--data", str(data), "--outdir", str(tmp_path / "runs"), "--cfg",
                                   "tiny", "--workers", "0", flag, value])
    assert flag in err
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_non_finite_kimg_on_a_continued_run_is_refused_too(data, finished_run, tmp_path):
    outdir, run = _copy_run(finished_run, tmp_path)
    with pytest.raises(UserError, match="--kimg inf is not a finite number"):
        train(tiny_options(data, outdir, kimg=float("inf"), resume="latest"))


# -- damaged snapshots and datasets ---------------------------------------------------------------------------


def _damage_newest(run):
    """Add a newer snapshot than the run's good one, cut short as a disk error would leave it -> its path."""
    good = runs.latest_snapshot(run)
    newer = run / runs.snapshot_name(5000)
    newer.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert runs.latest_snapshot(run) == newer
    return good, newer


def test_resume_latest_falls_back_to_the_previous_good_snapshot(data, finished_run, tmp_path, capsys):
    outdir, run = _copy_run(finished_run, tmp_path)
    good, bad = _damage_newest(run)
    assert train(tiny_options(data, outdir, kimg=0.012, tick=0.004, resume="latest")) == 0
    out = capsys.readouterr().out
    assert f"{bad.name} cannot be read" in out and f"previous good snapshot {good.name}" in out
    assert f"resumed {run} from {good.name} at kimg 0.008" in (run / "log.txt").read_text()
    assert runs.read_status(run)["kimg"] == pytest.approx(0.012)


def test_resume_of_a_damaged_snapshot_names_the_previous_good_one(data, finished_run, tmp_path):
    outdir, run = _copy_run(finished_run, tmp_path)
    good, bad = _damage_newest(run)
    with pytest.raises(UserError, match=f"newest good snapshot of this run is {good}: continue with --resume"):
        train(tiny_options(data, outdir, kimg=0.012, resume=str(bad)))


def _zip_dataset(folder, dest):
    """The dataset folder as a zip with 16 KB between images, so that no read buffer holds two of them."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for i, p in enumerate(sorted(folder.rglob("*"))):
            if p.is_file():
                zf.writestr(f"padding{i}.bin", os.urandom(16 * 1024))  # not images: the dataset reader skips them
                zf.write(p, p.relative_to(folder).as_posix())
    return dest


def test_a_dataset_cut_short_during_training_is_one_line_naming_it(data, tmp_path, monkeypatch):
    from engine.train import loop

    zipped = _zip_dataset(data, tmp_path / "blobs.zip")
    original = loop.open_dataset

    def open_then_cut(cfg):
        ds = original(cfg)
        with open(zipped, "r+b") as f:  # the zip's directory was read: now its images vanish under the reader
            f.truncate(40 * 1024)
        return ds

    monkeypatch.setattr(loop, "open_dataset", open_then_cut)
    with pytest.raises(UserError) as e:
        train(tiny_options(zipped, tmp_path / "runs", kimg=0.008))
    message = str(e.value)
    assert str(zipped) in message and "damaged or was changed while in use" in message
    assert "--resume latest" in message and "\n" not in message
    (run,) = runs.list_runs(tmp_path / "runs")
    assert run["state"] == "failed"


def test_a_loader_worker_dataset_error_keeps_its_one_line(data, tmp_path):
    from engine.data.dataset import ImageDataset
    from engine.train.loop import next_batch

    zipped = _zip_dataset(data, tmp_path / "blobs.zip")
    ds = ImageDataset(str(zipped))
    with open(zipped, "r+b") as f:
        f.truncate(40 * 1024)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=1)
    with pytest.raises(UserError) as e:
        next_batch(iter(loader))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"dataset {str(zipped)!r} is damaged"), message


# -- a full disk while snapshotting -----------------------------------------------------------------------------


def _snapshot_data():
    from engine.checkpoint import FORMAT, VERSION

    return {"format": FORMAT, "version": VERSION, "G_ema": {"kwargs": {}, "state": {"w": torch.zeros(1000, 1000)}}}


def test_snapshot_refused_before_writing_when_the_disk_lacks_room(tmp_path, monkeypatch):
    from engine.checkpoint import estimate_saved_size, save_snapshot

    data = _snapshot_data()
    need = estimate_saved_size(data)
    assert need >= 4_000_000  # the tensors alone are 4 MB
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: 1_500_000)
    with pytest.raises(UserError) as e:
        save_snapshot(tmp_path / "network-snapshot-000004.pt", data)
    message = str(e.value)
    assert message.startswith("the disk is full") and str(tmp_path) in message
    assert "1.5 MB free" in message and fsutil.format_bytes(need) in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [RuntimeError(ENFORCE_FAIL), OSError(errno.ENOSPC, "No space left on device")])
def test_a_write_failing_for_space_is_the_disk_full_line_and_leaves_no_temporary(tmp_path, monkeypatch, failure):
    from engine import checkpoint

    real_save = torch.save

    def save_then_fail(obj, f, *a, **kw):
        real_save({"part": torch.zeros(1000)}, f)  # some bytes reach the temporary file first
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fail)
    target = tmp_path / "network-snapshot-000004.pt"
    target.write_bytes(b"the previous snapshot")
    with pytest.raises(UserError, match=r"^the disk is full: .* the snapshot network-snapshot-000004.pt needs about"):
        checkpoint.save_snapshot(target, _snapshot_data())
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    assert target.read_bytes() == b"the previous snapshot"


def test_disk_full_during_training_fails_the_run_with_that_line(data, tmp_path, monkeypatch):
    from engine.train import process

    monkeypatch.setattr(fsutil, "free_bytes", lambda path: 1000)
    real_line = process.Logger.line

    def line(self, text):  # the full disk refuses the log's last line as well
        if text.startswith("failed:"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_line(self, text)

    monkeypatch.setattr(process.Logger, "line", line)
    with pytest.raises(UserError, match="the disk is full"):
        train(tiny_options(data, tmp_path / "runs", kimg=0.004))
    (run,) = runs.list_runs(tmp_path / "runs")
    assert run["state"] == "failed" and "the disk is full" in run["message"]
    assert not [p for p in Path(run["path"]).iterdir() if p.name.endswith(".tmp")]


# -- over-long names ------------------------------------------------------------------------------------------


def test_5000_character_names_get_their_own_line(data, tmp_path, capsys):
    long = "x" * 5000
    err = _one_line_error(capsys, ["train", "--data", str(data), "--outdir", str(tmp_path / long)])
    assert "--outdir" in err and "5000 bytes long" in err and "at most 255" in err and len(err) < 400
    err = _one_line_error(capsys, ["generate", "--network", str(tmp_path / (long + ".pkl")), "--seeds", "1",
                                   "--outdir", str(tmp_path)])
    assert "network file" in err and "5004 bytes long" in err and len(err) < 400
    err = _one_line_error(capsys, ["prepare", "--source", str(data), "--dest", str(tmp_path / (long + ".zip")),
                                   "--resolution", "8"])
    assert "--dest" in err and "bytes long" in err and len(err) < 400
    demo = ROOT / "assets" / "demo-network.pt"
    err = _one_line_error(capsys, ["generate", "--network", str(demo), "--seeds", "1", "--outdir",
                                   str(tmp_path / long)])
    assert "longer than the file system allows" in err and len(err) < 400
    assert list(tmp_path.iterdir()) == []


# -- prepare on a nearly full disk, hostile zip members -------------------------------------------------------


def _pictures(folder, n, colour=(200, 30, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (colour[0], colour[1], (colour[2] + 7 * i) % 256)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture
def old_pair(tmp_path):
    """A prepared dataset (zip) and its report, as --overwrite finds them -> (dest, {path: bytes})."""
    from engine.data import prepare as prep

    dest = tmp_path / "out" / "set.zip"
    prep.prepare(_pictures(tmp_path / "old", 3), dest, prep.PrepareOptions(resolution=8, workers=1))
    report = dataset_report_path(dest)
    return dest, {dest: dest.read_bytes(), report: report.read_bytes()}


def _assert_untouched(dest, before):
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted(p.name for p in before)  # no temporary left


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_overwrite_failing_at_the_report_keeps_the_old_pair(tmp_path, old_pair, monkeypatch):
    from engine.data import prepare as prep

    dest, before = old_pair
    monkeypatch.setattr(prep, "_write_temp_report", _enospc)
    with pytest.raises(UserError, match="^the disk is full: .* the previous dataset and report, if any, are unchanged"):
        prep.prepare(_pictures(tmp_path / "new", 5, (10, 200, 10)), dest, prep.PrepareOptions(resolution=8, overwrite=True, workers=1))
    _assert_untouched(dest, before)


def test_overwrite_failing_while_renaming_puts_the_old_pair_back(tmp_path, old_pair, monkeypatch):
    from engine.data import prepare as prep

    dest, before = old_pair
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp") and Path(dst) == dataset_report_path(dest):
            raise OSError(errno.EIO, "Input/output error")  # after the new dataset was renamed into place
        return real_replace(src, dst)

    monkeypatch.setattr(prep.os, "replace", replace)
    with pytest.raises(OSError):
        prep.prepare(_pictures(tmp_path / "new", 5, (10, 200, 10)), dest, prep.PrepareOptions(resolution=8, overwrite=True, workers=1))
    monkeypatch.undo()
    _assert_untouched(dest, before)


def test_overwrite_failing_while_writing_images_keeps_the_old_pair(tmp_path, old_pair, monkeypatch):
    from engine.data import prepare as prep

    dest, before = old_pair
    monkeypatch.setattr(prep._ZipWriter, "write", _enospc)
    with pytest.raises(UserError, match="^the disk is full"):
        prep.prepare(_pictures(tmp_path / "new", 5, (10, 200, 10)), dest, prep.PrepareOptions(resolution=8, overwrite=True, workers=1))
    _assert_untouched(dest, before)


def test_prepare_checks_free_space_before_and_while_writing(tmp_path, old_pair, monkeypatch):
    from engine.data import prepare as prep

    dest, before = old_pair
    source = _pictures(tmp_path / "new", 70, (10, 200, 10))
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: 1000)  # not even the report fits
    with pytest.raises(UserError, match=r"^the disk is full: .* has 1.0 KB free but the dataset \(70 images\)"):
        prep.prepare(source, dest, prep.PrepareOptions(resolution=8, overwrite=True, workers=1))
    _assert_untouched(dest, before)
    # Room at the start, then the disk fills up: the running check stops at image 64, not at the end.
    free = iter([10 ** 9] + [1000] * 100)
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: next(free))
    written = []
    real_write = prep._ZipWriter.write
    monkeypatch.setattr(prep._ZipWriter, "write", lambda self, n, b: (written.append(n), real_write(self, n, b)))
    with pytest.raises(UserError, match=r"^the disk is full: .* the rest of the dataset \(6 more pictures\)"):
        prep.prepare(source, dest, prep.PrepareOptions(resolution=8, overwrite=True, workers=1))
    assert len(written) == 64
    _assert_untouched(dest, before)


def test_zip_members_named_outside_the_archive_are_reported_not_dropped(tmp_path):
    from engine.data import prepare as prep

    png = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(png, "PNG")
    long_name = "n" * 5000 + ".png"
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as zf:
        for name in ("ok.png", "../evil.png", "a/../../up.png", "/etc/abs.png", "C:\\\\win.png", long_name):
            zf.writestr(name, png.getvalue())
    result = prep.prepare(src, tmp_path / "out.zip", prep.PrepareOptions(resolution=8))
    from engine.data.dataset import read_report

    report = read_report(tmp_path / "out.zip")
    unsafe = sorted(s["path"] for s in report["skipped"] if s["reason"] == "unsafe-path")
    assert unsafe == sorted(["../evil.png", "a/../../up.png", "/etc/abs.png", "C:\\\\win.png"])
    assert all("outside the archive" in s["detail"] for s in report["skipped"])
    # A 5000-character member name is an ordinary picture: its name only lives in the report.
    assert result.written == 2 and sorted(f[1] for f in report["files"]) == sorted(["ok.png", long_name])
    assert "4 unsafe-path" in result.summary_line
