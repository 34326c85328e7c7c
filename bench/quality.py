"""Quality check on real data: does training make a clearly better generator than the untrained one?

Prepares a subset of the built-in emoji set, trains a small preset on it twice for the same fixed budget
(with ADA and without augmentation), has the trainer evaluate FID and KID at its first snapshot (after one
step: the untrained network) and at its last, and prints one markdown table.

    python bench/quality.py                       # CPU, tiny preset, 32 px, 500 images, 4 kimg per run
    python bench/quality.py --kimg 20 --device cuda --metrics fid500,kid500

Everything goes through the command line the user has (`python -m engine prepare|train|metrics`); the metric
values are read back from the run folders' metric-<name>.jsonl files. `--phase train` only trains (no
metrics) and `--phase eval` later evaluates the first and last snapshot of the newest run of each config with
`python -m engine metrics` -- for training on one machine and measuring on another.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd, log_path):
    """Run a command with its output in log_path; exit with the log's tail when it fails."""
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = Path(log_path).read_text()[-3000:]
        sys.exit(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")


def read_jsonl(path):
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def device_text(device):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/studio-quality", help="datasets and run folders go here")
    ap.add_argument("--cfg", default="tiny", help="training preset (default tiny)")
    ap.add_argument("--res", type=int, default=32, help="image resolution (default 32)")
    ap.add_argument("--images", type=int, default=500, help="size of the emoji subset (default 500)")
    ap.add_argument("--kimg", type=float, default=4, help="training budget per run in thousands of images (default 4)")
    ap.add_argument("--metrics", default="fid500,kid500", help="metrics (default fid500,kid500)")
    ap.add_argument("--configs", default="ada,noaug", help="augmentation modes to compare (default ada,noaug)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--eval-device", default=None, help="device for --phase eval (default: --device)")
    ap.add_argument("--phase", default="all", choices=["all", "train", "eval"],
                    help="all: train with metrics at the first and last snapshot; train: no metrics; eval: "
                         "evaluate the newest existing runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"emoji{args.res}-{args.images}.zip"
    if not data.exists():
        sh([sys.executable, "-m", "engine", "prepare", "--source", "emoji", "--dest", str(data), "--resolution",
            str(args.res), "--max-images", str(args.images), "--no-progress"], work / "prepare.log")
    metric_names = [m.strip() for m in args.metrics.split(",") if m.strip()]

    rows = []
    for aug in [c.strip() for c in args.configs.split(",") if c.strip()]:
        outdir = work / f"runs-{aug}"
        row = {"config": aug, "wall_s": None}
        if args.phase != "eval":
            before = set(outdir.glob("*")) if outdir.exists() else set()
            t0 = time.time()
            # --snap larger than the run: snapshots (and metrics) only after the first step and at the end.
            with_metrics = ",".join(metric_names) if args.phase == "all" else "none"
            sh([sys.executable, "-m", "engine", "train", "--data", str(data), "--outdir", str(outdir), "--cfg",
                args.cfg, "--kimg", str(args.kimg), "--aug", aug, "--metrics", with_metrics, "--snap", "1000000",
                "--seed", str(args.seed), "--device", args.device, "--progress", "0"], work / f"train-{aug}.log")
            row["wall_s"] = time.time() - t0
            if not sorted(set(outdir.glob("*")) - before):
                sys.exit(f"no run folder appeared in {outdir}")
        runs = sorted(p for p in outdir.glob("*") if p.is_dir()) if outdir.exists() else []
        if not runs:
            sys.exit(f"no run folder in {outdir}: run --phase train first")
        run_dir = runs[-1]
        row["run"] = run_dir.name
        stats = read_jsonl(run_dir / "stats.jsonl")
        row["kimg"] = stats[-1]["Progress/kimg"]["mean"] if stats else float("nan")
        row["p"] = stats[-1]["Progress/augment"]["mean"] if stats else float("nan")
        row["train_s"] = stats[-1]["Timing/total_sec"]["mean"] if stats else float("nan")
        if args.phase == "train":
            rows.append(row)
            continue
        if args.phase == "eval":
            snaps = sorted(run_dir.glob("network-snapshot-*.pt"))
            if len(snaps) < 2:
                sys.exit(f"{run_dir}: needs a first and a last snapshot, found {len(snaps)}")
            for m in run_dir.glob("metric-*.jsonl"):
                m.unlink()  # this phase's records replace any earlier evaluation
            for snap in (snaps[0], snaps[-1]):
                sh([sys.executable, "-m", "engine", "metrics", "--network", str(snap), "--data", str(data),
                    "--metrics", ",".join(metric_names), "--device", args.eval_device or args.device],
                   work / f"metrics-{aug}-{snap.stem}.log")
        for name in metric_names:
            records = read_jsonl(run_dir / f"metric-{name}.jsonl")
            if len(records) < 2:
                sys.exit(f"{run_dir}: metric-{name}.jsonl has {len(records)} record(s), expected start and end")
            row[name] = (records[0]["results"][name], records[-1]["results"][name])
            row["detector"] = records[-1].get("detector", "?")
        rows.append(row)

    if args.phase == "train":
        for r in rows:
            print(json.dumps({k: r[k] for k in ("config", "run", "kimg", "p", "train_s", "wall_s")}))
        return

    date = datetime.date.today().isoformat()
    where = device_text(args.device)
    if args.phase == "eval":
        where = f"trained earlier (see the runs), metrics on {device_text(args.eval_device or args.device)}"
    print(f"Quality: emoji {args.images} images at {args.res} px, cfg {args.cfg}, {args.kimg:g} kimg per run, "
          f"{where}, {date}, detector {rows[0]['detector']}")
    print()
    head = "| config | kimg | final p | " + " | ".join(f"{m} start | {m} end" for m in metric_names) + " | train time |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        cells = [r["config"], f"{r['kimg']:.2f}", f"{r['p']:.3f}"]
        for m in metric_names:
            fmt = "{:.4f}" if m.startswith("kid") else "{:.1f}"
            cells += [fmt.format(r[m][0]), fmt.format(r[m][1])]
        cells.append(f"{r['train_s'] / 60:.1f} min")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
