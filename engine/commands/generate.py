"""python -m engine generate --network P --seeds 0,3,5-8 --outdir D [--grid COLSxROWS]: one PNG per seed.

File names and the seed -> z rule are NVIDIA's (seedNNNN.png, np.random.RandomState(seed).randn(1, z_dim)).
"""


def add_common_network_arguments(parser):
    parser.add_argument("--network", required=True, metavar="PATH",
                        help="network: our .pt snapshot/export or NVIDIA's .pkl (PyTorch or TensorFlow era)")
    parser.add_argument("--trunc", type=float, default=1.0, metavar="PSI", help="truncation psi (default 1)")
    parser.add_argument("--trunc-cutoff", type=int, default=None, metavar="N",
                        help="truncate only the first N w layers (default all)")
    parser.add_argument("--class", dest="class_idx", type=int, default=None, metavar="K",
                        help="class label for a conditional network")
    parser.add_argument("--noise-mode", default="const", choices=["const", "random", "none"],
                        help="per-pixel noise: const (default), random or none")
    parser.add_argument("--batch", type=int, default=8, metavar="N", help="images per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")


def warn_unused_class(G, class_idx):
    """NVIDIA's scripts take --class on any network; on an unconditional one it has no effect: say so."""
    if class_idx is not None and int(G.c_dim) == 0:
        import sys

        print(f"warning: --class {class_idx} ignored: this network is unconditional", file=sys.stderr)


def add_arguments(parser):
    add_common_network_arguments(parser)
    parser.add_argument("--seeds", default=None, metavar="LIST", help="seeds, e.g. 0,3,5-8")
    parser.add_argument("--projected-w", dest="projected_w", default=None, metavar="FILE",
                        help="instead of seeds: render the latents of a projected_w.npz as projNN.png")
    parser.add_argument("--outdir", required=True, metavar="DIR", help="folder for seedNNNN.png (created)")
    parser.add_argument("--grid", default=None, metavar="COLSxROWS", help="also write grid.png with this layout")


def run(args):
    from pathlib import Path

    from engine import generate as gen, media
    from engine.checkpoint import load_network
    from engine.commands import common
    from engine.errors import UserError

    if args.projected_w is not None:
        return _run_projected(args)
    if args.seeds is None:
        raise UserError("give --seeds (e.g. 0,3,5-8) or --projected-w FILE")
    seeds = common.parse_seeds(args.seeds)
    grid = common.parse_grid(args.grid) if args.grid else None
    if grid and len(seeds) > grid[0] * grid[1]:
        raise UserError(f"{len(seeds)} seeds do not fit grid {args.grid} ({grid[0] * grid[1]} cells): "
                        "use a larger grid or fewer seeds")
    if args.batch < 1:
        raise UserError(f"--batch {args.batch} must be at least 1")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"--outdir {outdir} is a file, not a folder")
    targets = [outdir / f"seed{s:04d}.png" for s in seeds] + ([outdir / "grid.png"] if grid else [])
    media.check_can_write(targets, args.overwrite)
    device = common.resolve_device(args.device)
    G = load_network(args.network, device=device)["G_ema"]
    warn_unused_class(G, args.class_idx)
    images = gen.generate_images(G, seeds, psi=args.trunc, cutoff=args.trunc_cutoff, class_idx=args.class_idx,
                                 noise_mode=args.noise_mode, batch=args.batch)
    for seed, img in zip(seeds, images):
        media.save_image(img, outdir / f"seed{seed:04d}.png")
    print(f"wrote {len(images)} image{'s' if len(images) != 1 else ''} to {outdir}")
    if grid:
        path = media.save_image(media.make_grid(images, *grid), outdir / "grid.png")
        print(f"wrote {path}")
    return 0


def _run_projected(args):
    """NVIDIA's --projected-w: one projNN.png per latent in the file (seeds and truncation do not apply)."""
    from pathlib import Path

    from engine import generate as gen, media
    from engine.checkpoint import load_network
    from engine.commands import common
    from engine.latents import load_w
    from engine.errors import UserError

    if args.seeds is not None:
        raise UserError("--seeds and --projected-w exclude each other: give one of them")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"--outdir {outdir} is a file, not a folder")
    device = common.resolve_device(args.device)
    G = load_network(args.network, device=device)["G_ema"]
    ws = load_w(args.projected_w, G)
    targets = [outdir / f"proj{i:02d}.png" for i in range(ws.shape[0])]
    media.check_can_write(targets, args.overwrite)
    images = gen.synthesize(G, ws, noise_mode=args.noise_mode, batch=max(args.batch, 1))
    for img, path in zip(images, targets):
        media.save_image(img, path)
    print(f"wrote {len(images)} image{'s' if len(images) != 1 else ''} from {args.projected_w} to {outdir}")
    return 0
