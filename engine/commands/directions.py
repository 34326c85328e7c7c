"""python -m engine directions --network P --method sefa|pca --num K --out dirs.npz: unsupervised directions in w."""


def add_arguments(parser):
    parser.add_argument("--network", required=True, metavar="PATH", help="network file (.pt snapshot/export or .pkl)")
    parser.add_argument("--method", default="sefa", choices=["sefa", "pca"],
                        help="sefa: closed-form factorisation of the style affines (default); pca: GANSpace")
    parser.add_argument("--num", type=int, default=10, metavar="K", help="how many directions (default 10)")
    parser.add_argument("--layers", default=None, metavar="RANGE",
                        help="sefa: the w layers whose affines count, e.g. 0-5 (default all)")
    parser.add_argument("--samples", type=int, default=10_000, metavar="N", help="pca: sampled w (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="pca sampling seed (default 0)")
    parser.add_argument("--class", dest="class_idx", type=int, default=None, metavar="K",
                        help="class of a conditional network (default: all classes)")
    parser.add_argument("--out", required=True, metavar="FILE", help="directions file (.npz)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args):
    import time
    from pathlib import Path

    from engine import directions as dirs
    from engine import media
    from engine.checkpoint import load_network
    from engine.commands import common
    from engine.errors import UserError

    out = Path(args.out)
    if out.suffix.lower() != ".npz":
        raise UserError(f"--out {out}: the name must end in .npz")
    media.check_can_write([out], args.overwrite)
    if args.samples < 2:
        raise UserError(f"--samples {args.samples} must be at least 2")
    if args.layers is not None and args.method == "pca":
        raise UserError("--layers chooses affines for sefa; pca directions use all of w (choose layers in edit)")
    device = common.resolve_device(args.device)
    G = load_network(args.network, device=device)["G_ema"]
    t0 = time.perf_counter()
    result = dirs.compute(G, args.method, args.num, layers=args.layers, seed=args.seed, class_idx=args.class_idx,
                          samples=args.samples)
    ms = (time.perf_counter() - t0) * 1000
    path = dirs.save(out, result, G, overwrite=args.overwrite)
    vals = ", ".join(f"{v:.3g}" for v in result["values"][:5].tolist())
    print(f"wrote {path}: {len(result['values'])} {args.method} directions in {ms:.0f} ms (top values {vals})")
    return 0
