"""G_ema half-life study on one training trajectory: several EMAs of the same generator, evaluated side by side.

    python bench/ema_study.py --out late --half-lives 5,10,20 --every 20 -- \\
        --data emoji32.zip --outdir late/runs --resume assets/demo-training-snapshot.pt --kimg 500
    python bench/ema_study.py --out late --eval --ref emoji32-ref500.zip --images 200

G_ema never feeds back into training, so the generator's trajectory is the same whatever the half-life; keeping
several EMAs of one run compares half-lives without the seed-to-seed noise of separate runs (what remains is
the evaluation's own noise: the same latent seeds for every network). The first form runs the real trainer
(`python -m engine train` with the flags after --) in this process and keeps, beside the run's own G_ema, one
extra EMA per --half-lives value (kimg; the same update as the trainer's, with the run's ramp-up unless
--no-ramp); every --every kimg all of them are written to OUT/nets/<name>-<kimg>.pt (our network format).
The extra EMAs start from the run's G_ema at the first step (for a continued run: its snapshot's).
The second form evaluates every network in OUT/nets (KID and FID, the offline detector unless --detector) and
writes OUT/ema.jsonl, OUT/ema.md (a table: kimg by EMA), OUT/ema.png (KID against kimg) and a 16-image grid per network in OUT/grids.
"""

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

NET_RE = re.compile(r"^(?P<name>.+)-(?P<nimg>\d{9})\.pt$")


def train(args, train_argv):
    from engine import __main__ as cli
    from engine.checkpoint import pack_network, save_snapshot, FORMAT, VERSION
    from engine.train import loop

    nets = Path(args.out) / "nets"
    nets.mkdir(parents=True, exist_ok=True)
    half_lives = [float(h) for h in args.half_lives.split(",") if h.strip()]
    original = loop.update_ema
    extra = {}  # name -> (half-life kimg, module)
    every = int(round(args.every * 1000))

    def save(module, name, nimg, cfg):
        data = {"format": FORMAT, "version": VERSION, "G_ema": pack_network(module), "dataset": dict(cfg.dataset)}
        save_snapshot(nets / f"{name}-{nimg:09d}.pt", data)

    def update_ema(G_ema, G, cfg, cur_nimg):
        if not extra:
            for h in half_lives:
                extra[f"ema{h:g}"] = (h, copy.deepcopy(G_ema))
        original(G_ema, G, cfg, cur_nimg)
        for h, module in extra.values():  # the trainer's own update, with this half-life (and ramp-up or none)
            original(module, G, SimpleNamespace(ema_kimg=h, batch_size=cfg.batch_size,
                                                ema_rampup=None if args.no_ramp else cfg.ema_rampup), cur_nimg)
        after = cur_nimg + cfg.batch_size  # the count once this step is added (the loop adds it next)
        if after // every > cur_nimg // every:
            save(G_ema, f"run-ema{cfg.ema_kimg:g}", after, cfg)
            for name, (_, module) in extra.items():
                save(module, name, after, cfg)

    loop.update_ema = update_ema
    try:
        return cli.main(["train"] + train_argv)
    finally:
        loop.update_ema = original


def evaluate(args):
    import torch

    from convergence import Evaluator, save_grid
    from engine.checkpoint import load_network

    torch.manual_seed(0)
    out = Path(args.out)
    files = sorted((p for p in (out / "nets").glob("*.pt") if NET_RE.match(p.name)),
                   key=lambda p: (int(NET_RE.match(p.name)["nimg"]), p.name))
    if args.min_kimg:
        files = [p for p in files if int(NET_RE.match(p.name)["nimg"]) >= args.min_kimg * 1000]
    if not files:
        sys.exit(f"no networks in {out / 'nets'}: run the training form first")
    path = out / "ema.jsonl"
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done[(r["name"], r["nimg"], r["images"])] = r
    ev = Evaluator(args.ref, args.real, args.images, "cpu", detector_kind=args.detector)
    (out / "grids").mkdir(exist_ok=True)
    for f in files:
        m = NET_RE.match(f.name)
        key = (m["name"], int(m["nimg"]), args.images)
        if key in done:
            continue
        G = load_network(f)["G_ema"]
        kid, fid = ev(G)
        save_grid(G, out / "grids" / f.name.replace(".pt", ".png"), 16)
        r = {"name": key[0], "nimg": key[1], "kimg": key[1] / 1000, "images": args.images, "real": ev.num_real,
             "kid": kid, "fid": fid, "detector": ev.det.name if hasattr(ev.det, "name") else str(args.detector)}
        done[key] = r
        with open(path, "a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(f"{f.name}: KID {kid:.4f} FID {fid:.1f}", flush=True)
    rows = sorted({r["nimg"] for r in done.values() if r["images"] == args.images})
    names = sorted({r["name"] for r in done.values()}, key=lambda n: (not n.startswith("run"), float(re.sub(r"[^0-9.]", "", n) or 0)))
    lines = [f"KID ({args.images} generated vs {ev.num_real} real; FID in brackets)", "",
             "| kimg | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for nimg in rows:
        cells = []
        for n in names:
            r = done.get((n, nimg, args.images))
            cells.append(f"{r['kid']:.4f} ({r['fid']:.1f})" if r else "")
        lines.append(f"| {nimg / 1000:.1f} | " + " | ".join(cells) + " |")
    (out / "ema.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot([r for r in done.values() if r["images"] == args.images], names, out / "ema.png", args.title)


def plot(records, names, path, title):
    """KID against kimg, one line per EMA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name in names:
        rs = sorted((r for r in records if r["name"] == name), key=lambda r: r["nimg"])
        ax.plot([r["kimg"] for r in rs], [r["kid"] for r in rs], "-o", ms=3, label=name)
    ax.set_xlabel("kimg")
    ax.set_ylabel("KID")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    argv = sys.argv[1:]
    train_argv = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_argv = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="study folder (nets/, grids/, ema.jsonl, ema.md)")
    ap.add_argument("--half-lives", default="5,10,20", help="extra G_ema half-lives in kimg (default 5,10,20)")
    ap.add_argument("--no-ramp", action="store_true", help="extra EMAs ignore the run's ramp-up (half-life as given)")
    ap.add_argument("--every", type=float, default=20, help="write every network each this many kimg (default 20)")
    ap.add_argument("--eval", action="store_true", help="evaluate the networks in OUT/nets")
    ap.add_argument("--ref", help="prepared dataset of real images (--eval)")
    ap.add_argument("--real", type=int, default=500)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--min-kimg", type=float, default=0, help="--eval: only networks from this kimg on")
    ap.add_argument("--detector", default="offline", help="Inception detector kind (default offline)")
    ap.add_argument("--title", default="", help="--eval: the plot's title")
    args = ap.parse_args(argv)
    if args.eval:
        if not args.ref:
            sys.exit("--eval needs --ref (the prepared real images)")
        evaluate(args)
        return 0
    if not train_argv:
        sys.exit("give the trainer's flags after --, e.g. -- --data emoji32.zip --outdir runs --kimg 100")
    return train(args, train_argv)


if __name__ == "__main__":
    sys.exit(main())
