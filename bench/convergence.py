"""Convergence curves: how KID and FID fall with kimg, wall time and CPU time for one training setting.

    python bench/convergence.py --data emoji32.zip --ref emoji32-ref500.zip --cfg tiny --kimg 20 --points 5 \\
        --images 200 --seeds 2 --out curves/emoji32           # then the same --out with --gamma 0.5 --name gamma0.5

Each of --seeds training seeds runs the real trainer (`python -m engine train`, a subprocess) for --kimg kimg with
one tick (and snapshot) every kimg/points kimg; its first tick ends after one step, so the curve starts at the
untrained network. Afterwards every snapshot's G_ema is evaluated here, in this process, never while the trainer
runs: --images generated images (the same latent seeds at every point and in every setting) against the real
images of --ref (default --data; at most --real of them; their Inception features are cached on disk), giving
KID and FID, and a grid of fixed seeds is saved for every point.

Time is recorded twice for each point: the trainer's wall clock (`Timing/total_sec`) and the CPU seconds of the
training process (`Resources/process_cpu_sec`, all its threads). On a machine whose cores are shared with other
work the wall clock measures the neighbours as much as the trainer; CPU time is what a setting costs, so settings
are compared per CPU-hour.

A study is one --out folder: every invocation appends its setting (--name, default from the flags) to
DIR/curve.jsonl (one line per setting, seed and point; rerunning a setting and seed replaces its lines), and
redraws DIR/curves.png (KID against kimg, wall minutes and CPU minutes; one colour per setting, the band is the
seed-to-seed range) and DIR/summary.md (mean, seed spread and per-seed values at each point). --budget-cpu-min /
--budget-wall-min stop a seed's training early (the trainer is stopped the way the dashboard stops it: it
writes a snapshot first); the points reached are still evaluated.
--plot-only redraws from curve.jsonl; --eval-only evaluates run folders already in --out.
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import runs  # noqa: E402  (torch-free: the names of a run folder's files)

CURVE = "curve.jsonl"


# ---------------------------------------------------------------------------------------------------------------
# Training


def trainer_flags(args):
    """The trainer flags this setting changes (besides data, seed, length and ticks)."""
    flags = []
    for name in ("batch", "gamma", "glr", "dlr", "map", "cbase", "cmax", "ema", "target", "aug", "mirror",
                 "augpipe", "mbstd_group", "lecam", "apa", "apa_target"):
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    if args.lr is not None:
        if args.glr is None:
            flags += ["--glr", str(args.lr)]
        if args.dlr is None:
            flags += ["--dlr", str(args.lr)]
    if args.pl is not None:
        flags += ["--pl-weight", "0" if args.pl == "off" else "2"]
    return flags + list(args.extra)


def setting_name(args):
    if args.name:
        return args.name
    flags = trainer_flags(args)
    parts = [args.cfg] + [f"{flags[i].lstrip('-')}{flags[i + 1]}" for i in range(0, len(flags) - 1, 2)]
    return "-".join(parts)


def read_jsonl(path):
    out = []
    if not Path(path).is_file():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a torn last line of a file still being written
    return out


def _child_cpu_s(pid):
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def train_one(args, seed, run_root, log_path):
    """Run the trainer for one seed -> (run folder, why it ended: 'finished' | 'budget')."""
    tick = args.kimg / args.points
    outdir = run_root / f"seed{seed}"
    before = set(outdir.glob("*")) if outdir.exists() else set()
    cmd = [sys.executable, "-m", "engine", "train", "--data", str(args.data), "--outdir", str(outdir),
           "--cfg", args.cfg, "--kimg", str(args.kimg), "--tick", f"{tick:.6g}", "--snap", "1", "--metrics", "none",
           "--seed", str(seed), "--device", args.device, "--progress", "0"] + trainer_flags(args)
    t0 = time.time()
    ended = "finished"
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                cpu = _child_cpu_s(proc.pid)
                over_cpu = args.budget_cpu_min and cpu is not None and cpu > args.budget_cpu_min * 60
                over_wall = args.budget_wall_min and time.time() - t0 > args.budget_wall_min * 60
                if (over_cpu or over_wall) and ended == "finished":
                    ended = "budget"
                    proc.send_signal(signal.SIGTERM)  # the trainer finishes its step and writes a snapshot
        finally:
            if proc.poll() is None:  # this script was interrupted: the trainer must not go on alone
                proc.terminate()
                proc.wait()
    if proc.returncode != 0:
        tail = Path(log_path).read_text()[-2000:]
        sys.exit(f"training seed {seed} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    new = sorted(p for p in set(outdir.glob("*")) - before if p.is_dir())
    if not new:
        sys.exit(f"no run folder appeared in {outdir}")
    return new[-1], ended


def snapshot_points(run_dir):
    """[(point, kimg, snapshot path, wall s, cpu s, the tick's stats)] from the run's stats.jsonl and its snapshots,
    in order; point is the tick's number (one snapshot a tick), so it stays the same when older snapshots were
    deleted.

    Each snapshot keeps its own file (engine/runs.py): NVIDIA's name KKKKKK belongs to the first tick that ended
    within kimg KKKKKK, a finer name KKKKKK_III to the tick that ended at exactly that many images.
    """
    stats = read_jsonl(run_dir / runs.STATS_FILE)

    def nimg(s):
        return int(round(s["Progress/kimg"]["mean"] * 1000))

    points = []
    for _, snap in runs.list_snapshots(run_dir):
        m = runs.SNAPSHOT_RE.match(snap.name)
        whole, extra = int(m.group(1)), m.group(2)
        if extra is None:
            ticks = [s for s in stats if nimg(s) // 1000 == whole][:1]
        else:
            ticks = [s for s in stats if nimg(s) == whole * 1000 + int(extra)]
        if not ticks:
            continue
        t = ticks[-1]
        points.append((int(t["Progress/tick"]["mean"]), t["Progress/kimg"]["mean"], snap, t["Timing/total_sec"]["mean"],
                       t.get("Resources/process_cpu_sec", {}).get("mean"), t))
    return points


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


class Evaluator:
    """KID and FID of generators against a fixed set of real features, with fixed latent seeds."""

    def __init__(self, ref, num_real, num_gen, device, detector_kind=None, eval_seed=0):
        from engine.metrics import reals
        from engine.metrics.detector import cache_root, load_detector

        self.device = device
        self.num_gen = num_gen
        self.eval_seed = eval_seed
        self.det = load_detector(device, kind=detector_kind)
        dataset = reals.open_dataset(ref)
        self.num_real = min(num_real, len(dataset))
        if self.num_real < 2 or num_gen < 2:
            raise SystemExit(f"need at least 2 real images in {ref} and --images >= 2")
        self.real, self.cache_hit = reals.real_features(dataset, ref, self.det, self.num_real,
                                                        cache_root=cache_root())
        self.dataset = dataset

    def __call__(self, G):
        from engine.metrics import generated_features
        from engine.metrics.fid import fid_from_features
        from engine.metrics.kid import kid_from_features

        gen = generated_features(G, self.det, self.num_gen, self.device, seed=self.eval_seed, dataset=self.dataset)
        return (kid_from_features(self.real, gen, seed=self.eval_seed), fid_from_features(self.real, gen))


def save_grid(G, path, count):
    from engine.generate import generate_images
    from engine.media import make_grid, save_image

    cols = min(count, 8)
    rows = -(-count // cols)
    images = generate_images(G, range(count), noise_mode="const")
    save_image(make_grid(images, cols, rows, pad=1), path)


# ---------------------------------------------------------------------------------------------------------------
# Curve file, summary and plot


def write_records(out, setting, seed, records, only_points=False):
    """Replace the lines of (setting, seed) in out/curve.jsonl by `records` (only_points: only the lines of the
    points in `records`, keeping the others)."""
    path = out / CURVE
    points = {r["point"] for r in records}

    def replaced(r):
        return (r.get("setting") == setting and r.get("seed") == seed
                and (not only_points or r.get("point") in points))

    keep = [r for r in read_jsonl(path) if not replaced(r)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in keep + records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def group_points(records):
    """{setting: {point index: [records of each seed]}}, settings in first-seen order."""
    out = {}
    for r in records:
        out.setdefault(r["setting"], {}).setdefault(r["point"], []).append(r)
    return out


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    m = sum(values) / len(values)
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return m, sd


def summary_markdown(records):
    lines = []
    for setting, points in group_points(records).items():
        first = next(iter(points.values()))[0]
        lines.append(f"### {setting}")
        lines.append("")
        lines.append(f"trainer flags: `--cfg {first['cfg']} {' '.join(first['flags'])}`; {first['num_gen']} generated "
                     f"vs {first['num_real']} real images, detector {first['detector']}")
        lines.append("")
        lines.append("| kimg | KID mean | KID seed sd | KID per seed | FID mean | FID per seed | CPU min | wall min | "
                     "p ADA / APA |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for idx in sorted(points):
            rs = sorted(points[idx], key=lambda r: r["seed"])
            kid_m, kid_sd = _mean_std([r["kid"] for r in rs])
            fid_m, _ = _mean_std([r["fid"] for r in rs])
            cpu_m, _ = _mean_std([r["cpu_s"] for r in rs])
            wall_m, _ = _mean_std([r["wall_s"] for r in rs])
            kimg_m, _ = _mean_std([r["kimg"] for r in rs])
            kids = ", ".join("%.4f" % r["kid"] for r in rs)
            fids = ", ".join("%.1f" % r["fid"] for r in rs)
            sd = f"{kid_sd:.4f}" if len(rs) > 1 else "- (1 seed)"
            ada_p, _ = _mean_std([r.get("augment_p") for r in rs])
            apa_p, _ = _mean_std([r.get("apa_p") for r in rs])
            ps = " / ".join("-" if v is None else f"{v:.3f}" for v in (ada_p, apa_p))
            lines.append(f"| {kimg_m:.2f} | {kid_m:.4f} | {sd} | {kids} | {fid_m:.1f} | {fids} | "
                         f"{(cpu_m or 0) / 60:.2f} | {wall_m / 60:.2f} | {ps} |")
        lines.append("")
    return "\n".join(lines)


def plot(records, path, title=""):
    """KID against kimg, wall minutes and CPU minutes: per setting the seed mean and the seed range (band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec = [("kimg", "kimg", 1.0), ("wall_s", "wall-clock minutes", 60.0), ("cpu_s", "CPU minutes (trainer)", 60.0)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    positive = all(r["kid"] > 0 for r in records)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (setting, points) in enumerate(group_points(records).items()):
        colour = colours[i % len(colours)]
        idxs = sorted(points)
        for ax, (key, label, div) in zip(axes, axes_spec):
            xs, mean, lo, hi = [], [], [], []
            for idx in idxs:
                rs = [r for r in points[idx] if r.get(key) is not None]
                if not rs:
                    continue
                xs.append(sum(r[key] for r in rs) / len(rs) / div)
                kids = [r["kid"] for r in rs]
                mean.append(sum(kids) / len(kids))
                lo.append(min(kids))
                hi.append(max(kids))
            if not xs:
                continue
            nseeds = max(len(points[idx]) for idx in idxs)
            ax.plot(xs, mean, "-o", color=colour, ms=3, label=f"{setting} ({nseeds} seed{'s' * (nseeds > 1)})")
            if nseeds > 1:
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.2, lw=0)
            ax.set_xlabel(label)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if positive:
            ax.set_yscale("log")
    axes[0].set_ylabel("KID (lower is better)")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def _resolved(cfg, flags, resolution):
    """The trainer's resolved config for preset `cfg` with trainer `flags` on a dataset of `resolution` px."""
    from engine.commands.train import add_arguments, options_from_args
    from engine.train import presets

    ap = argparse.ArgumentParser()
    add_arguments(ap)
    args = ap.parse_args(["--data", "d", "--outdir", "o", "--cfg", cfg] + list(flags))
    facts = {"resolution": resolution, "channels": 3, "label_dim": 0, "name": "d", "path": "d", "size": 1000}
    return presets.resolve(options_from_args(args), facts, 1, "cpu").to_dict()


def changed_flags(cfg, flags, resolution=32):
    """The flags of a setting that change preset `cfg` (x-flips are a dataset option, not a change of the preset;
    a flag that gives the preset's own value is not a change either: told by resolving the trainer's config with
    and without it)."""
    from engine.errors import UserError
    from engine.train.presets import PRESETS

    base = _resolved(cfg, [], resolution) if cfg in PRESETS else None  # None: every flag is a change
    changed = []
    for i in range(0, len(flags) - 1, 2):
        name, value = flags[i], flags[i + 1]
        if name == "--mirror":
            continue
        if base is not None:
            try:
                if _resolved(cfg, [name, value], resolution) == base:
                    continue
            except (UserError, SystemExit):
                pass
        changed += [name, value]
    if len(flags) % 2:
        changed.append(flags[-1])
    return changed


def export_curves(records, path, label, resolution):
    """Merge the seed-mean curve of every setting that is a preset as it is (no changed flags) into `path`, the
    file engine/train/expected.py reads; a curve of the same preset and resolution is replaced."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {"curves": []}
    for setting, points in group_points(records).items():
        first = next(iter(points.values()))[0]
        res = int(first.get("resolution") or resolution)
        if changed_flags(first["cfg"], first["flags"], res):
            continue
        seeds = sorted({r["seed"] for rs in points.values() for r in rs})
        rows = []
        for idx in sorted(points):
            rs = points[idx]
            kid_m, kid_sd = _mean_std([r["kid"] for r in rs])
            fid_m, _ = _mean_std([r["fid"] for r in rs])
            cpu_m, _ = _mean_std([r["cpu_s"] for r in rs])
            kimg_m, _ = _mean_std([r["kimg"] for r in rs])
            rows.append({"kimg": round(kimg_m, 3), "kid": round(kid_m, 4),
                         "kid_sd": round(kid_sd, 4) if len(rs) > 1 else None,
                         "fid": round(fid_m, 1), "cpu_min": None if cpu_m is None else round(cpu_m / 60, 2),
                         "seeds": len(rs)})
        mirror = "--mirror" in first["flags"] and first["flags"][first["flags"].index("--mirror") + 1] == "1"
        entry = {"preset": first["cfg"], "resolution": res, "dataset": label or first["data_name"], "mirror": mirror,
                 "metric": "KID", "num_gen": first["num_gen"], "num_real": first["num_real"], "seeds": len(seeds),
                 "detector": first["detector"], "machine": first["machine"], "date": first["date"],
                 "source": "bench/convergence.py, docs/BENCHMARKS.md", "points": rows}
        data["curves"] = [c for c in data.get("curves", [])
                          if not (c.get("preset") == entry["preset"] and c.get("resolution") == res)] + [entry]
    path.write_text(json.dumps(data, indent=1) + "\n")


def extend_curve(path, preset, resolution, ema_jsonl, name):
    """Append to the curve of `preset` at `resolution` in `path` (the Train tab's file) the points of one longer
    trajectory of that same run: the lines of `name` in an ema.jsonl of bench/ema_study.py --eval (the run's own
    G_ema, continued from the curve's last snapshot) that lie past the curve's last point and were measured like
    it (same image counts and detector). -> the number of points added."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"--export {path}: cannot read it ({e}); make the curve first with --plot-only --export")
    curve = next((c for c in data.get("curves", []) if c.get("preset") == preset and c.get("resolution") == resolution),
                 None)
    if curve is None:
        sys.exit(f"--export {path} has no curve of --cfg {preset} at {resolution} px to extend")
    if int(curve.get("seeds", 1)) != 1:
        sys.exit(f"the {preset} curve in {path} is a mean over {curve['seeds']} training seeds; a continuation "
                 f"is one trajectory: extend a one-seed curve")
    last = max(p["kimg"] for p in curve["points"])
    if not Path(ema_jsonl).is_file():
        sys.exit(f"--extend-from {ema_jsonl}: no such file (bench/ema_study.py --eval writes OUT/ema.jsonl)")
    same = [r for r in read_jsonl(ema_jsonl) if r.get("name") == name and r.get("images") == curve["num_gen"]
            and r.get("real") == curve["num_real"] and r.get("detector") == curve.get("detector")]
    if not same:
        sys.exit(f"--extend-from {ema_jsonl}: no points of {name!r} with {curve['num_gen']} generated vs "
                 f"{curve['num_real']} real images and detector {curve.get('detector')}")
    added = [{"kimg": round(r["kimg"], 3), "kid": round(r["kid"], 4), "kid_sd": None, "fid": round(r["fid"], 1),
              "cpu_min": None, "seeds": 1} for r in sorted(same, key=lambda r: r["kimg"]) if r["kimg"] > last + 0.5]
    curve["points"] = curve["points"] + added
    if added and "continued" not in curve.get("source", ""):
        curve["source"] = (curve.get("source", "") + "; past " + f"{last:g} kimg the same run continued "
                           "(bench/ema_study.py --eval, the run's own G_ema)")
    path.write_text(json.dumps(data, indent=1) + "\n")
    return len(added)


def redraw(out):
    records = read_jsonl(out / CURVE)
    if not records:
        sys.exit(f"{out / CURVE} has no records")
    r0 = records[0]
    plot(records, out / "curves.png", title=f"{r0.get('data_name', '')}: KID of {r0['num_gen']} generated vs "
                                             f"{r0['num_real']} real images; band = seed range")
    (out / "summary.md").write_text(summary_markdown(records) + "\n")
    return records


# ---------------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="prepared training dataset")
    ap.add_argument("--ref", help="prepared dataset of real images for the metrics (default: --data)")
    ap.add_argument("--real", type=int, default=500, help="at most this many real images of --ref (default 500)")
    ap.add_argument("--cfg", default="tiny", help="training preset (default tiny)")
    ap.add_argument("--kimg", type=float, default=20, help="training length per seed (default 20)")
    ap.add_argument("--points", type=int, default=5, help="evaluated points after the start (default 5)")
    ap.add_argument("--images", type=int, default=200, help="generated images per evaluation (default 200)")
    ap.add_argument("--seeds", default="2", help="training seeds: a count N (0..N-1) or a list '3,5' (default 2)")
    ap.add_argument("--out", help="study folder (curve.jsonl, curves.png, summary.md, grids, runs)")
    ap.add_argument("--name", help="setting name in the curve file (default: cfg and the changed flags)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--grid", type=int, default=16, help="images in each point's grid, seeds 0..N-1 (default 16)")
    ap.add_argument("--budget-cpu-min", type=float, help="stop a seed's training after this many CPU minutes")
    ap.add_argument("--budget-wall-min", type=float, help="stop a seed's training after this many wall minutes")
    ap.add_argument("--keep-runs", action="store_true", help="keep the run folders (default: only the last snapshot)")
    ap.add_argument("--plot-only", action="store_true", help="redraw curves.png and summary.md from curve.jsonl")
    ap.add_argument("--eval-only", action="store_true",
                    help="train nothing: evaluate the snapshots of each seed's newest run folder already in --out "
                         "(trained elsewhere, or kept with --keep-runs) and replace those points' lines")
    ap.add_argument("--export", metavar="JSON",
                    help="also merge the curves of unchanged presets into this file (the Train tab's "
                         "engine/train/measured_curves.json)")
    ap.add_argument("--export-label", default="", help="dataset description for --export, e.g. 'emoji (4,009 images)'")
    ap.add_argument("--extend-from", metavar="EMA_JSONL",
                    help="with --export, --cfg and --ref: append to that preset's curve the later points of one "
                         "continued trajectory of the same run (bench/ema_study.py's ema.jsonl), then stop")
    ap.add_argument("--extend-name", default="run", help="the network name of those points in EMA_JSONL")
    g = ap.add_argument_group("setting (trainer flags; unset = the preset's value)")
    g.add_argument("--batch", type=int)
    g.add_argument("--gamma", type=float, help="R1 weight")
    g.add_argument("--lr", type=float, help="both learning rates")
    g.add_argument("--glr", type=float)
    g.add_argument("--dlr", type=float)
    g.add_argument("--ema", type=float, help="G_ema half-life in kimg")
    g.add_argument("--map", type=int, help="mapping depth")
    g.add_argument("--cbase", type=int)
    g.add_argument("--cmax", type=int)
    g.add_argument("--mbstd-group", type=int)
    g.add_argument("--aug", choices=["ada", "noaug", "fixed"])
    g.add_argument("--augpipe")
    g.add_argument("--target", type=float, help="ADA target")
    g.add_argument("--mirror", choices=["0", "1"])
    g.add_argument("--pl", choices=["on", "off"], help="path-length regularisation (weight 2 or 0; default: the preset's)")
    g.add_argument("--lecam", type=float, help="LeCam regularisation weight (0: off)")
    g.add_argument("--apa", choices=["0", "1"], help="adaptive pseudo augmentation off/on")
    g.add_argument("--apa-target", type=float, help="APA target")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more trainer flags, e.g. -- --style-mixing 0")
    args = ap.parse_args()
    args.extra = [a for a in args.extra if a != "--"]
    if args.extend_from:
        if not (args.export and (args.ref or args.data)):
            ap.error("--extend-from needs --export (the curve file) and --ref (its resolution)")
        n = extend_curve(args.export, args.cfg, _resolution(args.ref or args.data), args.extend_from,
                         args.extend_name)
        print(f"added {n} point(s) of {args.extend_name} to the {args.cfg} curve in {args.export}")
        return
    if not args.out:
        ap.error("--out is required: the study folder")
    out = Path(args.out)
    if args.plot_only:
        records = redraw(out)
        if args.export:
            res = _resolution(args.ref or args.data) if (args.ref or args.data) else 0
            export_curves(records, args.export, args.export_label, res)
            print(f"merged into {args.export}")
        print(f"wrote {out / 'curves.png'} and {out / 'summary.md'}")
        return
    if not args.data:
        ap.error("--data is required (unless --plot-only)")
    if args.points < 1 or args.kimg <= 0:
        ap.error("--points must be >= 1 and --kimg > 0")
    if args.kimg / args.points < 1:
        # Snapshots are named by whole kimg: points closer than 1 kimg would overwrite each other.
        ap.error(f"--kimg / --points must be at least 1 kimg (got {args.kimg / args.points:g}): fewer points")
    seeds = ([int(s) for s in args.seeds.split(",") if s.strip()] if "," in args.seeds else list(range(int(args.seeds))))
    args.data = Path(args.data).resolve()
    ref = Path(args.ref).resolve() if args.ref else args.data
    for p in (args.data, ref):
        if not p.exists():
            sys.exit(f"dataset {p} does not exist: make it with `python -m engine prepare`")
    out.mkdir(parents=True, exist_ok=True)
    # Stopped by SIGTERM, this script exits through its finally blocks, which stop the trainer too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    setting = setting_name(args)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in setting)
    run_root = out / "runs" / safe
    grids = out / "grids"
    grids.mkdir(exist_ok=True)
    run_root.mkdir(parents=True, exist_ok=True)

    import torch

    from engine.checkpoint import load_network

    evaluator = Evaluator(ref, args.real, args.images, args.device)
    machine = f"{os.cpu_count()}-core {platform.machine()}, torch {torch.__version__}"
    for seed in seeds:
        if args.eval_only:
            found = sorted(p for p in (run_root / f"seed{seed}").glob("*") if p.is_dir())
            if not found:
                sys.exit(f"--eval-only: no run folder in {run_root / f'seed{seed}'}")
            run_dir, ended = found[-1], "evaluated later"
        else:
            run_dir, ended = train_one(args, seed, run_root, out / f"train-{safe}-seed{seed}.log")
        records = []
        for idx, kimg, snap, wall_s, cpu_s, tick in snapshot_points(run_dir):
            G = load_network(snap, args.device)["G_ema"]
            t0 = time.time()
            kid, fid = evaluator(G)
            eval_s = time.time() - t0
            grid = grids / f"{safe}-seed{seed}-kimg{kimg:07.2f}.png"
            save_grid(G, grid, args.grid)
            rec = {"setting": setting, "seed": seed, "point": idx, "kimg": round(kimg, 4), "wall_s": round(wall_s, 2),
                   "cpu_s": None if cpu_s is None else round(cpu_s, 2), "kid": kid, "fid": fid,
                   "grid": str(grid.relative_to(out)), "snapshot": snap.name, "ended": ended,
                   "cfg": args.cfg, "flags": trainer_flags(args), "data_name": args.data.name, "ref": ref.name,
                   "num_gen": args.images, "num_real": evaluator.num_real,
                   "resolution": int(getattr(evaluator.dataset, "resolution", 0) or 0), "detector": evaluator.det.name,
                   "eval_s": round(eval_s, 1), "machine": machine, "date": time.strftime("%Y-%m-%d"),
                   # where the adaptive probabilities stood (mean over the tick): ADA's, and APA's when it was on
                   "augment_p": tick.get("Progress/augment", {}).get("mean"),
                   "apa_p": tick.get("Progress/apa_p", {}).get("mean")}
            records.append(rec)
            print(json.dumps({k: rec[k] for k in ("setting", "seed", "kimg", "kid", "fid", "wall_s", "cpu_s")}),
                  flush=True)
        write_records(out, setting, seed, records, only_points=args.eval_only)
        redraw(out)
        if not args.keep_runs:
            snaps = [p for _, p in runs.list_snapshots(run_dir)]
            for s in snaps[:-1]:
                s.unlink()  # the last one stays, so a curve can be continued with the trainer's --resume
    if args.export:
        export_curves(read_jsonl(out / CURVE), args.export, args.export_label, 0)
    print(f"wrote {out / CURVE}, {out / 'curves.png'}, {out / 'summary.md'} and grids in {grids}")


def _resolution(path):
    from engine.metrics import reals

    return int(getattr(reals.open_dataset(path), "resolution", 0) or 0)


if __name__ == "__main__":
    main()
