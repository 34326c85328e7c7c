"""Settings of a training run, as plain dataclasses, and the names the command line, the trainer and the dashboard
share for them.

TrainOptions is what the user asked for (None = "not given, use the preset"); TrainConfig is the resolved,
complete set of numbers the loop runs with (presets.resolve() turns one into the other). Both convert to plain
dicts for training_options.json and snapshots.

This module (like presets.py) imports no torch, so the dashboard can take its menus from here without loading the
networks and ops.
"""

import dataclasses
from dataclasses import dataclass, field

AUG_MODES = ("ada", "noaug", "fixed")
# NVIDIA's augmentation pipelines (augment.PIPES holds their strengths, under these names).
AUGPIPES = ("blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgc", "bgcf", "bgcfn", "bgcfnc")
DEFAULT_AUGPIPE = "bgc"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# The metrics the dashboard offers; the trainer takes any fid<N>[k][_full] / kid<N>[k][_full] (engine.metrics).
# "auto": cheap quality tracking where it costs little (engine/train/setup.py: default_metrics); "none": off.
METRIC_CHOICES = ("auto", "none", "fid1k", "kid1k", "fid10k", "fid50k_full", "kid50k_full")

# A TrainOptions field -> the TrainConfig field holding its resolved value, where the two names differ. Every
# other field has the same name in both. The command-line flag of a field is flag(field): gamma -> --gamma,
# batch_gpu -> --batch-gpu.
CONFIG_FIELD = {"batch": "batch_size", "gamma": "r1_gamma", "tick": "kimg_per_tick", "kimg": "total_kimg",
                "target": "ada_target", "p": "aug_p", "glr": "G_lr", "dlr": "D_lr"}
# The settings a user chooses (not derived from the preset) that a resumed run must be given again to go on unchanged.
USER_SETTINGS = ("batch", "gamma", "snap", "tick", "mirror", "aug", "augpipe", "target", "seed", "cond")


def flag(option):
    """The command-line flag of a TrainOptions field: 'batch_gpu' -> '--batch-gpu'."""
    return "--" + option.replace("_", "-")


def config_field(option):
    """The TrainConfig field that holds the resolved value of TrainOptions field `option`."""
    return CONFIG_FIELD.get(option, option)


def user_settings(config):
    """The options (by TrainOptions field name) that rebuild a run's chosen settings from its resolved config (a
    TrainConfig dict, e.g. training_options.json): what a resume passes again. Metrics come as NVIDIA's
    comma-separated list ('none' for none); p only for fixed augmentation, where it is the user's own value."""
    options = {name: config[config_field(name)] for name in USER_SETTINGS
               if config.get(config_field(name)) is not None}
    if config.get("aug") == "fixed" and config.get(config_field("p")) is not None:
        options["p"] = config[config_field("p")]
    metrics = config.get("metrics")
    options["metrics"] = ",".join(metrics) if isinstance(metrics, list) and metrics else "none"
    return options


@dataclass
class TrainOptions:
    data: str = ""
    outdir: str = ""
    cfg: str = "auto"
    gpus: int = 1
    batch: int | None = None
    batch_gpu: int | None = None
    kimg: float | None = None
    snap: int | None = None
    tick: float | None = None
    gamma: float | None = None
    glr: float | None = None
    dlr: float | None = None
    map: int | None = None
    cbase: int | None = None
    cmax: int | None = None
    mbstd_group: int | None = None
    mirror: bool = False
    cond: bool = False
    subset: int | None = None
    seed: int = 0
    workers: int | None = None
    aug: str = "ada"
    p: float | None = None
    target: float | None = None
    augpipe: str | None = None
    resume: str | None = None
    freezed: int = 0
    metrics: list = field(default_factory=list)  # [] = not given: quality tracking by default; ['none'] = off
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    allow_tf32: bool = False
    nobench: bool = False
    desc: str | None = None
    device: str | None = None  # cpu | cuda; None = cuda when available
    progress: bool | None = None  # tqdm bar; None = only on a terminal
    # Overrides for tests and experiments, not exposed as NVIDIA flags.
    style_mixing: float | None = None
    pl_weight: float | None = None
    ema: float | None = None  # G_ema half-life in kimg
    z_dim: int | None = None
    w_dim: int | None = None
    use_noise: bool | None = None
    max_steps: int | None = None  # stop (as if interrupted) after this many steps of this process

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass
class TrainConfig:
    """Everything the loop needs, fully resolved."""

    data: str
    run_dir: str
    cfg: str
    num_gpus: int
    batch_size: int
    batch_gpu: int
    total_kimg: float
    kimg_per_tick: float
    snap: int
    image_snap: int
    G_kwargs: dict
    D_kwargs: dict
    G_lr: float
    D_lr: float
    betas: list
    G_reg_interval: int | None
    D_reg_interval: int | None
    r1_gamma: float
    pl_weight: float
    pl_batch_shrink: int
    pl_decay: float
    style_mixing: float
    ema_kimg: float
    ema_rampup: float | None
    mirror: bool
    cond: bool
    subset: int | None
    seed: int
    workers: int
    aug: str
    augpipe: str
    aug_p: float
    ada_target: float
    ada_interval: int
    ada_kimg: float
    metrics: list
    precision: str  # fp32 | fp16 | bf16
    allow_tf32: bool
    cudnn_benchmark: bool
    device: str
    resume: str | None
    resume_mode: str | None  # None | "continue" | "transfer"
    freezed: int
    progress: bool | None
    max_steps: int | None
    dataset: dict = field(default_factory=dict)
    metrics_note: str = ""  # how the metrics were chosen when the user gave none (logged at the start)
    continue_note: str = ""  # a continued run: the settings it changed and the given flags it keeps (logged)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
