"""Does projection recover images the network made itself? Projects seeds' images of a network and reports, per
image and on average: PSNR of the projection (with its optimised noise maps) and of the projected w alone (the
network's own noise, as generate --projected-w renders it), the loss's own distance, and the distance in w to the
true latent relative to the spread of w. Prints one JSON line per image and a summary line.

nice -n 10 python bench/project_recovery.py --network assets/demo-network.pt --seeds 1,2,3 --steps 300 --loss auto
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine import generate as gen  # noqa: E402
from engine.checkpoint import load_network  # noqa: E402
from engine.commands import common  # noqa: E402
from engine import project as proj  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", default="assets/demo-network.pt")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--space", default="w", choices=["w", "w+"])
    p.add_argument("--loss", default="auto")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    nets = load_network(args.network)
    G = nets["G_ema"]
    loss = proj.make_loss(args.loss, G, D=nets.get("D"))
    _, w_std = proj.w_statistics(G)
    start = gen.synthesize(G, proj.w_statistics(G)[0].repeat(1, G.num_ws, 1))[0]
    rows = []
    for seed in common.parse_seeds(args.seeds):
        ws_true = gen.seeds_to_ws(G, [seed])
        target = gen.synthesize(G, ws_true)[0]
        t0 = time.perf_counter()
        run = proj.project(G, target, steps=args.steps, space=args.space, loss=loss, seed=303)
        last = None
        for last in run:
            pass
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            t_img = proj.image_to_tensor(target, "cpu")
            p_img = proj.image_to_tensor(gen.synthesize(run.G, last.ws)[0], "cpu")
            s_img = proj.image_to_tensor(start, "cpu")
            dist = float(loss(p_img, t_img).sum())
            dist_start = float(loss(s_img, t_img).sum())
        row = {
            "seed": seed, "steps": args.steps, "space": args.space, "loss": loss.name,
            "psnr_start_db": round(proj.psnr(start, target), 2),
            "psnr_proj_db": round(proj.psnr(gen.synthesize(run.G, last.ws)[0], target), 2),
            "psnr_w_only_db": round(proj.psnr(gen.synthesize(G, last.ws)[0], target), 2),
            "distance_start": round(dist_start, 4), "distance_proj": round(dist, 4),
            "w_error_rel": round(float((last.ws[0, 0] - ws_true[0, 0]).norm()) / w_std, 3),
            "seconds": round(seconds, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    mean = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0] if k.startswith(("psnr", "distance", "w_err", "sec"))}
    print(json.dumps({"summary": mean, "images": len(rows), "network": args.network, "cpu": platform.processor() or
                      platform.machine(), "threads": args.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
