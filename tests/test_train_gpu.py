"""CUDA paths of the trainer: mixed precision (fp16 in the top resolutions, bf16 autocast), TF32 and cuDNN
settings. Skipped where there is no GPU."""

import pytest
import torch

from train_helpers import make_dataset, tiny_options

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_training_steps_on_cuda(tmp_path, precision):
    from engine.checkpoint import load_snapshot
    from engine import runs
    from engine.train.launch import train

    data = make_dataset(tmp_path / "data", n=16, res=32)
    opts = tiny_options(data, tmp_path / "runs", device="cuda", precision=precision, cbase=1024, cmax=64,
                        batch=8, kimg=0.032, tick=0.016, allow_tf32=True, p=0.2)
    assert train(opts) == 0
    run = runs.list_runs(tmp_path / "runs")[-1]
    assert run["state"] == "finished"
    snap = load_snapshot(run["latest_snapshot"])
    kwargs = snap["G"]["kwargs"]
    assert kwargs["num_fp16_res"] == (4 if precision == "fp16" else 0)
    assert kwargs["conv_clamp"] == (256 if precision == "fp16" else None)
    for t in snap["G_ema"]["state"].values():
        assert torch.isfinite(t.float()).all()
    stats = runs.read_stats(run["path"])
    assert all(abs(s["Loss/G/loss"]["mean"]) < 1e3 for s in stats)
    assert stats[-1]["Resources/peak_gpu_mem_gb"]["mean"] > 0


def test_cuda_backend_flags(tmp_path):
    from engine.train.process import configure_backends

    class Cfg:
        cudnn_benchmark = True
        allow_tf32 = True

    configure_backends(Cfg, torch.device("cuda"))
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    Cfg.allow_tf32 = False
    configure_backends(Cfg, torch.device("cuda"))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
