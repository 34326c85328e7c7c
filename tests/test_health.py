"""Training health warnings from synthetic statistics, and TensorBoard events beside stats.jsonl."""

import json
import math
import os
from collections import namedtuple

import numpy as np
import pytest

from engine import runs
from engine.train import health, tensorboard


def rec(kimg, p=0.0, sign=0.6, g=1.0, d=1.2, skips=None, t=None, sec_per_tick=10.0, maint=1.0):
    r = {"Progress/kimg": {"num": 1, "mean": kimg, "std": 0}, "Progress/augment": {"num": 1, "mean": p, "std": 0},
         "Loss/signs/real": {"num": 64, "mean": sign, "std": 0.5}, "Loss/G/loss": {"num": 64, "mean": g, "std": 1},
         "Loss/D/loss": {"num": 64, "mean": d, "std": 1},
         "Timing/sec_per_tick": {"num": 1, "mean": sec_per_tick, "std": 0},
         "Timing/maintenance_sec": {"num": 1, "mean": maint, "std": 0}, "timestamp": t or 1000.0 + kimg}
    if skips is not None:
        r["Progress/nan_skips"] = {"num": 1, "mean": skips, "std": 0}
    return r


def healthy(n=12, **kw):
    return [rec(4.0 * (i + 1), p=0.1 + 0.001 * i, **kw) for i in range(n)]


def kinds(warnings):
    return sorted(w.kind for w in warnings)


def test_healthy_run_has_no_warnings():
    assert health.check_records(healthy()) == []


def test_p_at_ceiling_and_rising_fast():
    at_ceiling = healthy() + [rec(52.0, p=0.97)]
    (w,) = health.check_overfitting(at_ceiling)
    assert w.kind == "overfitting" and "ceiling" in w.message and "--mirror" in w.message
    # 0.2 -> 0.28 over 40 kimg is 0.002/kimg, ADA's top speed with ada_kimg=500: rising fast.
    fast = [rec(100.0 + 10 * i, p=0.2 + 0.02 * i) for i in range(5)]
    (w,) = health.check_overfitting(fast, ada_kimg=500)
    assert "rising fast" in w.message and "0.20 -> 0.28" in w.message
    # The same rise over ten times the kimg is ADA doing its ordinary work.
    slow = [rec(100.0 + 100 * i, p=0.2 + 0.02 * i) for i in range(5)]
    assert health.check_overfitting(slow, ada_kimg=500) == []
    # A fixed p (--aug fixed) is the user's choice, not a sign of overfitting.
    assert health.check_overfitting(at_ceiling, adaptive=False) == []


def test_real_sign_near_one_only_when_sustained_and_without_ada():
    assert kinds(health.check_overfitting(healthy() + [rec(60.0, sign=0.97)], adaptive=False)) == []
    sure = healthy() + [rec(60.0 + i, sign=0.95) for i in range(5)]
    (w,) = health.check_overfitting(sure, ada_target=0.6, adaptive=False)
    assert "real sign" in w.message and "0.95" in w.message and "--aug ada" in w.message
    # With ADA on, the same signs are what ADA answers by raising p: only p's own checks speak then.
    assert health.check_overfitting(sure, adaptive=True) == []


def test_divergence_loss_explodes_or_becomes_nan():
    exploded = healthy(d=1.2) + [rec(60.0, d=30.0), rec(64.0, d=40.0)]
    (w,) = health.check_divergence(exploded)
    assert w.kind == "divergence" and "D loss exploded to 35" in w.message and "--glr" in w.message
    # One noisy tick is not an explosion: the level is the mean of the last two.
    assert health.check_divergence(healthy(d=1.2) + [rec(60.0, d=1.2), rec(64.0, d=9.0)]) == []
    nan = healthy() + [rec(60.0, g=math.nan)]
    (w,) = health.check_divergence(nan)
    assert "G loss is nan" in w.message


def test_nan_skips_pile_up():
    assert health.check_divergence(healthy(skips=0) + [rec(60.0, skips=1)]) == []
    (w,) = health.check_divergence(healthy(skips=0) + [rec(60.0, skips=1), rec(64.0, skips=3)])
    assert "4 training steps were skipped" in w.message


def test_nan_survives_the_stats_file(tmp_path):
    # stats.jsonl is written with json.dumps, which writes NaN; reading it back must still find the divergence.
    for r in healthy() + [rec(60.0, d=math.inf)]:
        runs.append_jsonl(tmp_path / "stats.jsonl", r)
    assert "D loss is inf" in health.check_run(tmp_path)[0].message


def test_mode_collapse_from_feature_spread():
    rng = np.random.default_rng(0)
    real = rng.normal(size=[200, 16])
    assert health.check_mode_collapse(real, rng.normal(size=[200, 16]) * 0.9) == []
    collapsed = rng.normal(size=[200, 16]) * 0.2 + 3.0
    (w,) = health.check_mode_collapse(real, collapsed, kimg=120)
    assert w.kind == "collapse" and "kimg 120.0" in w.message and "20%" in w.message
    with pytest.raises(ValueError):
        health.feature_spread(np.zeros([1, 4]))


def write_status(run_dir, state="running", pid=None):
    runs.write_json_atomic(run_dir / "status.json", {"state": state, "pid": pid or os.getpid(), "kimg": 1})


def test_stalled_process(tmp_path):
    records = healthy(sec_per_tick=50.0, maint=10.0)  # a tick takes up to 60 s
    for r in records:
        runs.append_jsonl(tmp_path / "stats.jsonl", r)
    write_status(tmp_path)
    last = records[-1]["timestamp"]
    assert health.check_stalled(tmp_path, now=last + 200) == []
    (w,) = health.check_stalled(tmp_path, now=last + 300)
    assert w.kind == "stalled" and "Resume" in w.message
    write_status(tmp_path, state="finished")
    assert health.check_stalled(tmp_path, now=last + 10_000) == []
    # Before the first tick there is nothing to compare with.
    assert health.check_stalled(tmp_path, records=[], status={"state": "running", "alive": True}, now=1e12) == []


def test_disk_nearly_full(tmp_path, monkeypatch):
    (tmp_path / "network-snapshot-000004.pt").write_bytes(b"x" * 1000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(health.shutil, "disk_usage", lambda p: usage(10 ** 12, 0, 10 ** 11))
    assert health.check_disk(tmp_path) == []
    monkeypatch.setattr(health.shutil, "disk_usage", lambda p: usage(10 ** 12, 0, 100 * 2 ** 20))
    (w,) = health.check_disk(tmp_path)
    assert w.kind == "disk" and "0.10 GiB free" in w.message
    # Big snapshots need room for several of them, not just the fixed minimum.
    monkeypatch.setattr(health.shutil, "disk_usage", lambda p: usage(10 ** 12, 0, 5 * 2 ** 30))
    assert health.check_disk(tmp_path, snapshot_bytes=2 * 2 ** 30)[0].kind == "disk"


def test_monitor_logs_each_kind_once_until_it_clears(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(health.shutil, "disk_usage", lambda p: usage(10 ** 12, 0, 10 ** 11))
    monitor = health.Monitor(tmp_path, repeat_ticks=5)
    lines = [monitor.tick(r) for r in healthy(6)]
    assert lines == [[]] * 6
    lines = [monitor.tick(rec(40.0 + i, p=0.99)) for i in range(7)]
    assert [len(x) for x in lines] == [1, 0, 0, 0, 0, 1, 0]
    assert lines[0][0].startswith("warning: ADA p is at its ceiling")
    monitor.tick(rec(50.0, p=0.5))
    assert len(monitor.tick(rec(51.0, p=0.99))) == 1  # back after clearing: said again at once


def test_monitor_names_each_new_best_snapshot(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(health.shutil, "disk_usage", lambda p: usage(10 ** 12, 0, 10 ** 11))
    monitor = health.Monitor(tmp_path)

    def measured(kimg, fid):
        with open(tmp_path / "metric-fid1k.jsonl", "a") as f:
            f.write(json.dumps({"results": {"fid1k": fid}, "metric": "fid1k",
                                "snapshot_pkl": f"network-snapshot-{kimg:06d}.pt"}) + "\n")

    assert monitor.tick(rec(1.0)) == []
    measured(4, 120.0)
    assert monitor.tick(rec(4.0)) == ["best: kimg 4, FID 120.00 (network-snapshot-000004.pt)"]
    measured(8, 130.0)
    assert monitor.tick(rec(8.0)) == []  # worse: the best stays, nothing to say
    measured(12, 90.0)
    assert monitor.tick(rec(12.0)) == ["best: kimg 12, FID 90.00 (network-snapshot-000012.pt)"]


def test_monitor_never_stops_training(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("bad record")

    monkeypatch.setattr(health, "check_records", broken)
    monitor = health.Monitor(tmp_path)
    assert monitor.tick(rec(1.0)) == ["note: training health checks are off for this run (RuntimeError: bad record)"]
    assert monitor.tick(rec(2.0)) == []


def test_check_run_and_markdown(tmp_path):
    for r in healthy() + [rec(60.0, p=0.99)]:
        runs.append_jsonl(tmp_path / "stats.jsonl", r)
    runs.write_json_atomic(tmp_path / "training_options.json", {"ada_kimg": 100, "ada_target": 0.7})
    found = health.check_run(tmp_path)
    assert kinds(found) == ["overfitting"]
    assert health.as_markdown(found).startswith("- ⚠ ADA p is at its ceiling")
    assert health.check_run(tmp_path / "missing") == []


def test_tensorboard_events_beside_stats(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = []
    events = tensorboard.EventLog(tmp_path, lines.append)
    for r in healthy(3):
        events.write(r)
    events.close()
    assert lines == []
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    scalars = acc.Scalars("Loss/D/loss")
    assert [(s.step, s.value) for s in scalars] == [(4, pytest.approx(1.2)), (8, pytest.approx(1.2)),
                                                    (12, pytest.approx(1.2))]
    assert scalars[0].wall_time == pytest.approx(1004.0)
    assert "Progress/augment" in acc.Tags()["scalars"]


def test_tensorboard_off_without_a_folder():
    events = tensorboard.EventLog(None)
    events.write(rec(1.0))  # nothing to write to, and no error
    assert events.writer is None


def test_trainer_logs_warnings_and_writes_events(tmp_path):
    from engine.train.launch import train
    from train_helpers import make_dataset, tiny_options

    data = make_dataset(tmp_path / "data" / "blobs", n=8, res=16)
    # p starts at the ceiling: the first tick's health check must say so in log.txt.
    assert train(tiny_options(data, tmp_path / "runs", kimg=0.008, tick=0.004, p=0.99)) == 0
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    log = (run / "log.txt").read_text()
    assert "warning: ADA p is at its ceiling (0.99" in log
    assert log.count("warning: ADA p is at its ceiling") == 1  # said once while it lasts, not every tick
    if tensorboard.available():
        assert [p for p in run.iterdir() if p.name.startswith("events.out.tfevents.")]


def test_best_snapshot_from_metric_files(tmp_path):
    assert health.best_snapshot(tmp_path) is None

    def metric(name, snap, value):
        with open(tmp_path / f"metric-{name}.jsonl", "a") as f:
            f.write(json.dumps({"results": {name: value}, "metric": name, "snapshot_pkl": snap}) + "\n")

    for kimg, fid, kid in ((0, 300.0, 0.30), (40, 80.5, 0.021), (80, 95.0, 0.019)):
        (tmp_path / f"network-snapshot-{kimg:06d}.pt").write_bytes(b"x")
        metric("fid1k", f"network-snapshot-{kimg:06d}.pt", fid)
        metric("kid1k", f"network-snapshot-{kimg:06d}.pt", kid)
    metric("kid1k", "network-snapshot-000120.pt", math.nan)  # a failed measurement never wins
    best = health.best_snapshot(tmp_path)
    assert best["metric"] == "fid1k" and best["kimg"] == 40 and best["label"] == "best: kimg 40, FID 80.50"
    assert best["path"] == tmp_path / "network-snapshot-000040.pt"
    best = health.best_snapshot(tmp_path, metric="kid1k")
    assert best["snapshot"] == "network-snapshot-000080.pt" and best["label"] == "best: kimg 80, KID 0.0190"
    (tmp_path / "network-snapshot-000080.pt").unlink()
    assert health.best_snapshot(tmp_path, metric="kid1k")["path"] is None
    assert health.best_snapshot(tmp_path, metric="fid50k_full") is None


def test_metrics_record_the_fake_spread_and_a_drop_is_mode_collapse(tmp_path):
    from engine.metrics import append_metric_jsonl, compute_many
    from test_metrics import ProjectionDetector, ReplayGenerator, shape_images, write_dataset_zip

    images = shape_images(30, res=8, seed=5)
    data = write_dataset_zip(tmp_path / "d.zip", images)
    out = compute_many(["kid20", "kid10_full"], ReplayGenerator(images), data, "cpu", batch=8,
                       cache_dir=tmp_path / "c", detector=ProjectionDetector())
    # The replayed fakes are the first 20 reals: the same spread; 10 of them against all 30 reals: a different one.
    assert out[0]["fake_spread_ratio"] == pytest.approx(1.0)
    assert out[1]["fake_spread_ratio"] != pytest.approx(1.0)
    run = tmp_path / "run"
    run.mkdir()
    append_metric_jsonl(run, out[0], "network-snapshot-000000.pt")
    assert json.loads((run / "metric-kid20.jsonl").read_text())["fake_spread_ratio"] == pytest.approx(1.0)

    def at(kimg, ratio, t):
        return {"metric": "kid1k", "snapshot_pkl": f"network-snapshot-{kimg:06d}.pt", "fake_spread_ratio": ratio,
                "timestamp": t}

    # An untrained network's fakes are alike: low at the start is not collapse; a fall from a healthy level is.
    assert health.check_metric_spread({"kid1k": [at(0, 0.2, 1), at(40, 0.25, 2)]}) == []
    (w,) = health.check_metric_spread({"kid1k": [at(0, 0.2, 1), at(40, 0.9, 2), at(80, 0.3, 3)]})
    assert w.kind == "collapse" and "kimg 80.0" in w.message and "down from 90%" in w.message
    assert health.check_metric_spread({"kid1k": [at(40, 0.9, 2), at(80, 0.8, 3)]}) == []
