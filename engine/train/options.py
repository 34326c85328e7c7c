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

ADA_TARGET = 0.6  # ADA's target for E[sign(D(real))] when none is given (NVIDIA's)
# Adaptive pseudo augmentation (Jiang et al. 2021): its target for E[sign(D(real))] when none is given (the paper's).
APA_TARGET = 0.6
# LeCam regularisation (Tseng et al. 2021): the decay of its moving averages of D's outputs (the paper's), and the
# weight the help suggests (the paper's order for StyleGAN2).
LECAM_DECAY = 0.99
LECAM_SUGGESTED = 0.3


@dataclass(frozen=True)
class Option:
    """One training option: its TrainOptions field, flag, resolved config field, default, range and what a continued
    run does with it. argparse, the number checks, the flag <-> field map, the set a continued run may change and
    the Train tab's fields and their read-back are all made from the table OPTIONS below.

    kind: int | float | bool | str | choice | metrics. default None means "not given: use the preset's value".
    config: the TrainConfig field holding the resolved value (None: the option has none of its own).
    on_continue: what a continued run (--resume of its own snapshot) does with the option when it is given:
      change  - takes the new value and says so (the optimisation settings);
      session - takes it for this session (length, snapshot interval, workers, ...);
      keep    - keeps the run's own value and names the flag as kept;
      shape   - the network's shape: kept from the snapshot, named as kept;
      ""      - not a setting of the run (paths, devices, what to continue from).
    low/low_ok/high: the allowed range of a number. cli: whether `python -m engine train` has the flag.
    label/info: the Train tab's words, for the options on its form.
    """

    name: str
    kind: str
    default: object = None
    config: str | None = None
    low: float | None = None
    low_ok: bool = True
    high: float | None = None
    choices: tuple = ()
    on_continue: str = ""
    user: bool = False  # a setting the user chose that a resumed run is launched with again
    group: str = "advanced"
    metavar: str | None = None
    help: str = ""
    cli: bool = True
    optional_value: bool = False  # a bool flag that may stand alone (--mirror means --mirror 1)
    label: str = ""
    info: str = ""

    @property
    def flag(self):
        return flag(self.name)


def _o(name, kind, **kw):
    kw.setdefault("config", name)
    return Option(name, kind, **kw)


OPTIONS = (
    # required
    _o("data", "str", default="", group="required", metavar="PATH", help="prepared dataset (zip or folder)"),
    _o("outdir", "str", default="", config=None, group="required", metavar="DIR", help="where run folders are made"),
    # base configuration
    _o("cfg", "str", default="auto", on_continue="keep", group="base configuration", metavar="NAME",
       help="preset: {presets} (default auto)"),
    _o("gpus", "int", default=1, config="num_gpus", low=1, group="base configuration", metavar="N",
       help="processes (GPUs) on this machine (default 1)"),
    _o("kimg", "float", config="total_kimg", low=0, low_ok=False, on_continue="session", group="base configuration",
       metavar="KIMG", help="total length of training in thousands of images"),
    _o("batch", "int", config="batch_size", low=1, on_continue="keep", user=True, group="base configuration",
       metavar="N", help="total minibatch over all GPUs", label="Batch", info="empty: the preset's"),
    _o("batch_gpu", "int", low=1, group="base configuration", metavar="N",
       help="samples per GPU per pass (gradient accumulation)"),
    _o("gamma", "float", config="r1_gamma", low=0, on_continue="change", user=True, group="base configuration",
       metavar="G", help="R1 regularisation weight", label="R1 gamma", info="empty: the preset's; 0 turns R1 off"),
    _o("glr", "float", config="G_lr", low=0, low_ok=False, on_continue="change", group="base configuration",
       metavar="LR", help="generator learning rate"),
    _o("dlr", "float", config="D_lr", low=0, low_ok=False, on_continue="change", group="base configuration",
       metavar="LR", help="discriminator learning rate"),
    _o("map", "int", config=None, low=1, on_continue="shape", group="base configuration", metavar="N",
       help="mapping network depth"),
    _o("cbase", "int", config=None, low=1, on_continue="shape", group="base configuration", metavar="N",
       help="channel base (capacity)"),
    _o("cmax", "int", config=None, low=1, on_continue="shape", group="base configuration", metavar="N",
       help="maximum channels per layer"),
    _o("mbstd_group", "int", config=None, low=1, on_continue="shape", group="base configuration", metavar="N",
       help="minibatch-std group size"),
    _o("seed", "int", default=0, on_continue="keep", user=True, group="base configuration",
       help="random seed (default 0)", label="Seed"),
    # dataset
    _o("cond", "bool", default=False, on_continue="keep", user=True, group="dataset", metavar="BOOL",
       optional_value=True, help="train conditionally on the dataset's labels", label="Class-conditional"),
    _o("subset", "int", low=1, on_continue="keep", group="dataset", metavar="N",
       help="train on N images of the dataset"),
    _o("mirror", "bool", default=False, on_continue="keep", user=True, group="dataset", metavar="BOOL",
       optional_value=True, help="add x-flipped copies of the images", label="Mirror (x-flip) images"),
    _o("workers", "int", low=0, on_continue="session", group="dataset", metavar="N",
       help="data loader processes (default 3 on CUDA, 0 on CPU)"),
    # augmentation
    _o("aug", "choice", default="ada", choices=AUG_MODES, on_continue="keep", user=True, group="augmentation",
       help="augmentation mode (default ada)", label="Augmentation"),
    _o("p", "float", config="aug_p", low=0, high=1, on_continue="keep", group="augmentation", metavar="P",
       help="augmentation probability (--aug fixed; start value for ada)", label="p (for fixed augmentation)"),
    _o("target", "float", config="ada_target", low=0, high=1, on_continue="change", user=True, group="augmentation",
       metavar="T", help=f"ADA target for E[sign(D(real))] (default {ADA_TARGET:g})", label="ADA target",
       info=f"empty: {ADA_TARGET:g}"),
    _o("augpipe", "choice", choices=AUGPIPES, on_continue="keep", user=True, group="augmentation", metavar="PIPE",
       help=", ".join(f"{name} (default)" if name == DEFAULT_AUGPIPE else name for name in AUGPIPES),
       label="Pipe"),
    # limited data: two additions of the literature for a few hundred to a few thousand images (presets: off)
    _o("lecam", "float", config="lecam_weight", low=0, on_continue="change", user=True, group="limited data",
       metavar="WEIGHT", help=f"LeCam regularisation of D: weight of the distance of D's outputs from moving averages "
                              f"of its outputs on the other side (e.g. {LECAM_SUGGESTED:g}; 0: off; default: the "
                              f"preset's)", label="LeCam weight", info=f"empty: the preset's; e.g. {LECAM_SUGGESTED:g}"),
    _o("apa", "bool", on_continue="change", user=True, group="limited data", metavar="BOOL", optional_value=True,
       help="adaptive pseudo augmentation: D sees a fraction p of generated images labelled real, p adjusted like "
            "ADA's (default: the preset's)", label="Pseudo augmentation (APA)",
       info="for small datasets: D also sees generated images labelled real, at an adaptive rate"),
    _o("apa_target", "float", low=0, high=1, on_continue="change", user=True, group="limited data", metavar="T",
       help=f"APA target for E[sign(D(real))] (default {APA_TARGET:g})", label="APA target",
       info=f"empty: {APA_TARGET:g}"),
    # transfer learning and resume
    _o("resume", "str", group="transfer learning and resume", metavar="PATH|latest",
       help="snapshot of a run to continue, 'latest', a run folder (its newest snapshot), or a network (.pkl/.pt) "
            "to start from; a continued run may change {retunable}"),
    _o("freezed", "int", default=0, low=0, on_continue="keep", group="transfer learning and resume", metavar="N",
       help="freeze the first N layers of D"),
    # progress and output
    _o("snap", "int", low=1, on_continue="session", user=True, group="progress and output", metavar="TICKS",
       help="snapshot and image grid every TICKS ticks", label="Snapshot every N ticks", info="empty: the preset's"),
    _o("tick", "float", config="kimg_per_tick", low=0, low_ok=False, on_continue="session", user=True,
       group="progress and output", metavar="KIMG", help="kimg per tick (fractions allowed, e.g. 0.05)",
       label="kimg per tick", info="empty: the preset's"),
    _o("metrics", "metrics", default=(), on_continue="session", user=True, group="progress and output",
       metavar="LIST", help="metrics at each snapshot, e.g. fid50k_full,kid1k, or none; default (auto): kid1k on a "
                            "GPU when an Inception detector is installed and the dataset has 100+ images, none on "
                            "the CPU", label="Metrics at each snapshot", info="auto: kid1k on a GPU"),
    _o("desc", "str", config=None, group="progress and output", metavar="TEXT",
       help="run folder name suffix instead of the generated one"),
    _o("progress", "bool", on_continue="session", group="progress and output", metavar="BOOL", optional_value=True,
       help="progress bar on the console (default: when it is a terminal)"),
    _o("max_steps", "int", low=1, on_continue="session", group="progress and output", metavar="N",
       help="stop (with a snapshot, resumable) after N steps of this session"),
    # advanced
    _o("style_mixing", "float", low=0, high=1, on_continue="change", metavar="P",
       help="style mixing probability (preset: 0.9)"),
    _o("pl_weight", "float", low=0, on_continue="keep", metavar="W",
       help="path length regularisation weight (preset: 2)"),
    _o("use_noise", "bool", config=None, on_continue="shape", metavar="BOOL", help="noise inputs in G (default 1)"),
    _o("ema", "float", config="ema_kimg", low=0, on_continue="change", metavar="KIMG",
       help="half-life of the generator's moving average in kimg (preset: batch * 10 / 32)"),
    _o("z_dim", "int", config=None, low=1, on_continue="shape", cli=False),
    _o("w_dim", "int", config=None, low=1, on_continue="shape", cli=False),
    # performance
    _o("precision", "choice", default="auto", choices=PRECISIONS, on_continue="keep", group="performance",
       help="auto: fp16 in the top 4 resolutions on CUDA, fp32 on the CPU"),
    _o("allow_tf32", "bool", default=False, group="performance", metavar="BOOL", optional_value=True,
       help="allow TF32 matrix maths on Ampere and newer GPUs"),
    # the config's cudnn_benchmark is the opposite of --nobench
    _o("nobench", "bool", default=False, config=None, group="performance", metavar="BOOL", optional_value=True,
       help="disable cuDNN benchmarking"),
    _o("device", "choice", config=None, choices=("cpu", "cuda"), group="performance",
       help="default: cuda when available"),
)
OPTION = {o.name: o for o in OPTIONS}
# The options a continued run may change, saying so.
RETUNABLE = tuple(o.name for o in OPTIONS if o.on_continue == "change")
# The settings a user chooses (not derived from the preset) that a resumed run must be given again to go on unchanged.
USER_SETTINGS = tuple(o.name for o in OPTIONS if o.user)
# A TrainOptions field -> the TrainConfig field holding its resolved value, where it has one.
CONFIG_FIELD = {o.name: o.config for o in OPTIONS if o.config}


def flag(option):
    """The command-line flag of a TrainOptions field: 'batch_gpu' -> '--batch-gpu'."""
    return "--" + option.replace("_", "-")


def config_field(option):
    """The TrainConfig field that holds the resolved value of TrainOptions field `option` (KeyError if none)."""
    field_name = OPTION[option].config
    if field_name is None:
        raise KeyError(f"{option} has no field of its own in the resolved config")
    return field_name


def check_numbers(options, name_of=None):
    """Every numeric option is a finite number in its range: one line naming it (its flag, or name_of(Option): the
    dashboard's label) before anything is made."""
    import math

    from engine.errors import UserError

    for o in OPTIONS:
        if o.kind not in ("int", "float") or (o.low is None and o.high is None):
            continue
        what = name_of(o) if name_of else o.flag
        value = getattr(options, o.name, None)
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise UserError(f"{what} {value!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{what} {value!r} is not a number")
        if not math.isfinite(value):
            raise UserError(f"{what} {value} is not a finite number; give an ordinary number such as "
                            f"{'1' if (o.low or 0) >= 1 else '0.5'}")
        if o.low is not None and (value < o.low or (value == o.low and not o.low_ok)):
            raise UserError(f"{what} must be {'at least' if o.low_ok else 'above'} {o.low:g}, got {value:g}")
        if o.high is not None and value > o.high:
            raise UserError(f"{what} must be within [{o.low:g}, {o.high:g}], got {value:g}")


def user_settings(config):
    """The options (by TrainOptions field name) that rebuild a run's chosen settings from its resolved config (a
    TrainConfig dict, e.g. training_options.json): what a resume passes again. Metrics come as NVIDIA's
    comma-separated list ('none' for none); p only for fixed augmentation, where it is the user's own value."""
    options = {name: config[config_field(name)] for name in USER_SETTINGS
               if name != "metrics" and config.get(config_field(name)) is not None}
    if config.get("aug") == "fixed" and config.get(config_field("p")) is not None:
        options["p"] = config[config_field("p")]
    metrics = config.get("metrics")
    options["metrics"] = ",".join(metrics) if isinstance(metrics, list) and metrics else "none"
    return options


def _option_fields():
    out = []
    for o in OPTIONS:
        if isinstance(o.default, (list, tuple)):
            out.append((o.name, object, field(default_factory=lambda d=o.default: list(d))))
        else:
            out.append((o.name, object, field(default=o.default)))
    return out


# What the user asked for: one field per Option, with its default (None = not given, use the preset's value).
TrainOptions = dataclasses.make_dataclass(
    "TrainOptions", _option_fields(),
    namespace={"to_dict": lambda self: dataclasses.asdict(self), "__module__": __name__,
               "__doc__": "What the user asked for, one field per entry of OPTIONS (None = use the preset's)."})


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
    # Limited-data additions (defaults: off, as in a run made before they existed).
    lecam_weight: float = 0.0
    apa: bool = False
    apa_target: float = APA_TARGET
    apa_kimg: float = 500.0  # APA's p can go from 0 to 1 in this many kimg (ADA's speed, as in the paper)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
