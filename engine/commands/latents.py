"""python -m engine latents list|save|delete --workdir W: the latent library the dashboard's Explore tab uses.

  list   [--network N]                                  names, kinds and networks (with N: which fit it)
  save   --network N --name X (--seed S [--trunc P] | --projected-w F)
  delete --name X
"""


def add_arguments(parser):
    parser.add_argument("action", choices=["list", "save", "delete"], help="what to do")
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
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")


def run(args):
    from engine import generate as gen
    from engine import latents
    from engine.errors import UserError

    folder = latents.library_folder(args.workdir)
    if args.action == "list":
        G = gen.load_generator(args.network, gen.resolve_device(args.device)) if args.network else None
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
    G = gen.load_generator(args.network, gen.resolve_device(args.device))
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
