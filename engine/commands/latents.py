"""python -m engine latents list|save|delete --workdir W: the latent library the dashboard's Explore tab uses.

  list   [--network N]                                  names, kinds and networks (with N: which fit it)
  save   --network N --name X (--seed S [--trunc P] | --projected-w F)
  delete --name X
  walk   --network N --names A,B[,...] --output walk.gif|.mp4 [--frames-per-key 24] [--kind cubic|linear] [--loop]
"""


def add_arguments(parser):
    parser.add_argument("action", choices=["list", "save", "delete", "walk"], help="what to do")
    parser.add_argument("--workdir", default="./studio", metavar="DIR",
                        help="the dashboard's folder; latents live in DIR/latents (default ./studio)")
    parser.add_argument("--network", default=None, metavar="PATH", help="network file (save; list: mark fits)")
    parser.add_argument("--name", default=None, help="latent name (save, delete)")
    parser.add_argument("--seed", type=int, default=None, help="save: the w of this seed")
    parser.add_argument("--trunc", type=float, default=1.0, metavar="PSI", help="save: truncation psi for --seed")
    parser.add_argument("--class", dest="class_idx", type=int, default=None, metavar="K",
                        help="save: class of a conditional network")
    parser.add_argument("--projected-w", dest="projected_w", default=None, metavar="FILE",
                        help="save: the first latent of a projected_w.npz / edit.npz")
    parser.add_argument("--names", default=None, metavar="A,B,...", help="walk: the saved latents to pass through")
    parser.add_argument("--output", default=None, metavar="FILE", help="walk: .gif or .mp4")
    parser.add_argument("--frames-per-key", type=int, default=24, metavar="N", help="walk: frames between latents")
    parser.add_argument("--kind", default="cubic", choices=["cubic", "linear"], help="walk: interpolation in w")
    parser.add_argument("--loop", action="store_true", help="walk: return to the first latent")
    parser.add_argument("--fps", type=float, default=24, help="walk: frames per second (default 24)")
    parser.add_argument("--overwrite", action="store_true", help="walk: replace --output if it exists")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")


def run(args):
    from engine import generate as gen
    from engine.checkpoint import load_network
    from engine.commands import common
    from engine import latents
    from engine.errors import UserError

    folder = latents.library_folder(args.workdir)
    if args.action == "list":
        G = load_network(args.network, device=common.resolve_device(args.device))["G_ema"] if args.network else None
        entries = latents.list_latents(folder, G)
        if not entries:
            print(f"no saved latents in {folder}")
            return 0
        for e in entries:
            net = e.get("network") or {}
            fit = "" if G is None else ("  fits" if e.get("compatible") else "  (another network)")
            print(f"{e['name']}\t{e.get('kind', '?')}\t{net.get('img_resolution', '?')} px "
                  f"{net.get('fingerprint', '?')}\t{e.get('created', '')}{fit}")
        return 0
    if args.action == "walk":
        return _walk(args, folder)
    if not args.name:
        raise UserError(f"latents {args.action} needs --name")
    if args.action == "delete":
        latents.delete_latent(folder, args.name)
        print(f"deleted {args.name!r} from {folder}")
        return 0
    if not args.network:
        raise UserError("latents save needs --network (the network the latent belongs to)")
    if (args.seed is None) == (args.projected_w is None):
        raise UserError("latents save needs exactly one of --seed S or --projected-w FILE")
    latents.check_name(args.name)
    G = load_network(args.network, device=common.resolve_device(args.device))["G_ema"]
    if args.projected_w:
        ws = latents.load_w(args.projected_w, G)[:1]
        details = {"source_file": str(args.projected_w)}
        kind = "projection"
    else:
        ws = gen.seeds_to_ws(G, [args.seed], psi=args.trunc, class_idx=args.class_idx)
        details = {"seed": args.seed, "psi": args.trunc, "class_idx": args.class_idx}
        kind = "seed"
    e = latents.save_latent(folder, args.name, ws, G, kind, **details)
    print(f"saved {e['name']!r} ({kind}) in {folder}")
    return 0


def _walk(args, folder):
    from pathlib import Path

    from engine import generate as gen, media
    from engine.checkpoint import load_network
    from engine.commands import common
    from engine import latents
    from engine.errors import UserError

    if not args.network or not args.names or not args.output:
        raise UserError("latents walk needs --network, --names A,B and --output walk.gif")
    out = Path(args.output)
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise UserError(f"--output {out}: the name must end in .gif or .mp4")
    if args.frames_per_key < 1:
        raise UserError(f"--frames-per-key {args.frames_per_key} must be at least 1")
    media.check_can_write([out], args.overwrite)
    G = load_network(args.network, device=common.resolve_device(args.device))["G_ema"]
    keys = latents.load_many(folder, args.names.split(","), G)
    path = media.write_video(latents.walk_frames(G, keys, args.frames_per_key, args.kind, args.loop), out,
                           fps=args.fps)
    n = gen.count_frames(keys.shape[0], args.frames_per_key, args.loop)
    print(f"wrote {path} ({n} frames through {keys.shape[0]} latents)")
    return 0
