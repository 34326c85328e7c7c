"""Latency of one Explore-tab update (fractional seed -> w -> image, plus two direction offsets) on this machine.

Prints one JSON line: median and 90th percentile wall milliseconds, and median CPU milliseconds (what the
update costs without other processes competing), over --updates slider positions.
python bench/explore_latency.py --network assets/demo-network.pt --updates 60
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

from engine import directions as dirs  # noqa: E402
from engine import explore  # noqa: E402
from engine.checkpoint import load_network  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", default="assets/demo-network.pt")
    p.add_argument("--updates", type=int, default=60)
    p.add_argument("--threads", type=int, default=2,
                   help="the process's torch threads (explore.render itself uses one thread for small images)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    G = load_network(args.network)["G_ema"]
    found = dirs.compute(G, "sefa", 2)
    for _ in range(3):  # warm-up
        explore.render(G, explore.seed_ws(G, 1.5))
    times, cpu = [], []
    for i in range(args.updates):
        t0, c0 = time.perf_counter(), time.process_time()
        ws = explore.seed_ws(G, 10 + i * 0.1, psi=0.8)
        ws = explore.combine(ws, found["directions"], [1.0, -0.5], None, found["scales"])
        explore.render(G, ws)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    print(json.dumps({"network": args.network, "resolution": int(G.img_resolution), "updates": args.updates,
                      "median_ms": round(float(np.median(times)), 1),
                      "p90_ms": round(float(np.percentile(times, 90)), 1),
                      "median_cpu_ms": round(float(np.median(cpu)), 1), "load_avg_1min": round(os.getloadavg()[0], 1),
                      "threads": args.threads,
                      "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
