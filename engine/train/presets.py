"""Training presets (--cfg) and the rules that turn options + dataset facts into a TrainConfig.

NVIDIA's presets keep their numbers (stylegan2-ada-pytorch's train.py): batch (mb), minibatch-std group (mbstd),
feature-map multiplier (fmaps: channel_base = fmaps * 32768), learning rate, R1 gamma, G_ema half-life (ema, kimg),
EMA ramp-up and mapping depth. `auto` derives them from the resolution and GPU count. The CPU presets are small
networks that train in minutes (`tiny`) or an hour or so (`small`) on a few cores.
"""

from dataclasses import dataclass

from engine.errors import UserError
from engine.train.options import (ADA_TARGET, APA_TARGET, AUG_MODES, AUGPIPES, DEFAULT_AUGPIPE, PRECISIONS,
                                  TrainConfig, TrainOptions, check_numbers)


@dataclass(frozen=True)
class Preset:
    ref_gpus: int
    kimg: float
    mb: int  # -1: derived (auto)
    mbstd: int
    fmaps: float
    lrate: float
    gamma: float
    ema: float
    ramp: float | None
    map: int
    cbase: int | None = None  # overrides fmaps * 32768
    cmax: int = 512
    z_dim: int = 512
    w_dim: int = 512
    tick: float = 4
    snap: int = 50
    D_arch: str = "resnet"
    pl_weight: float = 2
    style_mixing: float = 0.9
    lecam: float = 0  # LeCam regularisation weight (0: off)
    apa: bool = False  # adaptive pseudo augmentation
    description: str = ""


PRESETS = {
    "auto": Preset(-1, 25000, -1, -1, -1, -1, -1, -1, 0.05, 2,
                   description="NVIDIA's formulas from the resolution and GPU count"),
    "stylegan2": Preset(8, 25000, 32, 4, 1, 0.002, 10, 10, None, 8, description="StyleGAN2 config F"),
    "paper256": Preset(8, 25000, 64, 8, 0.5, 0.0025, 1, 20, None, 8, description="ADA paper, 256 px"),
    "paper512": Preset(8, 25000, 64, 8, 1, 0.0025, 0.5, 20, None, 8, description="ADA paper, 512 px"),
    "paper1024": Preset(8, 25000, 32, 4, 2, 0.002, 2, 10, None, 8, description="ADA paper, 1024 px"),
    "cifar": Preset(2, 100000, 64, 32, 1, 0.0025, 0.01, 500, 0.05, 2, D_arch="orig", pl_weight=0,
                    style_mixing=0, description="ADA paper, CIFAR-10"),
    # tiny: no path-length regularisation (as NVIDIA's 32 px cifar preset): on emoji at 32 px it made KID worse at
    # 4 and 6 kimg (two seeds each) and cost 10-15 % more CPU per kimg (docs/BENCHMARKS.md, Convergence).
    # 20 kimg by default: the first measured point well below the untrained start on emoji (KID 0.243 -> 0.105,
    # 40 kimg 0.078, then slowly to 0.056 at 218 kimg), about 10 CPU-minutes at 32 px.
    "tiny": Preset(1, 20, 8, 4, -1, 0.0025, -1, -1, 0.05, 2, cbase=2048, cmax=64, z_dim=64, w_dim=64,
                   tick=0.25, snap=4, pl_weight=0, description="CPU, 16-32 px, 10-20 minutes"),
    "small": Preset(1, 100, 16, 4, -1, 0.0025, -1, -1, 0.05, 2, cbase=8192, cmax=256, z_dim=256, w_dim=256,
                    tick=1, snap=10, description="CPU, 32-64 px, an hour or more"),
}

CPU_PRESET_RES = {"tiny": (8, 32), "small": (16, 64)}


def preset_names():
    return list(PRESETS)


def _given(value, kind=float):
    """A given number as `kind` (None when not given: the preset's value is used)."""
    return None if value is None else kind(value)


def resolve(options: TrainOptions, dataset: dict, num_gpus: int, device: str, run_dir: str = "") -> TrainConfig:
    """Options + dataset facts ({'resolution', 'channels', 'label_dim', 'name', 'path', 'size'}) -> TrainConfig."""
    check_numbers(options)
    if options.cfg not in PRESETS:
        raise UserError(f"--cfg {options.cfg!r} is not a preset; choose one of {', '.join(PRESETS)}")
    spec = PRESETS[options.cfg]
    res = int(dataset["resolution"])
    gpus = int(num_gpus)
    if gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {gpus}")

    batch = _given(options.batch, int)
    if options.cfg == "auto":
        mb = batch or max(min(gpus * min(4096 // res, 32), 64), gpus)
        mbstd = min(mb // gpus, 4)
        fmaps = 1 if res >= 512 else 0.5
        lrate = 0.002 if res >= 1024 else 0.0025
        gamma = 0.0002 * (res ** 2) / mb
        ema = mb * 10 / 32
    else:
        mb = batch or spec.mb
        mbstd = spec.mbstd
        fmaps = spec.fmaps if spec.fmaps > 0 else 0.5
        lrate = spec.lrate
        gamma = spec.gamma if spec.gamma >= 0 else 0.0002 * (res ** 2) / mb
        ema = spec.ema if spec.ema >= 0 else mb * 10 / 32
    # (every number's range is checked once, by options.check_numbers, before a preset is resolved)
    if options.gamma is not None:
        gamma = float(options.gamma)
    if options.ema is not None:
        ema = float(options.ema)

    if mb % gpus != 0:
        raise UserError(f"--batch {mb} must be a multiple of --gpus {gpus}")
    batch_gpu = _given(options.batch_gpu, int) or mb // gpus
    if mb % (batch_gpu * gpus) != 0:
        raise UserError(f"--batch {mb} must be a multiple of --batch-gpu {batch_gpu} x --gpus {gpus}")
    if options.mbstd_group is not None:
        mbstd = int(options.mbstd_group)
    mbstd = max(1, min(mbstd, batch_gpu))
    while batch_gpu % mbstd != 0:  # groups must tile the per-GPU batch
        mbstd -= 1

    cbase = _given(options.cbase, int) or spec.cbase or int(fmaps * 32768)
    cmax = _given(options.cmax, int) or spec.cmax
    mapping_layers = _given(options.map, int) or spec.map
    glr = _given(options.glr) or lrate
    dlr = _given(options.dlr) or lrate

    if options.precision not in PRECISIONS:
        raise UserError(f"--precision {options.precision!r}: choose auto, fp32, fp16 or bf16")
    precision = options.precision
    if precision == "auto":
        precision = "fp16" if device == "cuda" else "fp32"
    if device != "cuda" and precision != "fp32":
        raise UserError(f"--precision {precision} needs a CUDA GPU; on the CPU training runs in fp32")
    fp16 = precision == "fp16"

    label_dim = int(dataset.get("label_dim", 0)) if options.cond else 0
    if options.cond and label_dim == 0:
        raise UserError(f"--cond needs a dataset with labels, but {dataset.get('path')!r} has none (dataset.json)")

    channels = int(dataset["channels"])
    use_noise = True if options.use_noise is None else bool(options.use_noise)
    G_kwargs = dict(z_dim=options.z_dim or spec.z_dim, c_dim=label_dim, w_dim=options.w_dim or spec.w_dim,
                    img_resolution=res, img_channels=channels,
                    mapping_kwargs=dict(num_layers=mapping_layers),
                    channel_base=cbase, channel_max=cmax, num_fp16_res=4 if fp16 else 0,
                    conv_clamp=256 if fp16 else None, architecture="skip", use_noise=use_noise)
    D_kwargs = dict(c_dim=label_dim, img_resolution=res, img_channels=channels, architecture=spec.D_arch,
                    channel_base=cbase, channel_max=cmax, num_fp16_res=4 if fp16 else 0,
                    conv_clamp=256 if fp16 else None,
                    block_kwargs=dict(freeze_layers=int(options.freezed or 0)), mapping_kwargs={},
                    epilogue_kwargs=dict(mbstd_group_size=mbstd))

    if options.aug not in AUG_MODES:
        raise UserError(f"--aug {options.aug!r}: choose ada, noaug or fixed")
    augpipe = options.augpipe or DEFAULT_AUGPIPE
    if augpipe not in AUGPIPES:
        raise UserError(f"--augpipe {augpipe!r} is not a known pipeline; choose one of {', '.join(AUGPIPES)}")
    aug_p = 0.0 if options.p is None else float(options.p)
    if options.aug == "fixed" and options.p is None:
        raise UserError("--aug fixed needs --p (the fixed augmentation probability)")
    target = ADA_TARGET if options.target is None else float(options.target)

    kimg = _given(options.kimg) or spec.kimg
    tick = _given(options.tick) or spec.tick
    snap = _given(options.snap, int) or spec.snap
    pl_weight = spec.pl_weight if options.pl_weight is None else float(options.pl_weight)
    style_mixing = spec.style_mixing if options.style_mixing is None else float(options.style_mixing)
    workers = options.workers if options.workers is not None else (3 if device == "cuda" else 0)
    lecam = spec.lecam if options.lecam is None else float(options.lecam)
    apa = spec.apa if options.apa is None else bool(options.apa)
    apa_target = APA_TARGET if options.apa_target is None else float(options.apa_target)

    metrics = [m for m in (options.metrics or []) if m and m != "none"]
    return TrainConfig(
        data=str(dataset.get("path", options.data)), run_dir=run_dir, cfg=options.cfg, num_gpus=gpus,
        batch_size=mb, batch_gpu=batch_gpu, total_kimg=float(kimg), kimg_per_tick=float(tick), snap=snap,
        image_snap=snap, G_kwargs=G_kwargs, D_kwargs=D_kwargs, G_lr=float(glr), D_lr=float(dlr), betas=[0.0, 0.99],
        G_reg_interval=4 if pl_weight > 0 else None, D_reg_interval=16 if gamma > 0 else None,
        r1_gamma=float(gamma), pl_weight=pl_weight, pl_batch_shrink=2, pl_decay=0.01, style_mixing=style_mixing,
        ema_kimg=float(ema), ema_rampup=spec.ramp, mirror=bool(options.mirror), cond=bool(options.cond),
        subset=options.subset, seed=int(options.seed), workers=int(workers), aug=options.aug, augpipe=augpipe,
        aug_p=aug_p, ada_target=target, ada_interval=4, ada_kimg=500.0, metrics=metrics, precision=precision,
        allow_tf32=bool(options.allow_tf32), cudnn_benchmark=not options.nobench, device=device,
        resume=options.resume, resume_mode=None, freezed=int(options.freezed or 0), progress=options.progress,
        max_steps=options.max_steps, dataset=dict(dataset), lecam_weight=float(lecam), apa=apa,
        apa_target=apa_target, apa_kimg=500.0)


def describe(cfg: TrainConfig) -> str:
    """The run folder suffix after the number: <dataset>-<cfg>-gpus<N>-batch<B>-gamma<G>."""
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(cfg.dataset.get("name", "data")))
    desc = f"{name}-{cfg.cfg}-gpus{cfg.num_gpus}-batch{cfg.batch_size}-gamma{cfg.r1_gamma:g}"
    if cfg.mirror:
        desc += "-mirror"
    if cfg.cond:
        desc += "-cond"
    if cfg.aug != "ada":
        desc += f"-{cfg.aug}"
    if cfg.lecam_weight > 0:
        desc += f"-lecam{cfg.lecam_weight:g}"
    if cfg.apa:
        desc += "-apa"
    if cfg.resume_mode == "transfer":
        desc += "-resume"
    return desc
