"""Benchmark: how fast `prepare` turns the built-in emoji set into a 64 px dataset. Prints one JSON line.

    python bench/prepare_speed.py [--source emoji] [--resolution 64] [--workers N] [--repeat 1]

images_per_s counts written images over the whole call (listing, decoding, writing the zip). peak_rss_mb is the
main process's peak resident memory (the workers are separate processes), which should not grow with the
number of images.
"""

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="emoji")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the best is reported")
    args = parser.parse_args()

    from engine.data.prepare import PrepareOptions, _default_workers, prepare

    best = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            dest = Path(tmp) / f"run{r}.zip"
            t0 = time.perf_counter()
            res = prepare(args.source, dest, PrepareOptions(resolution=args.resolution, workers=args.workers))
            seconds = time.perf_counter() - t0
            if best is None or seconds < best[0]:
                best = (seconds, res, dest.stat().st_size)
    seconds, res, size = best
    print(json.dumps({
        "bench": "prepare_speed",
        "source": args.source,
        "resolution": args.resolution,
        "images": res.written,
        "skipped": len(res.skipped),
        "seconds": round(seconds, 2),
        "images_per_s": round(res.written / seconds, 1),
        "workers": args.workers or _default_workers(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "zip_mb": round(size / 2**20, 1),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
