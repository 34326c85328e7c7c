"""python -m engine train --data D --outdir O [--cfg auto] [--gpus N] ...  (NVIDIA's flags where they have one)

Several GPUs of one machine: --gpus N. Several machines: torchrun --nnodes ... --nproc_per_node ... -m engine
train ... (the rank comes from torchrun's environment; --gpus is then ignored).
"""

import argparse

from engine.train.options import AUG_MODES, AUGPIPES, DEFAULT_AUGPIPE, PRECISIONS


def _bool(text):
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on", "y"):
        return True
    if t in ("0", "false", "no", "off", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1 (or true/false), got {text!r}")


def _metric_list(text):
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if items in ([], ["auto"]):
        return []  # the default: quality tracking where it is cheap (engine/train/setup.py default_metrics)
    return ["none"] if items == ["none"] else items


def add_arguments(p):
    from engine.train.presets import preset_names

    from_presets = ", ".join(preset_names())
    g = p.add_argument_group("required")
    g.add_argument("--data", required=True, metavar="PATH", help="prepared dataset (zip or folder)")
    g.add_argument("--outdir", required=True, metavar="DIR", help="where run folders are made")

    g = p.add_argument_group("base configuration")
    g.add_argument("--cfg", default="auto", metavar="NAME", help=f"preset: {from_presets} (default auto)")
    g.add_argument("--gpus", type=int, default=1, metavar="N", help="processes (GPUs) on this machine (default 1)")
    g.add_argument("--kimg", type=float, metavar="KIMG", help="total length of training in thousands of images")
    g.add_argument("--batch", type=int, metavar="N", help="total minibatch over all GPUs")
    g.add_argument("--batch-gpu", type=int, metavar="N", help="samples per GPU per pass (gradient accumulation)")
    g.add_argument("--gamma", type=float, metavar="G", help="R1 regularisation weight")
    g.add_argument("--glr", type=float, metavar="LR", help="generator learning rate")
    g.add_argument("--dlr", type=float, metavar="LR", help="discriminator learning rate")
    g.add_argument("--map", type=int, metavar="N", help="mapping network depth")
    g.add_argument("--cbase", type=int, metavar="N", help="channel base (capacity)")
    g.add_argument("--cmax", type=int, metavar="N", help="maximum channels per layer")
    g.add_argument("--mbstd-group", type=int, metavar="N", help="minibatch-std group size")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    g = p.add_argument_group("dataset")
    g.add_argument("--cond", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="train conditionally on the dataset's labels")
    g.add_argument("--subset", type=int, metavar="N", help="train on N images of the dataset")
    g.add_argument("--mirror", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="add x-flipped copies of the images")
    g.add_argument("--workers", type=int, metavar="N", help="data loader processes (default 3 on CUDA, 0 on CPU)")

    g = p.add_argument_group("augmentation")
    g.add_argument("--aug", default="ada", choices=list(AUG_MODES), help="augmentation mode (default ada)")
    g.add_argument("--p", type=float, metavar="P", help="augmentation probability (--aug fixed; start value for ada)")
    g.add_argument("--target", type=float, metavar="T", help="ADA target for E[sign(D(real))] (default 0.6)")
    g.add_argument("--augpipe", metavar="PIPE",
                   help=", ".join(f"{name} (default)" if name == DEFAULT_AUGPIPE else name for name in AUGPIPES))

    g = p.add_argument_group("transfer learning and resume")
    g.add_argument("--resume", metavar="PATH|latest",
                   help="snapshot of a run to continue, 'latest', a run folder (its newest snapshot), or a network "
                        "(.pkl/.pt) to start from; a "
                        "continued run may change --glr, --dlr, --gamma, --ema, --target and --style-mixing")
    g.add_argument("--freezed", type=int, default=0, metavar="N", help="freeze the first N layers of D")

    g = p.add_argument_group("progress and output")
    g.add_argument("--snap", type=int, metavar="TICKS", help="snapshot and image grid every TICKS ticks")
    g.add_argument("--tick", type=float, metavar="KIMG", help="kimg per tick (fractions allowed, e.g. 0.05)")
    g.add_argument("--metrics", type=_metric_list, default=[], metavar="LIST",
                   help="metrics at each snapshot, e.g. fid50k_full,kid1k, or none; default (auto): kid1k on a GPU "
                        "when an Inception detector is installed and the dataset has 100+ images, none on the CPU")
    g.add_argument("--desc", metavar="TEXT", help="run folder name suffix instead of the generated one")
    g.add_argument("--progress", type=_bool, nargs="?", const=True, default=None, metavar="BOOL",
                   help="progress bar on the console (default: when it is a terminal)")
    g.add_argument("--max-steps", type=int, metavar="N",
                   help="stop (with a snapshot, resumable) after N steps of this session")
    g.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")

    g = p.add_argument_group("advanced")
    g.add_argument("--style-mixing", type=float, metavar="P", help="style mixing probability (preset: 0.9)")
    g.add_argument("--pl-weight", type=float, metavar="W", help="path length regularisation weight (preset: 2)")
    g.add_argument("--use-noise", type=_bool, metavar="BOOL", help="noise inputs in G (default 1)")
    g.add_argument("--ema", type=float, metavar="KIMG",
                   help="half-life of the generator's moving average in kimg (preset: batch * 10 / 32)")

    g = p.add_argument_group("performance")
    g.add_argument("--fp32", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="disable mixed precision (same as --precision fp32)")
    g.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="auto: fp16 in the top 4 resolutions on CUDA, fp32 on the CPU")
    g.add_argument("--allow-tf32", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="allow TF32 matrix maths on Ampere and newer GPUs")
    g.add_argument("--nobench", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="disable cuDNN benchmarking")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")


def options_from_args(args):
    from engine.train.options import TrainOptions

    return TrainOptions(
        data=args.data, outdir=args.outdir, cfg=args.cfg, gpus=args.gpus, batch=args.batch,
        batch_gpu=args.batch_gpu, kimg=args.kimg, snap=args.snap, tick=args.tick, gamma=args.gamma,
        glr=args.glr, dlr=args.dlr, map=args.map, cbase=args.cbase, cmax=args.cmax, mbstd_group=args.mbstd_group,
        mirror=args.mirror, cond=args.cond, subset=args.subset, seed=args.seed, workers=args.workers,
        aug=args.aug, p=args.p, target=args.target, augpipe=args.augpipe, resume=args.resume,
        freezed=args.freezed, metrics=args.metrics, precision="fp32" if args.fp32 else args.precision,
        allow_tf32=args.allow_tf32, nobench=args.nobench, desc=args.desc,
        device=None if args.device == "auto" else args.device, progress=args.progress, max_steps=args.max_steps,
        style_mixing=args.style_mixing, pl_weight=args.pl_weight, use_noise=args.use_noise,
        ema=args.ema)


def run(args):
    import json

    from engine.train.launch import train

    options = options_from_args(args)
    if args.dry_run:
        from engine.train.distributed import env_world_size
        from engine.train.setup import prepare_run

        world = env_world_size() if env_world_size() > 1 else options.gpus
        cfg = prepare_run(options, world, create_dir=False)
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    return train(options)
