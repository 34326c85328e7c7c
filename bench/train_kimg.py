"""Seconds per kimg and peak GPU memory of the real trainer (`python -m engine train`) with a preset.

    python bench/train_kimg.py --device cuda --res 64,128,256            # auto preset, 1 GPU
    python bench/train_kimg.py --device cpu --res 32 --cfg tiny --kimg 0.3 --tick 0.1

For each resolution: a dataset of --images smooth random colour images (or --data, one prepared dataset per
resolution given as a comma list), then the trainer for --kimg kimg in ticks of --tick kimg with no snapshots or
metrics in between. Reported from the run's stats.jsonl: sec/kimg (median over the ticks after the first,
which holds start-up, kernel builds and cuDNN autotuning), peak GPU memory (GB, max over those ticks), the batch
the preset chose, and images/s. One JSON line per resolution. NVIDIA's README gives, for one V100 and the auto
preset, 12.8-13.7 s/kimg at 128 px and 21.6-24.2 s/kimg at 256 px.
"""

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_dataset(path, res, count, seed=0):
    """A prepared dataset (NVIDIA's zip layout, no labels) of smooth random RGB images, [res, res]."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(count):
            low = torch.rand([1, 3, 4, 4], generator=g)
            img = F.interpolate(low, size=(res, res), mode="bicubic", align_corners=False).clamp(0, 1)[0]
            arr = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=1)
            z.writestr(f"{i // 1000:05d}/img{i:08d}.png", buf.getvalue())
        z.writestr("dataset.json", json.dumps({"labels": None}))


def measure(args, res, data, workdir):
    outdir = Path(workdir) / f"runs-{res}"
    cmd = [sys.executable, "-m", "engine", "train", "--data", str(data), "--outdir", str(outdir), "--cfg", args.cfg,
           "--kimg", str(args.kimg), "--tick", str(args.tick), "--snap", "1000000", "--metrics", "none",
           "--device", args.device, "--progress", "false", "--seed", "0"] + args.extra
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    runs = sorted(p for p in outdir.glob("*") if p.is_dir()) if outdir.is_dir() else []
    if proc.returncode != 0 or not runs:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"training at {res} px failed (exit {proc.returncode}): " + " | ".join(tail))
    run = runs[-1]
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]
    options = json.loads((run / "training_options.json").read_text())
    later = stats[1:] or stats

    def values(key):
        return [s[key]["mean"] for s in later if key in s]

    spk = statistics.median(values("Timing/sec_per_kimg"))
    batch = options.get("batch_size")
    return {
        "bench": "train_kimg", "res": res, "cfg": args.cfg, "device": args.device, "batch": batch,
        "cbase": options.get("G_kwargs", {}).get("channel_base"), "cmax": options.get("G_kwargs", {}).get("channel_max"),
        "precision": options.get("precision"), "kimg": stats[-1]["Progress/kimg"]["mean"], "ticks": len(stats),
        "sec_per_kimg": round(spk, 3), "images_per_sec": round(1000 / spk, 1) if spk > 0 else None,
        "peak_gpu_mem_gb": round(max(values("Resources/peak_gpu_mem_gb") or [0.0]), 2),
        "extra": " ".join(args.extra),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", default="64,128,256", help="resolutions, comma-separated")
    ap.add_argument("--cfg", default="auto", help="training preset (default auto)")
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--kimg", type=float, default=2.0, help="kimg to train per resolution")
    ap.add_argument("--tick", type=float, default=0.4, help="kimg per tick (the timing unit)")
    ap.add_argument("--images", type=int, default=512, help="images in each synthetic dataset")
    ap.add_argument("--data", default="", help="prepared datasets instead, one per resolution, comma-separated")
    ap.add_argument("--workdir", default="", help="keep datasets and runs here (default: a temporary folder)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more trainer flags, e.g. -- --fp32 1")
    args = ap.parse_args()
    args.extra = [a for a in args.extra if a != "--"]
    resolutions = [int(r) for r in args.res.split(",")]
    datas = [d for d in args.data.split(",") if d]
    if datas and len(datas) != len(resolutions):
        raise SystemExit("--data needs one dataset per resolution in --res")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here; use --device cpu")
    with tempfile.TemporaryDirectory(dir=args.workdir or None) as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        for i, res in enumerate(resolutions):
            data = Path(datas[i]) if datas else work / f"synthetic{res}.zip"
            if not datas:
                make_dataset(data, res, args.images)
            row = measure(args, res, data, work)
            row["machine"] = f"{os.cpu_count()}-core {platform.machine()}" if args.device == "cpu" else _gpu_name()
            print(json.dumps(row), flush=True)


def _gpu_name():
    import torch

    return torch.cuda.get_device_name(0)


if __name__ == "__main__":
    main()
