"""The settings vocabulary: torch-free, and the one table between flags, options and resolved config fields."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from engine.train import options as settings
from engine.train.options import TrainConfig, TrainOptions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["engine.train.options", "engine.train.presets", "engine.runs"])
def test_vocabulary_imports_no_torch(module):
    code = f"import {module}, sys; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_pipe_names_are_the_augmentations_pipes():
    from engine.train.augment import PIPES

    assert tuple(PIPES) == settings.AUGPIPES and settings.DEFAULT_AUGPIPE in PIPES


def test_metric_choices_are_valid_metric_names():
    from engine.metrics import parse_metric

    for name in settings.METRIC_CHOICES:
        if name not in ("auto", "none"):
            assert parse_metric(name).name == name


def test_every_mapped_field_exists_on_both_sides():
    option_fields = {f.name for f in dataclasses.fields(TrainOptions)}
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for option in (*settings.CONFIG_FIELD, *settings.USER_SETTINGS):
        assert option in option_fields, option
        assert settings.config_field(option) in config_fields, option
    assert settings.flag("batch_gpu") == "--batch-gpu" and settings.config_field("gamma") == "r1_gamma"


def test_user_settings_round_trip_through_a_resolved_config():
    from engine.train import presets

    opts = TrainOptions(data="d.zip", cfg="tiny", batch=4, gamma=0.5, snap=3, tick=0.5, mirror=True, aug="fixed",
                        p=0.3, augpipe="bg", target=0.7, seed=5, metrics=["fid1k", "kid1k"])
    facts = {"path": "d.zip", "name": "d", "resolution": 16, "channels": 3, "label_dim": 0, "size": 10}
    cfg = presets.resolve(opts, facts, 1, "cpu").to_dict()
    assert settings.user_settings(cfg) == {
        "batch": 4, "gamma": 0.5, "snap": 3, "tick": 0.5, "mirror": True, "aug": "fixed", "augpipe": "bg",
        "target": 0.7, "seed": 5, "cond": False, "p": 0.3, "metrics": "fid1k,kid1k"}
    cfg["aug"], cfg["metrics"] = "ada", []
    got = settings.user_settings(cfg)
    assert "p" not in got and got["metrics"] == "none"
