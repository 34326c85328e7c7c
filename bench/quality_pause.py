"""The pause that quality tracking adds at a snapshot: one KID measurement of a generator against a dataset.

    python bench/quality_pause.py --network assets/demo-network.pt --data DATASET --metrics kid100 --device cpu

Runs the measurement twice with a fresh cache folder: the first includes reading the real images through the
detector (once per run, then cached), the second is the pause every later snapshot pays. Without --data a
dataset of generated blob images at the network's resolution is written to a temporary folder.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def blob_dataset(root, n, res):
    import numpy as np
    from PIL import Image

    root = Path(root)
    (root / "00000").mkdir(parents=True)
    rs = np.random.RandomState(0)
    y, x = np.mgrid[0:res, 0:res]
    for i in range(n):
        cx, cy = rs.uniform(res * 0.25, res * 0.75, 2)
        mask = ((x - cx) ** 2 + (y - cy) ** 2 < (res / 4) ** 2)[..., None]
        Image.fromarray(np.where(mask, rs.randint(0, 255, 3), 40).astype(np.uint8)).save(
            root / f"00000/img{i:08d}.png")
    (root / "dataset.json").write_text(json.dumps({"labels": None}))
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default="assets/demo-network.pt")
    ap.add_argument("--data", default=None)
    ap.add_argument("--metrics", default="kid100")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    from engine import load_network
    from engine.metrics import compute_many, parse_metric_list

    if args.threads:
        torch.set_num_threads(args.threads)
    names = parse_metric_list(args.metrics)
    G = load_network(args.network, device=args.device)["G_ema"]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(blob_dataset(Path(tmp) / "data", 1000, G.img_resolution))
        for label in ("first snapshot (reals read)", "later snapshots (reals cached)"):
            t0 = time.time()
            results = compute_many(names, G, data, args.device, cache_dir=Path(tmp) / "cache")
            dt = time.time() - t0
            vals = ", ".join(f"{r['metric']}={next(iter(r['results'].values())):.4f}" for r in results)
            print(f"{label}: {dt:.1f} s ({vals}; detector {results[0]['detector']}, "
                  f"{results[0]['num_gen']} generated, {results[0]['num_real']} real)", flush=True)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
