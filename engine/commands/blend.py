"""python -m engine blend --a NET1 --b NET2 --split RES --out FILE   (low resolutions from a, high from b)
   python -m engine blend --average SNAP1 SNAP2 ... --out FILE      (the mean of several snapshots)

Both write G_ema alone in our .pt format. See engine/blend.py.
"""


def add_arguments(parser):
    parser.add_argument("--a", metavar="PATH", help="network whose low resolutions (and mapping) are kept")
    parser.add_argument("--b", metavar="PATH", help="network whose high resolutions are kept")
    parser.add_argument("--split", metavar="RES",
                        help="highest resolution taken from --a, e.g. 32: blocks 4..32 from a, 64.. from b")
    parser.add_argument("--mapping", choices=["a", "b"], default="a",
                        help="which network's mapping network (and w_avg) to keep (default a)")
    parser.add_argument("--average", nargs="+", metavar="PATH", help="average these networks instead of blending")
    parser.add_argument("--out", required=True, metavar="FILE", help="output .pt file")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")


def run(args):
    from engine import blend
    from engine.errors import UserError

    if args.average:
        extra = [f for f, v in (("--a", args.a), ("--b", args.b), ("--split", args.split)) if v is not None]
        if extra:
            raise UserError(f"--average does not combine with {', '.join(extra)}: either blend two networks "
                            "(--a --b --split) or average several (--average)")
        blend.average_files(args.average, args.out, overwrite=args.overwrite)
        return 0
    missing = [f for f, v in (("--a", args.a), ("--b", args.b), ("--split", args.split)) if v is None]
    if missing:
        raise UserError(f"blending needs {', '.join(missing)}: e.g. --a base.pt --b finetuned.pt --split 32 "
                        "(or --average SNAP1 SNAP2 ...)")
    blend.blend_files(args.a, args.b, args.split, args.out, mapping=args.mapping, overwrite=args.overwrite)
    return 0
