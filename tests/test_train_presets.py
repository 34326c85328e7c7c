"""Presets (NVIDIA's formulas and numbers), option resolution errors, and the run-folder readers."""

import json
import time

import pytest

from engine.errors import UserError
from engine import runs
from engine.train import presets
from engine.train.options import TrainOptions


def facts(res=256, channels=3, label_dim=0):
    return {"path": "/data/x.zip", "name": "x", "resolution": res, "channels": channels, "label_dim": label_dim,
            "size": 1000}


def test_auto_preset_follows_nvidias_formulas():
    cfg = presets.resolve(TrainOptions(cfg="auto"), facts(256), num_gpus=1, device="cuda")
    assert cfg.batch_size == 16 and cfg.batch_gpu == 16
    assert cfg.r1_gamma == pytest.approx(0.0002 * 256 ** 2 / 16)
    assert cfg.ema_kimg == pytest.approx(16 * 10 / 32) and cfg.ema_rampup == 0.05
    assert cfg.G_kwargs["channel_base"] == 16384 and cfg.G_kwargs["mapping_kwargs"]["num_layers"] == 2
    assert cfg.G_lr == cfg.D_lr == 0.0025
    assert cfg.G_kwargs["num_fp16_res"] == 4 and cfg.G_kwargs["conv_clamp"] == 256  # mixed precision on CUDA
    assert cfg.D_kwargs["epilogue_kwargs"]["mbstd_group_size"] == 4
    big = presets.resolve(TrainOptions(cfg="auto"), facts(1024), num_gpus=8, device="cuda")
    assert big.batch_size == 32 and big.batch_gpu == 4 and big.G_kwargs["channel_base"] == 32768
    assert big.G_lr == 0.002
    cpu = presets.resolve(TrainOptions(cfg="auto"), facts(64), num_gpus=1, device="cpu")
    assert cpu.precision == "fp32" and cpu.G_kwargs["num_fp16_res"] == 0 and cpu.G_kwargs["conv_clamp"] is None


def test_paper_presets_keep_their_numbers_and_flags_override_them():
    p256 = presets.resolve(TrainOptions(cfg="paper256"), facts(256), 1, "cpu")
    assert (p256.batch_size, p256.r1_gamma, p256.ema_kimg, p256.ema_rampup) == (64, 1, 20, None)
    assert p256.G_kwargs["mapping_kwargs"]["num_layers"] == 8 and p256.G_kwargs["channel_base"] == 16384
    cifar = presets.resolve(TrainOptions(cfg="cifar"), facts(32), 2, "cpu")
    assert cifar.pl_weight == 0 and cifar.style_mixing == 0 and cifar.G_reg_interval is None
    assert cifar.D_kwargs["architecture"] == "orig" and cifar.ema_kimg == 500
    o = TrainOptions(cfg="stylegan2", batch=8, gamma=2.5, kimg=10, tick=0.05, snap=3, glr=0.001, dlr=0.003, map=4,
                     cbase=8192, cmax=128, mirror=True, freezed=2)
    cfg = presets.resolve(o, facts(64), 1, "cpu")
    assert (cfg.batch_size, cfg.r1_gamma, cfg.total_kimg, cfg.kimg_per_tick, cfg.snap) == (8, 2.5, 10, 0.05, 3)
    assert (cfg.G_lr, cfg.D_lr) == (0.001, 0.003) and cfg.G_kwargs["channel_max"] == 128
    assert cfg.D_kwargs["block_kwargs"]["freeze_layers"] == 2 and cfg.mirror
    assert "mirror" in presets.describe(cfg) and presets.describe(cfg).startswith("x-stylegan2-gpus1-batch8")


def test_cpu_presets_are_small():
    tiny = presets.resolve(TrainOptions(cfg="tiny"), facts(32), 1, "cpu")
    assert tiny.G_kwargs["channel_max"] <= 64 and tiny.batch_size <= 8 and tiny.total_kimg == 20
    small = presets.resolve(TrainOptions(cfg="small"), facts(64), 1, "cpu")
    assert small.G_kwargs["channel_max"] <= 256


def test_resolution_errors():
    with pytest.raises(UserError, match="multiple of --gpus"):
        presets.resolve(TrainOptions(cfg="auto", batch=6), facts(), 4, "cpu")
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        presets.resolve(TrainOptions(cfg="auto", precision="fp16"), facts(), 1, "cpu")
    with pytest.raises(UserError, match="--aug fixed needs --p"):
        presets.resolve(TrainOptions(aug="fixed"), facts(), 1, "cpu")
    with pytest.raises(UserError, match="--p must be within"):
        presets.resolve(TrainOptions(p=1.5), facts(), 1, "cpu")
    with pytest.raises(UserError, match="augpipe"):
        presets.resolve(TrainOptions(augpipe="xyz"), facts(), 1, "cpu")
    with pytest.raises(UserError, match="labels"):
        presets.resolve(TrainOptions(cond=True), facts(), 1, "cpu")
    cond = presets.resolve(TrainOptions(cond=True), facts(label_dim=5), 1, "cpu")
    assert cond.G_kwargs["c_dim"] == cond.D_kwargs["c_dim"] == 5


def test_run_folder_readers(tmp_path):
    a = runs.next_run_dir(tmp_path, "faces-tiny")
    b = runs.next_run_dir(tmp_path, "faces-tiny")
    assert (a.name, b.name) == ("00000-faces-tiny", "00001-faces-tiny")
    (tmp_path / "notes").mkdir()
    for run in (a, b):
        (run / "training_options.json").write_text(json.dumps({"data": str(tmp_path / "faces.zip"), "cfg": "tiny",
                                                               "total_kimg": 5}))
    for kimg in (0, 2, 10):
        (a / f"network-snapshot-{kimg:06d}.pt").write_bytes(b"x")
    runs.append_jsonl(a / "stats.jsonl", {"Progress/kimg": {"num": 1, "mean": 1.0, "std": 0}})
    with open(a / "stats.jsonl", "a") as f:
        f.write('{"Progress/kimg": {"nu')
    assert [s["Progress/kimg"]["mean"] for s in runs.read_stats(a)] == [1.0]
    runs.write_status(a, "running", kimg=1.0, total_kimg=5, tick=3, started=time.time())
    st = runs.read_status(a)
    assert st["state"] == "running" and st["alive"] and st["tick"] == 3
    (b / "status.json").write_text('{"state": "runn')
    assert runs.read_status(b) is None
    with pytest.raises(ValueError):
        runs.write_status(a, "exploded", kimg=0, total_kimg=1, tick=0)
    assert runs.latest_snapshot(a).name == "network-snapshot-000010.pt"
    assert runs.latest_snapshot(b) is None
    listed = runs.list_runs(tmp_path)
    assert [r["name"] for r in listed] == [a.name, b.name] and listed[0]["snapshots"] == 3
    assert runs.find_resume_latest(tmp_path, tmp_path / "faces.zip") == a / "network-snapshot-000010.pt"
    assert runs.find_resume_latest(tmp_path, tmp_path / "other.zip") is None
    (a / "metric-fid50k_full.jsonl").write_text(json.dumps({"results": {"fid50k_full": 3.2}}) + "\n{torn")
    assert runs.read_metrics(a) == {"fid50k_full": [{"results": {"fid50k_full": 3.2}}]}
    runs.truncate_jsonl(a / "stats.jsonl", lambda r: False)
    assert runs.read_stats(a) == []


def test_ema_half_life_overrides_the_preset():
    tiny = presets.resolve(TrainOptions(cfg="tiny"), facts(32), 1, "cpu")
    assert tiny.ema_kimg == 8 * 10 / 32  # batch * 10 / 32
    assert presets.resolve(TrainOptions(cfg="tiny", ema=1.5), facts(32), 1, "cpu").ema_kimg == 1.5
    assert presets.resolve(TrainOptions(cfg="stylegan2", ema=0), facts(32), 1, "cpu").ema_kimg == 0
    with pytest.raises(UserError, match="--ema"):
        presets.resolve(TrainOptions(cfg="tiny", ema=-1), facts(32), 1, "cpu")
    import argparse

    from engine.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    args = parser.parse_args(["--data", "d.zip", "--outdir", "o", "--ema", "2.5"])
    assert train_command.options_from_args(args).ema == 2.5


def test_lecam_and_apa_are_in_the_presets_vocabulary_off_until_measured(monkeypatch):
    import dataclasses

    for name in presets.PRESETS:
        cfg = presets.resolve(TrainOptions(cfg=name), facts(32), 1, "cpu")
        assert (cfg.lecam_weight, cfg.apa, cfg.apa_target) == (0, False, 0.6), name
    # A preset that turns them on gives them to every run of it; a flag still overrides it.
    monkeypatch.setitem(presets.PRESETS, "tiny", dataclasses.replace(presets.PRESETS["tiny"], lecam=0.3, apa=True))
    on = presets.resolve(TrainOptions(cfg="tiny"), facts(32), 1, "cpu")
    assert (on.lecam_weight, on.apa) == (0.3, True) and presets.describe(on).endswith("-lecam0.3-apa")
    off = presets.resolve(TrainOptions(cfg="tiny", lecam=0, apa=False), facts(32), 1, "cpu")
    assert (off.lecam_weight, off.apa) == (0, False) and "lecam" not in presets.describe(off)
