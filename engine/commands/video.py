"""python -m engine video --network P --seeds 1,2,3,4 --output out.gif|out.mp4: an interpolation video.

Slerp in z, linear or cubic spline in w; --loop returns to the first seed; --grid COLSxROWS shows several
interpolations side by side (the seeds are dealt to the cells in order).
"""

from engine.commands.generate import add_common_network_arguments


def add_arguments(parser):
    add_common_network_arguments(parser)
    parser.add_argument("--seeds", required=True, metavar="LIST", help="keyframe seeds, e.g. 1,2,3,4")
    parser.add_argument("--output", required=True, metavar="FILE", help="video file: .gif or .mp4")
    parser.add_argument("--frames-per-seed", type=int, default=30, metavar="N",
                        help="frames from one seed to the next (default 30)")
    parser.add_argument("--fps", type=float, default=30, help="frames per second (default 30)")
    parser.add_argument("--space", default="w", choices=["w", "z"], help="interpolate in w (default) or z")
    parser.add_argument("--kind", default=None, choices=["linear", "slerp", "cubic"],
                        help="interpolation: cubic (default in w), linear, or slerp (default in z)")
    parser.add_argument("--loop", action="store_true", help="return to the first seed for a seamless loop")
    parser.add_argument("--grid", default="1x1", metavar="COLSxROWS", help="several interpolations at once")


def run(args):
    from pathlib import Path

    from engine import generate as gen, media
    from engine.checkpoint import load_network
    from engine.commands import common
    from engine.commands.generate import warn_unused_class
    from engine.errors import UserError

    output = Path(args.output)
    if output.suffix.lower() not in (".gif", ".mp4"):
        raise UserError(f"--output {output}: the name must end in .gif or .mp4")
    seeds = common.parse_seeds(args.seeds)
    grid = common.parse_grid(args.grid)
    kind = gen.check_interpolation(args.space, args.kind)
    if args.frames_per_seed < 1:
        raise UserError(f"--frames-per-seed {args.frames_per_seed} must be at least 1")
    if args.batch < 1:
        raise UserError(f"--batch {args.batch} must be at least 1")
    cells = grid[0] * grid[1]
    if len(seeds) % cells:
        raise UserError(f"{len(seeds)} seeds cannot be split evenly over grid {args.grid}: give a multiple of {cells}")
    keys = len(seeds) // cells
    if keys < 2 and not args.loop:
        raise UserError(f"--seeds {args.seeds}: an interpolation needs at least 2 seeds per grid cell (or --loop)")
    if output.exists() and not args.overwrite:
        raise UserError(f"{output} already exists: choose another --output or add --overwrite to replace it")
    media.check_can_write([output], overwrite=True)
    device = common.resolve_device(args.device)
    G = load_network(args.network, device=device)["G_ema"]
    warn_unused_class(G, args.class_idx)
    frames = gen.interpolation_frames(G, seeds, frames_per_seed=args.frames_per_seed, space=args.space, kind=kind,
                                      loop=args.loop, psi=args.trunc, cutoff=args.trunc_cutoff,
                                      class_idx=args.class_idx, noise_mode=args.noise_mode, grid=grid,
                                      batch=args.batch)
    path = media.write_video(frames, output, fps=args.fps)
    n = gen.count_frames(keys, args.frames_per_seed, args.loop)
    print(f"wrote {path} ({n} frames, {args.space} space, {kind})")
    return 0
