"""python -m engine mix --network P --rows 85,100 --cols 55,821 --styles 0-6 --outdir D: style mixing.

NVIDIA's figure: column seeds along the top, row seeds down the left, and in each cell the row seed with the
listed w layers ("styles") taken from the column seed. Writes grid.png and one ROW-COL.png per cell.
"""

from engine.commands.generate import add_common_network_arguments


def add_arguments(parser):
    add_common_network_arguments(parser)
    parser.add_argument("--rows", required=True, metavar="LIST", help="row seeds (the base images), e.g. 85,100")
    parser.add_argument("--cols", required=True, metavar="LIST", help="column seeds (the style donors), e.g. 55,821")
    parser.add_argument("--styles", default="0-6", metavar="LIST",
                        help="w layers taken from the column seed (default 0-6, the coarse styles)")
    parser.add_argument("--outdir", required=True, metavar="DIR", help="folder for grid.png and ROW-COL.png")


def run(args):
    from pathlib import Path

    from engine import generate as gen, media
    from engine.checkpoint import load_network
    from engine.commands import common
    from engine.commands.generate import warn_unused_class
    from engine.errors import UserError

    rows = common.parse_seeds(args.rows, what="row seeds")
    cols = common.parse_seeds(args.cols, what="column seeds")
    styles = common.parse_seeds(args.styles, what="styles", max_value=10_000)
    if len(rows) * len(cols) > 2500:
        raise UserError(f"{len(rows)} x {len(cols)} cells is too large a grid (at most 2500 cells)")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"--outdir {outdir} is a file, not a folder")
    targets = [outdir / "grid.png"] + [outdir / f"{r}-{c}.png" for r in rows for c in cols]
    media.check_can_write(targets, args.overwrite)
    device = common.resolve_device(args.device)
    G = load_network(args.network, device=device)["G_ema"]
    warn_unused_class(G, args.class_idx)
    bad = [s for s in styles if s >= G.num_ws]
    if bad:
        raise UserError(f"--styles {args.styles}: layer {bad[0]} is out of range, this network has w layers "
                        f"0..{G.num_ws - 1}")
    grid, cells = gen.style_mix_grid(G, rows, cols, styles, psi=args.trunc, cutoff=args.trunc_cutoff,
                                     class_idx=args.class_idx, noise_mode=args.noise_mode, batch=args.batch)
    for (r, c), img in cells.items():
        media.save_image(img, outdir / f"{r}-{c}.png")
    path = media.save_image(grid, outdir / "grid.png")
    print(f"wrote {path} and {len(cells)} cell images")
    return 0
