"""Many visitors on one demo page: N viewers (each its own gradio_client session, so its own visitor) ask for grids
at the same moment while the owner asks for one too; prints the latency percentiles, whether every viewer got all
of its grids, and the owner's wait.

    python bench/viewers.py [--viewers 20] [--grids 3] [--seeds 8] [--json]

The server runs in this process (demo page at /, dashboard at /studio/) on a temporary workdir with the built-in
demo network (32 px), public viewers and the default visitor limits.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q):
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def run(viewers=20, grids=3, seeds=8, owner=True):
    import app as studio_app
    from gradio_client import Client
    from ui import roles
    from ui.common import Studio

    work = Path(tempfile.mkdtemp(prefix="studio-viewers-bench-"))
    owner_login = ("owner", "bench")
    access = roles.Access(owner=owner_login, public=True)
    server = studio_app.serve(Studio(work / "studio"), "127.0.0.1", _free_port(), owner_login, access=access)
    try:
        clients = [Client(server.local_url, verbose=False, download_files=False) for _ in range(viewers)]
        # The owner works on the dashboard (the demo page is public: no login there).
        owner_client = Client(server.owner_url, auth=owner_login, verbose=False, download_files=False)
        text = f"0-{seeds - 1}"
        clients[0].predict("Emoji", text, 0.7, None, api_name="/demo_generate")  # network loaded, caches warm
        latencies, got, errors = [], [0] * viewers, []
        lock = threading.Lock()
        start = threading.Barrier(viewers + (1 if owner else 0) + 1)

        def viewer(i):
            start.wait()
            for g in range(grids):
                t0 = time.perf_counter()
                try:
                    out = clients[i].predict("Emoji", text, 0.7, None, api_name="/demo_generate")
                except Exception as e:  # counted, not raised: the figures say how many failed
                    with lock:
                        errors.append(str(e).splitlines()[0][:200])
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    got[i] += len(out) == seeds

        owner_wait = []

        def owner_job():
            start.wait()
            time.sleep(0.5)  # the line is full by now
            t0 = time.perf_counter()
            owner_client.predict("Demo: emoji (built in)", text, 0.7, None, "const", [], api_name="/generate")
            owner_wait.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=viewer, args=(i,)) for i in range(viewers)]
        if owner:
            threads.append(threading.Thread(target=owner_job))
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    import torch

    return {
        "viewers": viewers, "grids_each": grids, "seeds": seeds, "requests": len(latencies), "errors": errors,
        "all_got_their_grids": all(n == grids for n in got) and not errors,
        "p50_s": percentile(latencies, 50), "p90_s": percentile(latencies, 90), "p99_s": percentile(latencies, 99),
        "max_s": max(latencies) if latencies else float("nan"), "wall_s": wall,
        "grids_per_s": len(latencies) / wall if wall else float("nan"),
        "owner_s": owner_wait[0] if owner_wait else None,
        "device": f"CPU {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--viewers", type=int, default=20)
    p.add_argument("--grids", type=int, default=3, help="grids each viewer asks for, one after another")
    p.add_argument("--seeds", type=int, default=8, help="images per grid (at most 16, the visitors' limit)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = p.parse_args(argv)
    r = run(args.viewers, args.grids, args.seeds)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['viewers']} viewers x {r['grids_each']} grids of {r['seeds']} images (32 px demo network), "
          f"{r['device']}")
    print("| requests | p50 | p90 | p99 | max | wall | grids/s | owner's grid meanwhile | every viewer got its grids |")
    print("|---|---|---|---|---|---|---|---|---|")
    owner = f"{r['owner_s']:.2f} s" if r["owner_s"] is not None else "-"
    print(f"| {r['requests']} | {r['p50_s']:.2f} s | {r['p90_s']:.2f} s | {r['p99_s']:.2f} s | {r['max_s']:.2f} s "
          f"| {r['wall_s']:.1f} s | {r['grids_per_s']:.1f} | {owner} | "
          f"{'yes' if r['all_got_their_grids'] else 'NO: ' + '; '.join(r['errors'][:3])} |")
    return 0 if r["all_got_their_grids"] else 1


if __name__ == "__main__":
    sys.exit(main())
