"""python -m engine train --data D --outdir O [--cfg auto] [--gpus N] ...  (NVIDIA's flags where they have one)

Several GPUs of one machine: --gpus N. Several machines: torchrun --nnodes ... --nproc_per_node ... -m engine
train ... (the rank comes from torchrun's environment; --gpus is then ignored).
"""

import argparse



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


_TYPES = {"int": int, "float": float, "bool": _bool, "str": str, "metrics": _metric_list}


def add_arguments(p):
    """The flags of engine/train/options.py's OPTIONS, in its groups, plus --fp32 and --dry-run."""
    from engine.train.options import OPTIONS, RETUNABLE, flag
    from engine.train.presets import preset_names

    words = {"presets": ", ".join(preset_names()), "retunable": ", ".join(flag(n) for n in RETUNABLE)}
    groups = {}
    for o in OPTIONS:
        if not o.cli:
            continue
        if o.group not in groups:
            groups[o.group] = p.add_argument_group(o.group)
        kw = dict(help=o.help.format(**words), metavar=o.metavar)
        if o.kind == "choice" and not o.metavar:  # (a choice with a metavar is checked with a fuller message)
            kw.update(choices=list(o.choices) + (["auto"] if o.name == "device" else []), metavar=None)
            kw["default"] = "auto" if o.name == "device" else o.default
        else:
            kw.update(type=_TYPES.get(o.kind, str),
                      default=list(o.default) if isinstance(o.default, tuple) else o.default)
        if o.optional_value:
            kw.update(nargs="?", const=True)
        if o.group == "required":
            kw["required"] = True
        groups[o.group].add_argument(o.flag, **kw)
        if o.name == "max_steps":
            groups[o.group].add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
        if o.name == "allow_tf32":
            groups[o.group].add_argument("--fp32", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                                         help="disable mixed precision (same as --precision fp32)")


def options_from_args(args):
    from engine.train.options import OPTIONS, TrainOptions

    values = {o.name: getattr(args, o.name) for o in OPTIONS if o.cli}
    if args.fp32:
        values["precision"] = "fp32"
    if values.get("device") == "auto":
        values["device"] = None
    return TrainOptions(**values)


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
