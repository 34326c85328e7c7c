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
                        p=0.3, augpipe="bg", target=0.7, seed=5, metrics=["fid1k", "kid1k"], lecam=0.3, apa=True,
                        apa_target=0.8)
    facts = {"path": "d.zip", "name": "d", "resolution": 16, "channels": 3, "label_dim": 0, "size": 10}
    cfg = presets.resolve(opts, facts, 1, "cpu").to_dict()
    assert settings.user_settings(cfg) == {
        "batch": 4, "gamma": 0.5, "snap": 3, "tick": 0.5, "mirror": True, "aug": "fixed", "augpipe": "bg",
        "target": 0.7, "seed": 5, "cond": False, "p": 0.3, "metrics": "fid1k,kid1k", "lecam": 0.3, "apa": True,
        "apa_target": 0.8}
    # A run made before LeCam and APA existed has no such fields: a resume passes none of them.
    old = {k: v for k, v in cfg.items() if k not in ("lecam_weight", "apa", "apa_target", "apa_kimg")}
    assert not {"lecam", "apa", "apa_target"} & set(settings.user_settings(old))
    assert TrainConfig.from_dict(old).lecam_weight == 0 and TrainConfig.from_dict(old).apa is False
    cfg["aug"], cfg["metrics"] = "ada", []
    got = settings.user_settings(cfg)
    assert "p" not in got and got["metrics"] == "none"


def test_the_options_table_makes_the_flags_the_fields_and_the_checks():
    import argparse

    from engine.commands.train import add_arguments, options_from_args

    assert [f.name for f in dataclasses.fields(TrainOptions)] == [o.name for o in settings.OPTIONS]
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {o.config for o in settings.OPTIONS if o.config} <= config_fields
    # Where the names differ, the table says so (no "same name in both" by assumption).
    assert (settings.config_field("ema"), settings.config_field("gpus")) == ("ema_kimg", "num_gpus")
    with pytest.raises(KeyError):
        settings.config_field("outdir")  # the run folder is made inside it: no field of its own
    p = argparse.ArgumentParser()
    add_arguments(p)
    flags = {s for a in p._actions for s in a.option_strings}
    assert flags == {o.flag for o in settings.OPTIONS if o.cli} | {"--fp32", "--dry-run", "-h", "--help"}
    parsed = options_from_args(p.parse_args(["--data", "d", "--outdir", "o"]))
    assert parsed == TrainOptions(data="d", outdir="o")  # argparse's defaults are the table's
    parsed = options_from_args(p.parse_args(["--data", "d", "--outdir", "o", "--gamma", "0", "--target", "0",
                                             "--fp32", "--device", "auto", "--mirror"]))
    assert (parsed.gamma, parsed.target, parsed.precision, parsed.device, parsed.mirror) == (0, 0, "fp32", None, True)
    assert set(settings.RETUNABLE) == {"glr", "dlr", "gamma", "ema", "target", "style_mixing", "lecam", "apa",
                                       "apa_target"}
    assert {o.flag for o in settings.OPTIONS if o.on_continue == "change"} <= {
        f for f in flags if f in p.format_help().split("a continued run may change")[1]}


@pytest.mark.parametrize("name,value,message", [
    ("gamma", -1, "--gamma must be at least 0"), ("target", 1.5, "--target must be within [0, 1]"),
    ("tick", 0, "--tick must be above 0"), ("batch", 0, "--batch must be at least 1"),
    ("ema", float("nan"), "--ema nan is not a finite number")])
def test_numbers_are_checked_by_the_table(name, value, message):
    from engine.errors import UserError

    with pytest.raises(UserError) as e:
        settings.check_numbers(TrainOptions(**{name: value}))
    assert message in str(e.value)
    settings.check_numbers(TrainOptions(gamma=0, target=0, p=1, workers=0))  # the edges that are allowed


def test_the_train_form_is_made_from_the_table_and_0_is_a_value():
    from engine.errors import UserError
    from ui.train_tab import FORM_KEYS, FORM_OPTIONS, form_flags, form_value

    assert FORM_KEYS[:3] == ["dataset", "preset", "kimg"] and all(n in settings.OPTION for n in FORM_OPTIONS)
    empty = {name: "" for name in FORM_OPTIONS}
    empty.update(aug="ADA (adaptive)", mirror=False, cond=False, metrics="auto", seed=0)
    flags = form_flags(empty)
    assert "gamma" not in flags and "target" not in flags and "batch" not in flags  # empty: the preset's
    flags = form_flags(dict(empty, gamma="0", target=" 0 ", batch="8", p=0.5))
    assert flags["gamma"] == 0 and flags["target"] == 0 and flags["batch"] == 8
    assert "p" not in flags  # p is for fixed augmentation only
    assert form_flags(dict(empty, aug="Fixed p", p=0.3, target=0.7))["p"] == 0.3
    with pytest.raises(UserError, match="^Batch must be at least 1"):
        form_flags(dict(empty, batch="0"))
    with pytest.raises(UserError, match="^R1 gamma 'abc' is not a number; leave it empty for the preset's$"):
        form_flags(dict(empty, gamma="abc"))
    with pytest.raises(UserError, match="^Batch '8.5' is not a whole number$"):
        form_flags(dict(empty, batch="8.5"))
    # What a run was launched with comes back into the same fields.
    launched = dict(flags, aug="fixed", p=0.3, mirror=1, metrics="kid1k")
    back = {name: form_value(name, launched.get(name)) for name in FORM_OPTIONS}
    assert (back["gamma"], back["target"], back["batch"], back["aug"], back["p"], back["mirror"]) == \
        ("0", "0", "8", "Fixed p", 0.3, True)
    assert back["snap"] == "" and back["metrics"] == "kid1k"  # empty: the preset's (a number field shows 0)


def test_gamma_0_and_target_0_from_the_form_reach_the_config():
    from engine.train import presets
    from ui.train_tab import FORM_OPTIONS, form_flags

    values = {name: "" for name in FORM_OPTIONS}
    values.update(aug="ADA (adaptive)", mirror=False, cond=False, metrics="none", seed=0, gamma="0", target="0")
    opts = TrainOptions(data="d.zip", cfg="tiny", **{k: v for k, v in form_flags(values).items() if k != "metrics"})
    facts = {"path": "d.zip", "name": "d", "resolution": 16, "channels": 3, "label_dim": 0, "size": 10}
    cfg = presets.resolve(opts, facts, 1, "cpu")
    assert cfg.r1_gamma == 0 and cfg.D_reg_interval is None and cfg.ada_target == 0


def test_lecam_and_apa_flags_reach_the_config_and_default_to_the_presets():
    import argparse

    from engine.commands.train import add_arguments, options_from_args
    from engine.train import presets

    p = argparse.ArgumentParser()
    add_arguments(p)
    facts = {"path": "d.zip", "name": "d", "resolution": 16, "channels": 3, "label_dim": 0, "size": 10}

    def resolved(*flags):
        opts = options_from_args(p.parse_args(["--data", "d.zip", "--outdir", "o", "--cfg", "tiny", *flags]))
        return opts, presets.resolve(opts, facts, 1, "cpu")

    opts, cfg = resolved()
    assert (opts.lecam, opts.apa, opts.apa_target) == (None, None, None)  # not given: the preset's
    assert (cfg.lecam_weight, cfg.apa, cfg.apa_target, cfg.apa_kimg) == (0, False, 0.6, 500)
    opts, cfg = resolved("--lecam", "0.3", "--apa", "--apa-target", "0.7")
    assert (cfg.lecam_weight, cfg.apa, cfg.apa_target) == (0.3, True, 0.7)
    assert presets.describe(cfg).endswith("-lecam0.3-apa")
    assert resolved("--apa", "0")[1].apa is False and resolved("--apa", "1")[1].apa is True
    assert resolved("--lecam", "0")[1].lecam_weight == 0


@pytest.mark.parametrize("flags,message", [
    (["--lecam", "-1"], "--lecam must be at least 0, got -1"),
    (["--lecam", "inf"], "--lecam inf is not a finite number"),
    (["--apa-target", "1.5"], "--apa-target must be within [0, 1], got 1.5")])
def test_bad_lecam_and_apa_values_are_one_line(flags, message):
    import argparse

    from engine.commands.train import add_arguments, options_from_args
    from engine.errors import UserError

    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(UserError) as e:
        settings.check_numbers(options_from_args(p.parse_args(["--data", "d", "--outdir", "o", *flags])))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_the_train_form_sends_lecam_and_apa_and_reads_them_back():
    from engine.errors import UserError
    from ui.train_tab import FORM_OPTIONS, PRESETS_CHOICE, form_flags, form_value

    assert {"lecam", "apa", "apa_target"} <= set(FORM_OPTIONS)
    empty = {name: "" for name in FORM_OPTIONS}
    empty.update(aug="ADA (adaptive)", mirror=False, cond=False, metrics="auto", seed=0, apa=PRESETS_CHOICE)
    flags = form_flags(empty)
    assert not {"lecam", "apa", "apa_target"} & set(flags)  # left to the preset
    flags = form_flags(dict(empty, lecam="0.3", apa="on", apa_target="0.7"))
    assert (flags["lecam"], flags["apa"], flags["apa_target"]) == (0.3, True, 0.7)
    assert form_flags(dict(empty, apa="off"))["apa"] is False
    with pytest.raises(UserError, match="^LeCam weight must be at least 0, got -1$"):
        form_flags(dict(empty, lecam="-1"))
    with pytest.raises(UserError, match="^APA target must be within"):
        form_flags(dict(empty, apa_target="2"))
    # What a run was launched with (the supervisor passes 1/0 for switches) comes back into the same fields.
    assert [form_value("apa", v) for v in (None, True, 1, "1", False, 0)] == \
        [PRESETS_CHOICE, "on", "on", "on", "off", "off"]
    assert (form_value("lecam", 0.3), form_value("lecam", None), form_value("apa_target", 0.7)) == ("0.3", "", "0.7")
