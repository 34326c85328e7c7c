"""python -m engine edit --network P (--seed S | --projected-w F) --directions dirs.npz --index i --strength a:
move a latent along a direction; --gif makes the sweep over --range as an animation."""


def add_arguments(parser):
    parser.add_argument("--network", required=True, metavar="PATH", help="network file (.pt snapshot/export or .pkl)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--seed", type=int, default=None, help="start from this seed's w")
    src.add_argument("--projected-w", dest="projected_w", default=None, metavar="FILE",
                     help="start from a projected_w.npz (its first latent)")
    parser.add_argument("--trunc", type=float, default=1.0, metavar="PSI", help="truncation psi for --seed")
    parser.add_argument("--class", dest="class_idx", type=int, default=None, metavar="K",
                        help="class label for a conditional network")
    parser.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
    parser.add_argument("--directions", required=True, metavar="FILE", help="a file from python -m engine directions")
    parser.add_argument("--index", type=int, default=0, metavar="I", help="which direction (default 0, the strongest)")
    parser.add_argument("--strength", type=float, default=3.0, metavar="A",
                        help="how far, in standard deviations of w along the direction (default 3)")
    parser.add_argument("--layers", default=None, metavar="RANGE", help="edit only these w layers, e.g. 0-5")
    parser.add_argument("--outdir", default="out", metavar="DIR", help="folder for edit.png and edit.npz")
    parser.add_argument("--gif", default=None, metavar="FILE", help="also write the sweep as a .gif or .mp4")
    parser.add_argument("--range", dest="sweep", default="-5,5", metavar="FROM,TO", help="sweep strengths (-5,5)")
    parser.add_argument("--frames", type=int, default=24, metavar="N", help="sweep frames (default 24)")
    parser.add_argument("--fps", type=float, default=12, help="sweep frames per second (default 12)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")


def run(args):
    from pathlib import Path

    import numpy as np
    import torch

    from engine import directions as dirs
    from engine import generate as gen, media
    from engine.checkpoint import load_network
    from engine.commands import common
    from engine import latents
    from engine.errors import UserError

    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"--outdir {outdir} is a file, not a folder")
    targets = [outdir / "edit.png", outdir / "edit.npz"]
    if args.gif:
        if Path(args.gif).suffix.lower() not in (".gif", ".mp4"):
            raise UserError(f"--gif {args.gif}: the name must end in .gif or .mp4")
        targets.append(Path(args.gif))
    lo, hi = dirs.parse_range(args.sweep)
    if not 2 <= args.frames <= 1000:
        raise UserError(f"--frames {args.frames} is out of range: use 2..1000")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed {args.seed} must be 0 or more")
    media.check_can_write(targets, args.overwrite)
    device = common.resolve_device(args.device)
    G = load_network(args.network, device=device)["G_ema"]
    found = dirs.load(args.directions, G)
    k = len(found["directions"])
    if not 0 <= args.index < k:
        raise UserError(f"--index {args.index} is out of range: {args.directions} holds directions 0..{k - 1}")
    layers = dirs.parse_layers(args.layers, int(G.num_ws))
    if args.projected_w:
        ws = latents.load_w(args.projected_w, G)[:1]
    else:
        ws = gen.seeds_to_ws(G, [args.seed], psi=args.trunc, class_idx=args.class_idx)
    d, scale = found["directions"][args.index], float(found["scales"][args.index])
    edited = dirs.edit(ws, d, args.strength, layers, scale)
    image = gen.synthesize(G, edited, noise_mode=args.noise_mode)[0]
    media.save_image(image, outdir / "edit.png")
    latents.save_w(outdir / "edit.npz", edited, G)
    print(f"wrote {outdir / 'edit.png'} and {outdir / 'edit.npz'} (direction {args.index}, strength "
          f"{args.strength:g}, layers {args.layers or 'all'})")
    if args.gif:
        strengths = np.linspace(lo, hi, args.frames)
        sweep = torch.cat([dirs.edit(ws, d, a, layers, scale) for a in strengths])
        frames = gen.synthesize(G, sweep, noise_mode=args.noise_mode)
        path = media.write_video(frames, args.gif, fps=args.fps)
        print(f"wrote {path} ({args.frames} frames, strength {lo:g} to {hi:g})")
    return 0

