"""bench/ema_study.py: extra G_ema copies of one training run, written and evaluated."""

import json
from pathlib import Path

import pytest

from test_convergence import make_dataset, run as run_bench
from train_helpers import tensors_equal

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "ema_study.py"


def run(args, tmp_path):
    return run_bench(args, tmp_path, script=BENCH)


@pytest.mark.slow
def test_extra_emas_follow_the_trainers_update_and_are_evaluated(tmp_path):
    import torch

    data = tmp_path / "squares.zip"
    make_dataset(data)
    out = tmp_path / "study"
    # batch 4: the tiny preset's own half-life is 4 * 10 / 32 = 1.25 kimg (with its ramp-up)
    r = run(["--out", str(out), "--half-lives", "1.25,50", "--every", "0.008", "--", "--data", str(data),
             "--outdir", str(out / "runs"), "--cfg", "tiny", "--batch", "4", "--kimg", "0.016", "--tick", "0.008",
             "--cbase", "256", "--cmax", "16", "--map", "1", "--metrics", "none", "--progress", "0"], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    names = sorted(p.name for p in (out / "nets").iterdir())
    assert names == [f"{n}-0000000{k}.pt" for n in ("ema1.25", "ema50", "run-ema1.25") for k in ("08", "16")]

    def weights(name):
        return torch.load(out / "nets" / name, weights_only=True)["G_ema"]["state"]

    for k in ("08", "16"):
        # The same half-life and ramp-up as the run's: the same weights, bit for bit; so is a longer half-life
        # while the ramp-up (5 % of the images so far) is the shorter one.
        assert tensors_equal(weights(f"ema1.25-0000000{k}.pt"), weights(f"run-ema1.25-0000000{k}.pt")) == []
        assert tensors_equal(weights(f"ema50-0000000{k}.pt"), weights(f"run-ema1.25-0000000{k}.pt")) == []
    # Without the ramp-up the extra EMA averages over its whole half-life from the first step: other weights.
    other = tmp_path / "noramp"
    r = run(["--out", str(other), "--half-lives", "1.25", "--no-ramp", "--every", "0.016", "--", "--data", str(data),
             "--outdir", str(other / "runs"), "--cfg", "tiny", "--batch", "4", "--kimg", "0.016", "--tick", "0.008",
             "--cbase", "256", "--cmax", "16", "--map", "1", "--metrics", "none", "--progress", "0"], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    noramp = torch.load(other / "nets" / "ema1.25-000000016.pt", weights_only=True)["G_ema"]["state"]
    assert tensors_equal(noramp, weights("run-ema1.25-000000016.pt")) != []
    assert tensors_equal(torch.load(other / "nets" / "run-ema1.25-000000016.pt", weights_only=True)["G_ema"]["state"],
                         weights("run-ema1.25-000000016.pt")) == []  # the trainer itself is deterministic
    r = run(["--out", str(out), "--eval", "--ref", str(data), "--real", "8", "--images", "4"], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    records = [json.loads(line) for line in (out / "ema.jsonl").read_text().splitlines()]
    assert sorted((x["name"], x["nimg"]) for x in records) == sorted(
        (n, k) for n in ("ema1.25", "ema50", "run-ema1.25") for k in (8, 16))
    assert all(x["fid"] > 0 and x["images"] == 4 and x["real"] == 8 for x in records)
    table = (out / "ema.md").read_text()
    assert "| kimg | run-ema1.25 | ema1.25 | ema50 |" in table and "| 0.0 |" in table
    assert (out / "ema.png").stat().st_size > 1000 and len(list((out / "grids").glob("*.png"))) == 6
