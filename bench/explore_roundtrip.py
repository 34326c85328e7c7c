"""Latency of one Explore-tab live update through the dashboard (gradio_client -> server -> image back), demo network.

python bench/explore_roundtrip.py --updates 30
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=30)
    args = p.parse_args()
    from gradio_client import Client

    import app as studio_app
    from ui.common import Studio
    from ui.generate_tab import DEMO_LABEL

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="explore-bench-"))
    demo = studio_app.serve(Studio(work), "127.0.0.1", port)
    client = Client(demo.local_url, verbose=False, download_files=str(work / "_client"))
    args_for = lambda seed: (DEMO_LABEL, seed, 0.7, "const", None, "all", 0, 0, 0, 0, 0)
    for i in range(3):
        client.predict(*args_for(1 + i * 0.5), api_name="/explore_live")
    times, inside = [], []
    for i in range(args.updates):
        t0 = time.perf_counter()
        out = client.predict(*args_for(10 + i * 0.1), api_name="/explore_live")
        times.append((time.perf_counter() - t0) * 1000)
        inside.append(float(out[1].split()[2]))  # "updated in N ms": the handler's own time
    demo.close()
    print(json.dumps({"updates": args.updates, "median_ms": round(float(np.median(times)), 1),
                      "p90_ms": round(float(np.percentile(times, 90)), 1),
                      "handler_median_ms": round(float(np.median(inside)), 1),
                      "load_avg_1min": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
