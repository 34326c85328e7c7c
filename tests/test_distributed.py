"""Several processes on the CPU (gloo): torchrun and --gpus N give the single-process result, and resume there.

Randomness that is drawn per rank (augmentation, noise inputs, style mixing, path-length noise) cannot match a
single process's draws, so the comparison with one process switches those off; latents, labels and the data
order are drawn for the whole minibatch on every rank and match by construction. The resume check keeps
everything on.
"""

import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from engine import runs
from engine.train import distributed
from engine.train.launch import train
from train_helpers import make_dataset, tiny_options

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "blobs", n=16, res=16)


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _args(data, outdir, *extra):
    return ["--data", str(data), "--outdir", str(outdir), "--cfg", "tiny", "--batch", "8", "--cbase", "256",
            "--cmax", "16", "--map", "1", "--workers", "0", "--seed", "2", "--device", "cpu", "--progress", "0",
            "--snap", "100", "--tick", "0.008", *extra]


def torchrun(args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "engine",
           "train", *args]
    out = subprocess.run(cmd, cwd=str(ROOT), env=_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def final(outdir):
    from engine.checkpoint import load_snapshot

    found = runs.list_runs(outdir)
    assert len(found) == 1
    return load_snapshot(runs.latest_snapshot(found[0]["path"])), Path(found[0]["path"])


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_total_batch(data, tmp_path):
    """Same total batch, one step, per-rank randomness off on both sides: weights agree to float rounding."""
    flags = ["--kimg", "0.008", "--aug", "noaug", "--style-mixing", "0", "--pl-weight", "0", "--use-noise", "0"]
    torchrun(_args(data, tmp_path / "two", *flags))
    two, run_two = final(tmp_path / "two")
    assert two["options"]["num_gpus"] == 2 and two["options"]["batch_gpu"] == 4
    assert "2 process(es)" in (run_two / "log.txt").read_text()

    # One process, the same minibatch of 8 in two passes of 4 (the per-rank batch) so minibatch-std groups match.
    torch.set_num_threads(1)
    opts = tiny_options(data, tmp_path / "one", batch=8, batch_gpu=4, cbase=256, cmax=16, map=1, seed=2,
                        snap=100, tick=0.008, kimg=0.008, aug="noaug", style_mixing=0.0, pl_weight=0.0,
                        use_noise=False, z_dim=None, w_dim=None)  # the preset's z/w sizes, like the CLI runs
    assert train(opts) == 0
    one, run_one = final(tmp_path / "one")
    for net in ("G", "D", "G_ema"):
        for name, t in one[net]["state"].items():
            if name.endswith("w_avg"):
                continue  # a running mean updated once per pass: two passes here, one per rank there
            u = two[net]["state"][name]
            assert torch.allclose(t, u, rtol=1e-4, atol=1e-6), (net, name, (t - u).abs().max())
    initial = _initial_D(one)
    assert not torch.allclose(one["D"]["state"]["b4.out.weight"], initial["b4.out.weight"])
    # statistics are reduced over ranks: the two-process means are over the same 8 samples
    s1, s2 = runs.read_stats(run_one)[-1], runs.read_stats(run_two)[-1]
    for key in ("Loss/D/loss", "Loss/G/loss", "Loss/r1_penalty"):
        assert s1[key]["num"] == s2[key]["num"] == 8
        assert abs(s1[key]["mean"] - s2[key]["mean"]) < 1e-4 * max(1, abs(s1[key]["mean"])), key


def _initial_D(snap):
    """D as the one-process run built it: seeded with seed * world + rank = 2, right after G."""
    from engine.nets import Discriminator, Generator

    torch.manual_seed(2)
    Generator(**snap["G"]["kwargs"])
    return Discriminator(**snap["D"]["kwargs"]).state_dict()


@pytest.mark.slow
def test_resume_under_torchrun_is_exact_and_matches_gpus_flag(data, tmp_path):
    # Straight: 2 steps with --gpus 2 (our own launcher). Interrupted: torchrun, 1 step, stop, torchrun resume.
    common = ["--kimg", "0.016", "--p", "0.3"]
    out = subprocess.run([sys.executable, "-m", "engine", "train", *_args(data, tmp_path / "a", "--gpus", "2",
                                                                           *common)],
                         cwd=str(ROOT), env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    torchrun(_args(data, tmp_path / "b", "--max-steps", "1", *common))
    _, run_b = final(tmp_path / "b")
    assert runs.read_status(run_b)["state"] == "stopped"
    torchrun(_args(data, tmp_path / "b", "--resume", "latest", *common))
    a, _ = final(tmp_path / "a")
    b, run_b2 = final(tmp_path / "b")
    assert run_b2 == run_b and runs.read_status(run_b)["state"] == "finished"
    assert b["rng"]["world_size"] == 2 and len(b["rng"]["ranks"]) == 2
    for net in ("G", "D", "G_ema"):
        for name, t in a[net]["state"].items():
            assert torch.equal(t, b[net]["state"][name]), (net, name)
    assert a["progress"]["cur_nimg"] == b["progress"]["cur_nimg"] == 16


def _process_group_freed_by_teardown():
    """One rank: join, build an optimiser the way the loop does, tear down -> 0 when the group is gone, else 3."""
    import torch.distributed as dist

    env = distributed.setup("cpu")
    group = weakref.ref(dist.group.WORLD)
    # The first optimiser of a process loads torch._dynamo and, with it, modules that take the default group
    # as a default argument; such a reference would keep the gloo threads alive into interpreter shutdown.
    torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    distributed.all_reduce_sum(torch.ones(1), env)
    distributed.teardown(env)
    gc.collect()
    return 0 if group() is None else 3


@pytest.mark.slow
def test_teardown_frees_the_process_group():
    # A process group still referenced after teardown is destroyed during interpreter shutdown, with gloo's
    # threads still running: a rank that trained and saved well then dies with SIGABRT now and then.
    assert distributed.launch(_process_group_freed_by_teardown, (), 2) == 0
