"""The training supervisor with a tiny real training: launch, status, stop, resume, re-attach, crash."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from polling import wait_for as wait

from engine.errors import UserError
from engine.runs import latest_snapshot
from ui.supervisor import Supervisor, is_training_process, tail

ROOT = Path(__file__).resolve().parents[1]
# Short ticks so a status and a stats line appear within seconds on a CPU.
TINY = {"tick": 0.032, "snap": 100, "metrics": "none", "batch": 8}


@pytest.fixture(scope="module")
def scratch():
    # Our own temporary folder: pytest prunes old basetemp folders of other runs on this machine, which may
    # happen while a training started here still writes into one.
    d = Path(tempfile.mkdtemp(prefix="studio-sup-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def tmp_path(scratch, request):
    d = scratch / request.node.name
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def dataset(scratch):
    from engine.data.prepare import PrepareOptions, prepare

    dest = scratch / "emoji16.zip"
    prepare("emoji", str(dest), PrepareOptions(resolution=16, max_images=64))
    return dest




def status(run_dir):
    try:
        return json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_launch_reattach_stop_resume_crash(tmp_path, dataset):
    work = tmp_path / "studio"
    # The launch happens in another process that then exits: exactly a dashboard that was closed and restarted.
    script = (
        "import json, sys; sys.path.insert(0, %r)\n"
        "from ui.supervisor import Supervisor\n"
        "rec = Supervisor(%r).start(%r, 'tiny', 1000, %r)\n"
        "print(json.dumps({'pid': rec['pid']}))\n" % (str(ROOT), str(work), str(dataset), TINY)
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    pid = json.loads(out.stdout.strip().splitlines()[-1])["pid"]
    try:
        sup = Supervisor(work)
        run = wait(lambda: next((v for v in sup.runs() if v.run_dir is not None and v.launch), None), 240,
                   "the run folder")
        assert run.launch is not None and run.launch["pid"] == pid
        assert run.live and run.state in ("starting", "running")
        assert is_training_process(pid)
        wait(lambda: status(run.run_dir).get("state") == "running" and status(run.run_dir).get("sec_per_kimg"),
             240, "a timed tick")
        view = sup.view(run.run_dir)
        assert view.state == "running" and view.live and view.pid == pid
        assert view.total_kimg == 1000 and view.eta_sec is not None and view.eta_sec > 0
        assert view.log_tail  # log.txt of the run

        # One training per GPU (or per CPU machine) unless forced.
        with pytest.raises(UserError, match="already running"):
            sup.start(dataset, "tiny", 1, TINY)

        stopped = sup.stop(run.run_dir, wait=240)
        assert not stopped.live, "SIGTERM did not end the training"
        assert stopped.state == "stopped", stopped
        snap = latest_snapshot(run.run_dir)
        assert snap is not None and snap.stat().st_size > 0
        kimg_at_stop = stopped.kimg
        assert kimg_at_stop > 0

        with pytest.raises(UserError, match="not running"):
            sup.stop(run.run_dir)

        # Resume continues from the snapshot: a new launch whose run goes on from where the first stopped.
        rec = sup.resume(run.run_dir)
        # The run folder: the trainer takes its newest snapshot once it holds the run's lock.
        assert f"--resume={run.run_dir}" in rec["args"]
        assert "--kimg=1000" in rec["args"] and "length_from" not in rec  # the length it was launched with
        run2 = sup.wait_for_run_dir(rec, timeout=240)
        assert run2 is not None
        assert run2 == run.run_dir  # a resume continues the same folder
        wait(lambda: status(run2).get("pid") == rec["pid"] and status(run2).get("kimg", 0) > kimg_at_stop, 240,
             "the resumed run's next tick")
        assert sup.view(run2).live and sup.view(run2).launch["pid"] == rec["pid"]

        # A crash: kill -9 leaves status.json saying "running"; the supervisor shows the run as failed.
        os.kill(rec["pid"], signal.SIGKILL)
        view = wait(lambda: (lambda v: v if not v.live else None)(sup.view(run2)), 60, "the process to die")
        assert status(run2)["state"] == "running"
        assert view.state == "failed" and view.message and view.log_tail
        assert [(v.name, v.state) for v in Supervisor(work).runs()] == [(run2.name, "failed")]
        # It can be resumed from its last snapshot like any stopped run, with another length if asked.
        assert latest_snapshot(run2) is not None
        rec = sup.resume(run2, kimg=1500)
        assert "--kimg=1500" in rec["args"] and rec["length_from"] == 1000
        assert sup.wait_for_run_dir(rec, timeout=240) == run2
        assert sup.view(run2).launch["length_from"] == 1000
    finally:
        for p in (pid, locals().get("rec", {}).get("pid")):
            if p and is_training_process(p):
                os.killpg(p, signal.SIGKILL)


@pytest.mark.slow
def test_launch_that_fails_before_a_run_folder(tmp_path):
    bad = tmp_path / "not-a-dataset.zip"
    bad.write_text("this is not a zip file")
    sup = Supervisor(tmp_path / "studio")
    rec = sup.start(bad, "tiny", 1, TINY)
    assert sup.wait_for_run_dir(rec, timeout=240) is None
    failed = [v for v in sup.runs() if v.run_dir is None]
    assert len(failed) == 1 and failed[0].state == "failed"
    assert "not-a-dataset" in failed[0].message or "error" in failed[0].message.lower()
    assert "error" in tail(Path(rec["log"])).lower()
    sup.dismiss_failed_launches()
    assert [v for v in sup.runs() if v.run_dir is None] == []


def test_missing_dataset_refused(tmp_path):
    sup = Supervisor(tmp_path / "studio")
    with pytest.raises(UserError, match="dataset not found"):
        sup.start(tmp_path / "nope.zip", "tiny", 1)
    assert sup.runs() == []


def test_tail_keeps_last_lines_and_drops_carriage_returns(tmp_path):
    f = tmp_path / "log.txt"
    f.write_text("".join(f"line {i}\n" for i in range(100)) + "progress 10%\rprogress 90%\n")
    t = tail(f, 3).splitlines()
    assert t == ["line 98", "line 99", "progress 90%"]
    assert tail(tmp_path / "missing.txt") == ""


def _fake_trainer(tmp_path):
    """A stand-in for the Python that launches trainings: it lives (named `... -m engine train ...`) and trains
    nothing, so what the supervisor launches can be counted."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nsleep 60\n")
    fake.chmod(0o755)
    return str(fake)


def _at_once(calls):
    """Run the callables in threads started together -> [(result or None, UserError or None)]."""
    import threading

    barrier = threading.Barrier(len(calls))
    out = [None] * len(calls)

    def one(i, fn):
        barrier.wait()
        try:
            out[i] = (fn(), None)
        except UserError as e:
            out[i] = (None, e)

    threads = [threading.Thread(target=one, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def _kill_launched(results):
    for rec, _ in results:
        if rec and rec.get("pid"):
            try:
                os.killpg(rec["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_start_clicked_twice_at_once_launches_one_training(tmp_path, dataset):
    python = _fake_trainer(tmp_path)
    work = tmp_path / "studio"
    one = Supervisor(work, python=python, slots=1)
    other = Supervisor(work, python=python, slots=1)  # a second dashboard (or tab) on the same workdir
    results = _at_once([lambda: one.start(dataset, "tiny", 1, TINY), lambda: one.start(dataset, "tiny", 1, TINY),
                        lambda: other.start(dataset, "tiny", 1, TINY)])
    try:
        launched = [rec for rec, _ in results if rec]
        refused = [err for _, err in results if err]
        assert len(launched) == 1 and len(refused) == 2, results
        assert all("already running" in str(e) for e in refused)
    finally:
        _kill_launched(results)


def test_resume_clicked_twice_at_once_launches_one_training(tmp_path, dataset):
    python = _fake_trainer(tmp_path)
    work = tmp_path / "studio"
    run = work / "runs" / "00000-emoji16-tiny"
    run.mkdir(parents=True)
    (run / "training_options.json").write_text(json.dumps({"data": str(dataset), "cfg": "tiny", "total_kimg": 10,
                                                           "batch_size": 8}))
    (run / "status.json").write_text(json.dumps({"state": "stopped", "pid": 1, "kimg": 2.0, "total_kimg": 10,
                                                 "tick": 3, "started": 1700000000, "updated": 1700000100}))
    (run / "network-snapshot-000002.pt").write_bytes(b"")
    sups = [Supervisor(work, python=python, slots=4) for _ in range(2)]
    # "Run alongside" ticked: a free GPU does not make a second trainer of one run acceptable.
    results = _at_once([lambda s=s: s.resume(run, force=True) for s in sups for _ in range(2)])
    try:
        launched = [rec for rec, _ in results if rec]
        refused = [err for _, err in results if err]
        assert len(launched) == 1 and len(refused) == 3, results
        assert all("being resumed already" in str(e) for e in refused), refused
        assert f"--resume={run}" in launched[0]["args"]
    finally:
        _kill_launched(results)
