"""The trainer end to end on tiny networks: run folder, exact resume, stop signals, kill -9, NaN, transfer."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.errors import UserError
from engine import runs
from engine.train import health, runlock, setup
from engine.train.launch import train
from polling import wait_for
from train_helpers import make_dataset, tensors_equal, tiny_options

ROOT = Path(__file__).resolve().parents[1]
NVIDIA_KEYS = ["Progress/tick", "Progress/kimg", "Progress/augment", "Timing/total_sec", "Timing/sec_per_tick",
               "Timing/sec_per_kimg", "Timing/maintenance_sec", "Timing/total_hours", "Timing/total_days",
               "Resources/cpu_mem_gb", "Resources/peak_gpu_mem_gb", "Loss/scores/real", "Loss/scores/fake",
               "Loss/signs/real", "Loss/signs/fake", "Loss/G/loss", "Loss/G/reg", "Loss/pl_penalty", "Loss/D/loss",
               "Loss/D/reg", "Loss/r1_penalty"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "blobs", n=16, res=16)


def only_run(outdir):
    found = runs.list_runs(outdir)
    assert len(found) == 1, found
    return Path(found[0]["path"])


def test_tiny_run_end_to_end(data, tmp_path):
    from engine.checkpoint import load_network

    assert train(tiny_options(data, tmp_path, kimg=0.012, p=0.2)) == 0
    run = only_run(tmp_path)
    assert run.name.startswith("00000-blobs-tiny")
    names = {p.name for p in run.iterdir()}
    for f in ("training_options.json", "log.txt", "stats.jsonl", "status.json", "reals.png", "fakes_init.png",
              "fakes000000.png", "network-snapshot-000000.pt"):
        assert f in names, f
    status = runs.read_status(run)
    assert status["state"] == "finished" and status["kimg"] == pytest.approx(0.012)
    # The first tick (one step, 0.004 kimg) took NVIDIA's name for kimg 0; the final one keeps its own file.
    assert status["snapshot"] == "network-snapshot-000000_012.pt" and not status["alive"]
    assert "network-snapshot-000000_012.pt" in names and "fakes000000_012.png" in names
    assert [round(k, 3) for k, _ in runs.list_snapshots(run)] == [0.0, 0.012]
    assert runs.latest_snapshot(run).name == "network-snapshot-000000_012.pt"
    stats = runs.read_stats(run)
    assert [s["Progress/tick"]["mean"] for s in stats] == list(range(len(stats)))
    assert stats[-1]["Progress/kimg"]["mean"] == pytest.approx(0.012)
    assert stats[0]["Progress/augment"]["mean"] == pytest.approx(0.2)
    for key in NVIDIA_KEYS:
        assert key in stats[0] and set(stats[0][key]) == {"num", "mean", "std"}, key
    assert stats[0]["Loss/G/loss"]["num"] == 4  # one value per sample of the batch
    cpu = [s["Resources/process_cpu_sec"]["mean"] for s in stats]
    assert 0 < cpu[0] and cpu == sorted(cpu)  # the training process's CPU seconds, growing
    options = json.loads((run / "training_options.json").read_text())
    assert options["batch_size"] == 4 and options["total_kimg"] == 0.012
    with Image.open(run / "fakes000000.png") as im:
        assert im.size[0] <= 1024 and im.size[0] % 16 == 0 and im.size[0] >= 64
    log = (run / "log.txt").read_text()
    assert "tick 0" in log and "finished" in log
    # Before the first step the log says what each op runs on, for the dtype the run uses (float32 on the CPU).
    ops = [ln for ln in log.splitlines() if ln.startswith("ops: ")]
    assert [ln.split(":")[1].strip() for ln in ops] == ["bias_act cpu float32", "upfirdn2d cpu float32"], ops
    assert log.index("ops: ") < log.index("tick 0")
    assert load_network(run / "network-snapshot-000000.pt")["progress"]["cur_nimg"] == 4
    net = load_network(run / "network-snapshot-000000_012.pt")
    assert net["G_ema"].img_resolution == 16 and net["D"] is not None
    assert net["progress"]["cur_nimg"] == 12
    grids = runs.list_fakes(run)
    assert [g.name for _, g in grids] == ["fakes_init.png", "fakes000000.png", "fakes000000_012.png"]
    assert runs.fakes_kimg(grids[1][1], stats) == pytest.approx(0.004)
    assert runs.fakes_kimg(grids[2][1], stats) == pytest.approx(0.012)


def test_snapshot_names_are_nvidias_per_kimg_and_finer_within_one(tmp_path):
    assert runs.snapshot_name(4032, tmp_path) == "network-snapshot-000004.pt"
    (tmp_path / "network-snapshot-000004.pt").write_bytes(b"")
    assert runs.snapshot_name(4500, tmp_path) == "network-snapshot-000004_500.pt"
    assert runs.fakes_name(4500, tmp_path) == "fakes000004.png"
    for name in ("network-snapshot-000004_500.pt", "network-snapshot-000004_096.pt", "network-snapshot-000012.pt",
                 "network-snapshot-000003_999.pt", "network-snapshot-oops.pt"):
        (tmp_path / name).write_bytes(b"")
    found = [p.name for _, p in runs.list_snapshots(tmp_path)]
    assert found == ["network-snapshot-000003_999.pt", "network-snapshot-000004.pt", "network-snapshot-000004_096.pt",
                     "network-snapshot-000004_500.pt", "network-snapshot-000012.pt"]
    assert sorted(found) == found  # a plain sort of the names (NVIDIA-style tools) gives the same order
    assert runs.latest_snapshot(tmp_path).name == "network-snapshot-000012.pt"
    assert runs.snapshot_kimg("network-snapshot-000004_096.pt") == pytest.approx(4.096)
    assert runs.snapshot_kimg("fakes000002_500.png") == pytest.approx(2.5)
    assert runs.snapshot_kimg("network-snapshot-oops.pt") is None


def _final_state(run):
    from engine.checkpoint import load_snapshot

    return load_snapshot(runs.latest_snapshot(run))


def test_exact_resume_gives_identical_weights(data, tmp_path):
    # Straight: 4 steps. Interrupted: 2 steps, stop (as on SIGTERM), resume, 2 steps. Both with ADA moving p,
    # style mixing, random noise, lazy R1 and path length: every RNG stream and counter must carry over.
    common = dict(kimg=0.016, snap=100, p=0.3, target=0.0)
    assert train(tiny_options(data, tmp_path / "a", **common)) == 0
    assert train(tiny_options(data, tmp_path / "b", max_steps=2, **common)) == 0
    run_b = only_run(tmp_path / "b")
    assert runs.read_status(run_b)["state"] == "stopped"
    halfway = _final_state(run_b)
    # A copy of the halfway snapshot away from its run folder (as assets/demo-training-snapshot.pt) continues just
    # as exactly, in a new run folder.
    import shutil

    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "training-snapshot.pt"
    shutil.copy(runs.latest_snapshot(run_b), copy)
    assert train(tiny_options(data, tmp_path / "c", resume=str(copy), **common)) == 0
    run_c = only_run(tmp_path / "c")
    assert run_c.name.endswith("-continued") and "resumed" in (run_c / "log.txt").read_text()
    assert (run_c / "fakes_init.png").is_file() and sorted(p.name for p in (tmp_path / "copy").iterdir()) == \
        ["training-snapshot.pt"]
    assert train(tiny_options(data, tmp_path / "b", resume=str(runs.latest_snapshot(run_b)), **common)) == 0
    assert only_run(tmp_path / "b") == run_b  # same run folder

    a, b = _final_state(only_run(tmp_path / "a")), _final_state(run_b)
    c = _final_state(run_c)
    for net in ("G", "D", "G_ema"):
        assert tensors_equal(a[net]["state"], b[net]["state"]) == [], net
        assert tensors_equal(a[net]["state"], c[net]["state"]) == [], net
    assert c["progress"]["cur_nimg"] == a["progress"]["cur_nimg"]
    for k in ("cur_nimg", "batch_idx", "pl_mean"):
        assert a["progress"][k] == b["progress"][k], k
    # The optimisers really step: between step 2 and step 4 most tensors of G, D and G_ema change.
    for net in ("G", "D", "G_ema"):
        params = [k for k, v in b[net]["state"].items() if v.is_floating_point() and "noise_const" not in k
                  and "resample_filter" not in k]
        changed = [k for k in params if not torch.equal(b[net]["state"][k], halfway[net]["state"][k])]
        assert len(changed) > 0.6 * len(params), (net, sorted(set(params) - set(changed)))
    assert a["augment"]["p"] == b["augment"]["p"] and a["augment"]["p"] > 0.3
    for name in ("G", "D"):
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        for idx in sa:
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(sa[idx][key], sb[idx][key])
    kimgs = [s["Progress/kimg"]["mean"] for s in runs.read_stats(run_b)]
    assert kimgs == sorted(kimgs) and kimgs[-1] == pytest.approx(0.016)
    assert runs.read_status(run_b)["state"] == "finished"


def test_exact_resume_with_lecam_and_apa_keeps_their_state(data, tmp_path, monkeypatch):
    # APA's p starts at 0 and moves 0.0256 per 100 kimg: here it starts at 0.5 and moves fast, so that generated
    # images replace reals from the first step and p changes at step 4. Interrupted after 3 steps, the interval's
    # sums, p, LeCam's averages and the RNG that picks the replaced images must all carry over.
    from engine.train import loop
    from engine.train.augment import ApaController

    class Eager(ApaController):
        def __init__(self, **kw):
            super().__init__(**dict(kw, speed_kimg=0.05))
            self.pipe.p = 0.5

    monkeypatch.setattr(loop, "ApaController", Eager)
    common = dict(kimg=0.024, snap=100, p=0.3, target=0.0)
    added = dict(lecam=0.3, apa=True, apa_target=0.0)
    assert train(tiny_options(data, tmp_path / "a", **common, **added)) == 0
    assert train(tiny_options(data, tmp_path / "b", max_steps=3, **common, **added)) == 0
    run_b = only_run(tmp_path / "b")
    halfway = _final_state(run_b)
    assert halfway["apa"]["p"] == 0.5 and halfway["rng"]["ranks"][0]["apa_acc"][1] == 12  # 3 steps x 4 reals
    assert halfway["lecam"]["real"] != 0 and halfway["rng"]["ranks"][0]["lecam"] == \
        [halfway["lecam"]["real"], halfway["lecam"]["fake"]]
    # Resumed without the flags: the run keeps its own LeCam weight and APA.
    assert train(tiny_options(data, tmp_path / "b", resume=str(runs.latest_snapshot(run_b)), **common)) == 0
    a, b = _final_state(only_run(tmp_path / "a")), _final_state(run_b)
    for net in ("G", "D", "G_ema"):
        assert tensors_equal(a[net]["state"], b[net]["state"]) == [], net
    assert a["apa"] == b["apa"] and a["apa"]["p"] != 0.5 and a["apa"]["target"] == 0
    assert a["lecam"] == b["lecam"] and a["lecam"]["weight"] == 0.3
    assert (b["options"]["lecam_weight"], b["options"]["apa"]) == (0.3, True)
    stats = runs.read_stats(run_b)
    assert [s["Progress/apa_p"]["mean"] for s in stats][-1] == a["apa"]["p"]
    assert "Loss/D/lecam" in stats[-1] and "APA p 0.500" in (run_b / "log.txt").read_text()


def test_a_continued_run_may_turn_lecam_and_apa_on(data, tmp_path):
    assert train(tiny_options(data, tmp_path, kimg=0.016, snap=100, max_steps=2)) == 0
    snap = str(runs.latest_snapshot(only_run(tmp_path)))
    cfg = setup.prepare_run(tiny_options(data, tmp_path, resume=snap, lecam=0.3, apa=True), 1, create_dir=False)
    assert (cfg.lecam_weight, cfg.apa) == (0.3, True)
    assert "continuing with changed settings: --lecam 0 -> 0.3, --apa 0 -> 1" in cfg.continue_note
    with pytest.raises(UserError, match="^--apa-target 0.7: the run has no pseudo augmentation; add --apa 1"):
        setup.prepare_run(tiny_options(data, tmp_path, resume=snap, apa_target=0.7), 1, create_dir=False)
    assert train(tiny_options(data, tmp_path, resume=snap, kimg=0.016, snap=100, lecam=0.3, apa=True)) == 0
    after = _final_state(only_run(tmp_path))
    assert after["apa"]["p"] >= 0 and after["lecam"]["weight"] == 0.3 and after["progress"]["cur_nimg"] == 16


def test_a_continued_run_takes_new_learning_rates_and_ema_and_names_what_it_keeps(data, tmp_path, capsys):
    common = dict(kimg=0.016, snap=100)
    assert train(tiny_options(data, tmp_path, max_steps=2, **common)) == 0
    run = only_run(tmp_path)
    snap = str(runs.latest_snapshot(run))
    before = _final_state(run)
    assert before["optimizers"]["G"]["param_groups"][0]["lr"] == pytest.approx(0.0025 * 4 / 5)
    capsys.readouterr()
    assert train(tiny_options(data, tmp_path, resume=snap, glr=0.001, dlr=0.0005, ema=7, target=0.7, batch=8,
                              cbase=512, mbstd_group=2, style_mixing=0, **common)) == 0
    # Said on the console and kept in the run's log.txt, after the line that says where the run resumed.
    log = (run / "log.txt").read_text()
    for text in (capsys.readouterr().out, log):
        assert ("continuing with changed settings: --glr 0.0025 -> 0.001, --dlr 0.0025 -> 0.0005, --target 0.6 -> 0.7, "
                "--style-mixing 0.9 -> 0, --ema") in text
        assert "keeps its own --batch (the run has 4)" in text
        # The network's shape comes from the snapshot: a different --cbase is named, an equal --cmax is not.
        assert "--cbase (the run has 256)" in text and "--mbstd-group (the run has 4)" in text
        assert "--cmax" not in text.split("keeps its own")[1]
    assert log.index("resumed ") < log.index("continuing with changed settings")
    # A snapshot in its run folder continues there, whatever --outdir says; the run says so.
    elsewhere = setup.prepare_run(tiny_options(data, tmp_path / "other", resume=snap), 1, create_dir=False)
    assert elsewhere.run_dir == str(run) and f"continues in its own folder {run}" in elsewhere.continue_note
    after = _final_state(run)
    # The moments carry over; the learning rates are the new ones (times the lazy-regularisation ratio).
    assert after["optimizers"]["G"]["param_groups"][0]["lr"] == pytest.approx(0.001 * 4 / 5)
    assert after["optimizers"]["D"]["param_groups"][0]["lr"] == pytest.approx(0.0005 * 16 / 17)
    assert after["options"]["G_lr"] == 0.001 and after["options"]["ema_kimg"] == 7
    assert after["options"]["ada_target"] == 0.7
    assert "--target 0.6 -> 0.7, --style-mixing 0.9 -> 0, --ema 1.25 -> 7" in log
    assert after["options"]["style_mixing"] == 0
    assert after["options"]["batch_size"] == 4 and after["progress"]["cur_nimg"] == 16
    assert json.loads((run / "training_options.json").read_text())["D_lr"] == 0.0005
    # Continued again without the flags: the run's settings are now the changed ones.
    assert train(tiny_options(data, tmp_path, resume=str(runs.latest_snapshot(run)), kimg=0.024, snap=100)) == 0
    assert _final_state(run)["optimizers"]["G"]["param_groups"][0]["lr"] == pytest.approx(0.001 * 4 / 5)
    with pytest.raises(UserError, match="cannot turn R1 regularisation off"):
        train(tiny_options(data, tmp_path, resume=snap, gamma=0, **common))
    fixed = tiny_options(data, tmp_path / "fixed", aug="fixed", p=0.2, max_steps=1, **common)
    assert train(fixed) == 0
    with pytest.raises(UserError, match="--target 0.7: the run's augmentation is --aug fixed"):
        setup.prepare_run(dataclasses.replace(fixed, resume=str(runs.latest_snapshot(only_run(tmp_path / "fixed"))),
                                              target=0.7), 1, create_dir=False)


def _start(args, tmp_path, **popen):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "engine", "train", *args], cwd=str(ROOT), env=env,
                            stdout=open(tmp_path / "out.txt", "w"), stderr=subprocess.STDOUT, **popen)


def _cli_args(data, outdir, *extra):
    return ["--data", str(data), "--outdir", str(outdir), "--cfg", "tiny", "--batch", "4", "--cbase", "256",
            "--cmax", "16", "--map", "1", "--workers", "0", "--seed", "1", "--progress", "0", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["trainer", "process-group"])
def test_sigterm_finishes_the_step_snapshots_and_exits_zero(data, tmp_path, to_group):
    """SIGTERM to the trainer (the dashboard's Stop), or to its whole process group with loader workers running
    (`timeout`, a batch scheduler's time limit): the step ends, a snapshot is written, the exit is 0."""
    args = _cli_args(data, tmp_path / "runs", "--kimg", "100", "--tick", "0.004", "--snap", "1000")
    if to_group:
        args[args.index("--workers") + 1] = "1"
    proc = _start(args, tmp_path, start_new_session=to_group)
    try:
        def ticking():
            found = runs.list_runs(tmp_path / "runs")
            return bool(found) and len(runs.read_stats(found[0]["path"])) >= 2
        wait_for(ticking, 240, "two ticks in stats.jsonl", interval=0.2, proc=proc,
                 log=tmp_path / "out.txt")
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=240) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    run = only_run(tmp_path / "runs")
    status = runs.read_status(run)
    assert status["state"] == "stopped" and status["snapshot"]
    from engine.checkpoint import load_snapshot

    snap = load_snapshot(run / status["snapshot"])
    assert snap["progress"]["cur_nimg"] == round(status["kimg"] * 1000)
    assert "stop requested" in (run / "log.txt").read_text()


@pytest.mark.slow
def test_kill9_leaves_a_loadable_snapshot_and_resume_latest_continues(data, tmp_path):
    from engine.checkpoint import load_snapshot

    outdir = tmp_path / "runs"
    proc = _start(_cli_args(data, outdir, "--kimg", "100", "--tick", "0.004", "--snap", "2"), tmp_path)
    try:
        def two_snapshots_and_more():
            found = runs.list_runs(outdir)
            return bool(found) and len(runs.read_stats(found[0]["path"])) >= 4
        wait_for(two_snapshots_and_more, 240, "four ticks in stats.jsonl", interval=0.2, proc=proc,
                 log=tmp_path / "out.txt")
    finally:
        proc.kill()  # SIGKILL: no handler runs
        proc.wait()
    run = only_run(outdir)
    with open(run / "stats.jsonl", "a") as f:
        f.write('{"Progress/tick": {"num": 1, "me')  # a line torn by the kill
    stats = runs.read_stats(run)
    assert len(stats) >= 4
    snap_path = runs.latest_snapshot(run)
    snap = load_snapshot(snap_path)
    kimg = snap["progress"]["cur_nimg"] / 1000
    assert runs.read_status(run)["state"] == "running" and not runs.read_status(run)["alive"]

    assert train(tiny_options(data, outdir, cbase=256, cmax=16, map=1, seed=1, resume="latest",
                              kimg=kimg + 0.008)) == 0
    assert only_run(outdir) == run
    status = runs.read_status(run)
    assert status["state"] == "finished" and status["kimg"] == pytest.approx(kimg + 0.008)
    kimgs = [s["Progress/kimg"]["mean"] for s in runs.read_stats(run)]
    assert kimgs == sorted(kimgs)  # ticks logged after the snapshot were dropped, the curve continues
    assert "resumed" in (run / "log.txt").read_text()


def test_nan_loss_fails_the_run_and_keeps_the_last_good_snapshot(data, tmp_path, monkeypatch):
    from engine.checkpoint import load_snapshot
    from engine.train.loss import StyleGAN2Loss

    original = StyleGAN2Loss.run_D
    calls = {"n": 0}

    def run_D(self, img, c, update_emas=False):
        calls["n"] += 1
        out = original(self, img, c, update_emas)
        return out * float("nan") if calls["n"] > 12 else out

    monkeypatch.setattr(StyleGAN2Loss, "run_D", run_D)
    assert train(tiny_options(data, tmp_path, kimg=1, tick=0.004)) == 1
    run = only_run(tmp_path)
    status = runs.read_status(run)
    assert status["state"] == "failed" and "NaN/Inf" in status["message"]
    assert "failed: a loss or gradient became NaN/Inf" in (run / "log.txt").read_text()
    snap = load_snapshot(run / "network-snapshot-000000.pt")
    for t in snap["G_ema"]["state"].values():
        assert torch.isfinite(t).all()


def test_resume_on_a_dataset_that_no_longer_fits_is_a_clear_error(tmp_path):
    data = make_dataset(tmp_path / "faces", n=8, res=16)
    assert train(tiny_options(data, tmp_path / "runs", kimg=0.004)) == 0
    run = only_run(tmp_path / "runs")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    import shutil

    shutil.rmtree(data)
    make_dataset(data, n=8, res=8)  # the same dataset prepared again at another resolution
    with pytest.raises(UserError, match="16x16 network"):
        train(tiny_options(data, tmp_path / "runs", kimg=0.008, resume="latest"))
    # The run is read under its lock (.train.lock then names the last trainer that held it); nothing else changes.
    unchanged = lambda files: {k: v for k, v in files.items() if k != runlock.LOCK_NAME}  # noqa: E731
    assert unchanged({p.name: p.stat().st_mtime_ns for p in run.iterdir()}) == unchanged(before)
    assert len(runs.list_runs(tmp_path / "runs")) == 1


def test_transfer_learning_from_an_nvidia_pickle(data, tmp_path):
    from nvidia_fixtures import write_nvidia_pytorch_pkl

    from engine.nets import Discriminator, Generator

    torch.manual_seed(5)
    kw = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=1),
              channel_base=256, channel_max=16)
    G, G_ema = Generator(**kw), Generator(**kw)
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16)
    pkl = tmp_path / "network-snapshot-000100.pkl"
    write_nvidia_pytorch_pkl(pkl, G=G, D=D, G_ema=G_ema, flavor="ada", augment_p=0.4)

    assert train(tiny_options(data, tmp_path / "runs", resume=str(pkl), freezed=1, kimg=0.008, cbase=512,
                              cmax=32)) == 0
    run = only_run(tmp_path / "runs")
    assert run.name.endswith("-resume")
    stats = runs.read_stats(run)
    assert stats[0]["Progress/kimg"]["mean"] == pytest.approx(0.004)  # counters from zero
    snap = _final_state(run)
    assert snap["progress"]["cur_nimg"] == 8
    assert snap["G"]["kwargs"]["channel_max"] == 16  # the source network's shape, not the preset's
    # The first D layer (fromrgb of the top block) is frozen: still the pickle's weights after training.
    assert torch.equal(snap["D"]["state"]["b16.fromrgb.weight"], D.state_dict()["b16.fromrgb.weight"])
    assert not torch.equal(snap["D"]["state"]["b4.out.weight"], D.state_dict()["b4.out.weight"])
    assert "transfer learning from" in (run / "log.txt").read_text()


def test_metrics_are_written_at_each_snapshot(data, tmp_path, monkeypatch):
    import engine.metrics

    seen = []

    def fake_compute_many(names, G, dataset_path, device, **kw):
        seen.append((tuple(names), G.img_resolution, str(dataset_path)))
        return [{"results": {n: 1.5}, "metric": n, "total_time": 0.1, "total_time_str": "0s", "num_gpus": 1}
                for n in names]

    monkeypatch.setattr(engine.metrics, "compute_many", fake_compute_many)
    assert train(tiny_options(data, tmp_path, kimg=0.008, metrics=["fid10"], p=0.9, target=0.0)) == 0
    run = only_run(tmp_path)
    assert "warning: augmentation probability p has stayed above 0.8" in (run / "log.txt").read_text()
    records = runs.read_metrics(run)["fid10"]
    assert len(records) == len(seen) >= 2 and seen[0][:2] == (("fid10",), 16)
    rec = records[-1]
    for key in ("results", "metric", "total_time", "total_time_str", "num_gpus", "snapshot_pkl", "timestamp"):
        assert key in rec
    # Each record names its own snapshot: tick 0's took NVIDIA's name, the final one (0.008 kimg) the finer one.
    assert [r["snapshot_pkl"] for r in records] == ["network-snapshot-000000.pt", "network-snapshot-000000_008.pt"]


def test_default_metrics_by_device_dataset_and_detector(tmp_path, monkeypatch):
    from engine.metrics import detector
    from engine.train.setup import default_metrics

    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "cache"))  # no NVIDIA detector cached here
    monkeypatch.setattr(detector, "offline_detector_path", lambda: tmp_path / "default_1.pt")
    assert default_metrics({"size": 5000}, "cuda")[0] == ["kid1k"]
    metrics, note = default_metrics({"size": 5000}, "cpu")
    assert metrics == [] and "off by default on the CPU" in note and "--metrics kid100" in note
    metrics, note = default_metrics({"size": 40}, "cuda")
    assert metrics == [] and "40 images are too few" in note
    monkeypatch.setattr(detector, "offline_detector_path", lambda: None)
    metrics, note = default_metrics({"size": 5000}, "cuda")
    assert metrics == [] and "no Inception detector" in note
    nvidia = tmp_path / "cache" / "detectors" / detector.NVIDIA_FILE
    nvidia.parent.mkdir(parents=True)
    nvidia.write_bytes(b"cached")
    assert default_metrics({"size": 5000}, "cuda")[0] == ["kid1k"]


def test_metrics_flag_none_auto_and_default(data, tmp_path, monkeypatch):
    from engine.commands.train import _metric_list
    from engine.train import setup

    assert _metric_list("auto") == [] and _metric_list("none") == ["none"] and _metric_list("kid1k") == ["kid1k"]
    cfg = setup.prepare_run(tiny_options(data, tmp_path), 1, create_dir=False)
    assert cfg.metrics == [] and "off by default on the CPU" in cfg.metrics_note  # this machine: the CPU
    monkeypatch.setattr(setup, "default_metrics", lambda facts, device: (["kid1k"], "quality tracking: kid1k"))
    assert setup.prepare_run(tiny_options(data, tmp_path), 1, create_dir=False).metrics == ["kid1k"]
    assert setup.prepare_run(tiny_options(data, tmp_path, metrics=["auto"]), 1, create_dir=False).metrics == ["kid1k"]
    with pytest.raises(UserError, match="unknown metric 'auto'"):
        setup.prepare_run(tiny_options(data, tmp_path, metrics=["auto", "fid10"]), 1, create_dir=False)
    off = setup.prepare_run(tiny_options(data, tmp_path, metrics=["none"]), 1, create_dir=False)
    assert off.metrics == [] and off.metrics_note == ""
    assert setup.prepare_run(tiny_options(data, tmp_path, metrics=["fid10"]), 1, create_dir=False).metrics == ["fid10"]


def test_default_metric_tracking_measures_each_snapshot_and_names_the_best(data, tmp_path, monkeypatch):
    import engine.metrics
    from engine.train import setup

    values = iter([0.30, 0.05, 0.12, 0.2, 0.2, 0.2])

    def fake_compute_many(names, G, dataset_path, device, **kw):
        return [{"results": {n: next(values)}, "metric": n, "total_time": 0.1, "total_time_str": "0s",
                 "num_gpus": 1} for n in names]

    monkeypatch.setattr(engine.metrics, "compute_many", fake_compute_many)
    monkeypatch.setattr(setup, "default_metrics", lambda facts, device: (["kid1k"], "quality tracking: kid1k"))
    assert train(tiny_options(data, tmp_path, kimg=0.024)) == 0
    run = only_run(tmp_path)
    log = (run / "log.txt").read_text()
    assert "note: quality tracking: kid1k" in log
    measured = runs.read_metrics(run)["kid1k"]
    assert len(measured) >= 3
    latest = {r["snapshot_pkl"]: r["results"]["kid1k"] for r in measured}  # a re-measured file: its last value
    best = health.best_snapshot(run)
    assert best["value"] == min(latest.values()) and best["path"] == run / best["snapshot"]
    assert re.search(r"best: kimg \d+, KID 0\.\d{4} \(network-snapshot-", log)  # the trainer's health monitor


def test_bad_options_are_user_errors(data, tmp_path):
    with pytest.raises(UserError, match="--cfg"):
        train(tiny_options(data, tmp_path, cfg="huge"))
    with pytest.raises(UserError, match="labels"):
        train(tiny_options(data, tmp_path, cond=True))
    with pytest.raises(UserError, match="does not exist"):
        train(tiny_options(tmp_path / "nope", tmp_path))
    with pytest.raises(UserError, match="batch-gpu"):
        train(tiny_options(data, tmp_path, batch=4, batch_gpu=3))
    with pytest.raises(UserError, match="no such file"):
        train(tiny_options(data, tmp_path, resume=str(tmp_path / "missing.pt")))
    assert runs.list_runs(tmp_path) == []


@pytest.mark.slow
def test_cli_dry_run_and_error_line(data, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "engine", "train", "--data", str(data), "--outdir", str(tmp_path),
                          "--cfg", "paper256", "--gamma", "3", "--tick", "0.05", "--dry-run"], cwd=str(ROOT),
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["batch_size"] == 64 and cfg["r1_gamma"] == 3 and cfg["kimg_per_tick"] == 0.05
    out = subprocess.run([sys.executable, "-m", "engine", "train", "--data", str(tmp_path / "none"), "--outdir",
                          str(tmp_path)], cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: ") and "Traceback" not in out.stderr


# What a snapshot holds, as the trainer wrote it before the loop was split into modules: a resume and every
# reader of older runs depend on these names and kinds staying as they are.
SNAPSHOT_LAYOUT = {
    "format": "str", "version": "int",
    "G": {"kwargs": "dict", "state": "dict"}, "D": {"kwargs": "dict", "state": "dict"},
    "G_ema": {"kwargs": "dict", "state": "dict"},
    "augment": {"p": "float", "pipe": "str", "kwargs": "dict", "mode": "str", "target": "float"},
    "progress": {"cur_nimg": "int", "kimg": "float", "tick": "int", "batch_idx": "int", "pl_mean": "float",
                 "total_sec": "float", "total_kimg": "float"},
    "optimizers": {"G": "dict", "D": "dict"},
    "options": "dict", "dataset": "dict",
    "rng": {"world_size": "int", "batch_gen": "Tensor",
            "ranks": [{"ada_acc": "Tensor", "pl_mean": "float",
                       "rng": {"torch": "Tensor", "cuda": "NoneType",
                               "numpy": {"name": "str", "keys": "Tensor", "pos": "int", "has_gauss": "int",
                                         "cached_gaussian": "float"},
                               "python": {"version": "int", "state": "list", "gauss": "NoneType"}}}]},
}
OPAQUE = {("G", "kwargs"), ("G", "state"), ("D", "kwargs"), ("D", "state"), ("G_ema", "kwargs"), ("G_ema", "state"),
          ("augment", "kwargs"), ("optimizers", "G"), ("optimizers", "D"), ("options",), ("dataset",),
          ("rng", "ranks", "rng", "python", "state")}


def _layout(value, path=()):
    """Nested names and kinds of a snapshot; the contents of networks, optimisers and options stay opaque."""
    if path not in OPAQUE:
        if isinstance(value, dict):
            return {k: _layout(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [_layout(v, path) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("aug", ["ada", "noaug"])
def test_snapshot_layout_is_unchanged(data, tmp_path, aug):
    from engine.checkpoint import load_snapshot
    from engine.nets import Discriminator, Generator
    from engine.train.augment import make_pipe

    assert train(tiny_options(data, tmp_path, kimg=0.004, aug=aug, p=0.2)) == 0
    run = only_run(tmp_path)
    snap = load_snapshot(runs.latest_snapshot(run))
    expected = json.loads(json.dumps(SNAPSHOT_LAYOUT))
    if aug == "noaug":
        expected["augment"] = "NoneType"
        expected["rng"]["ranks"][0]["ada_acc"] = "NoneType"
    assert _layout(snap) == expected
    # The opaque parts: what the networks, the pipe and the options themselves name.
    options = json.loads((run / "training_options.json").read_text())
    assert snap["options"] == options and snap["dataset"] == options["dataset"]
    G, D = Generator(**options["G_kwargs"]), Discriminator(**options["D_kwargs"])
    for name, net in (("G", G), ("D", D), ("G_ema", G)):
        assert set(snap[name]["state"]) == set(net.state_dict()), name
    assert set(snap["optimizers"]["G"]) == {"state", "param_groups"}
    if aug == "ada":
        assert snap["augment"]["kwargs"] == make_pipe(options["augpipe"]).init_kwargs
        assert snap["augment"] | {"kwargs": None} == {"p": snap["augment"]["p"], "pipe": "bgc", "kwargs": None,
                                                       "mode": "ada", "target": 0.6}
        assert snap["rng"]["ranks"][0]["ada_acc"].dtype == torch.float64
    assert snap["progress"]["cur_nimg"] == 4 and snap["progress"]["batch_idx"] == 1 and snap["rng"]["world_size"] == 1


def test_lecam_and_apa_add_their_entries_to_the_snapshot_only_when_on(data, tmp_path):
    from engine.checkpoint import load_snapshot

    assert train(tiny_options(data, tmp_path, kimg=0.004, lecam=0.3, apa=True)) == 0
    snap = load_snapshot(runs.latest_snapshot(only_run(tmp_path)))
    expected = json.loads(json.dumps(SNAPSHOT_LAYOUT))
    expected["lecam"] = {"weight": "float", "decay": "float", "real": "float", "fake": "float"}
    expected["apa"] = {"p": "float", "target": "float", "speed_kimg": "float"}
    expected["rng"]["ranks"][0].update(lecam=["float", "float"], apa_acc="Tensor")
    assert _layout(snap) == expected
    assert snap["lecam"]["decay"] == 0.99 and snap["apa"] == {"p": 0.0, "target": 0.6, "speed_kimg": 500.0}


@pytest.mark.parametrize("channels", [1, 3])
def test_grids_of_large_images_shrink_the_sheet_to_about_1024_pixels(tmp_path, channels):
    import numpy as np

    from engine.train.grids import GridSetup

    class Images:  # four 1024 px images, each one flat colour
        resolution = 1024

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.full([channels, 1024, 1024], 40 * (i + 1), np.uint8), np.zeros([0], np.float32)

    grid = GridSetup(Images(), torch.zeros([4, 0]), z_dim=4, seed=0)
    assert (grid.cols, grid.rows) == (2, 2)
    grid.save_reals(tmp_path / "reals.png")
    with Image.open(tmp_path / "reals.png") as im:
        assert im.size == (1024, 1024) and im.mode == ("L" if channels == 1 else "RGB")
        sheet = np.asarray(im)
    corners = [sheet[0, 0], sheet[0, 1023], sheet[1023, 0], sheet[1023, 1023]]
    assert [int(np.ravel(c)[0]) for c in corners] == [40 * (i + 1) for i in grid.indices]
