"""A 64 px emoji demo network trained in one GPU call, prepared and evaluated on the CPU.

The commands, in order (the repository root is the working folder; `plan` prints them with the sizes of today's
files):

  1. CPU, before:   nice -n 19 python bench/demo64_gpu.py prepare
  2. GPU, one remote call on the GPU machine (a command, the ignored files it carries along, a time limit; about
     8 of the 10 minutes such a call may take; what it writes to $OUT comes back):
        command:   PYTHONUNBUFFERED=1 python3 bench/demo64_gpu.py train --out "$OUT"
        carry:     ["demo64/carry/emoji64.pixels.tar.xz"]
        timeout_s: 600
  3. CPU, after:    nice -n 19 python bench/demo64_gpu.py evaluate --returned <the folder the files came back to> \\
                        --baseline assets/demo-network.pt
  Later, to continue that same run on a GPU (evaluate wrote demo64/resume.pt from the returned snapshot parts):
        command:   PYTHONUNBUFFERED=1 python3 bench/demo64_gpu.py train --out "$OUT" --resume demo64/resume.pt
        carry:     ["demo64/carry/emoji64.pixels.tar.xz", "demo64/resume.pt"]
        timeout_s: 600
     then `evaluate --returned <first return> <second return>`: one curve over both calls.

  Rehearsal on the CPU at 16 px (the same code paths; only the device, resolution, time box, tick length and the
  number of evaluated images differ):
        nice -n 19 python bench/demo64_gpu.py prepare --res 16
        nice -n 19 python bench/demo64_gpu.py train --device cpu --res 16 --box 75 --budget 240 --out demo64/rehearsal16
        nice -n 19 python bench/demo64_gpu.py evaluate --returned demo64/rehearsal16 --images 50 --real 100

Modes:
  prepare   the emoji at --res px as the dataset zip (`python -m engine prepare --source emoji`), packed for the trip
            as demo64/carry/emoji<res>.pixels.tar.xz (the decoded pixels, lzma: about 8.5 MB at 64 px against the
            zip's 15.9 MB, which leaves room under the call's 64 MiB for the training snapshot of a continued run);
            the evaluation's reference sets (1,000 emoji, shuffle seed 1, at --res px and at 32 px for the
            current demo); the sizes of the network files the run will make, and of what each call carries.
  train     (the GPU call) rebuilds the dataset zip from the pack, trains with `python -m engine train` time-boxed
            by `timeout --foreground -s TERM` (the trainer finishes its step and writes a last snapshot;
            --foreground sends the signal to the trainer alone, which stops its data-loader workers itself),
            then writes to --out: a
            G_ema export (float16, the demo's format) of snapshots spread evenly over the run's time in tar files
            of at most 16 MB, the final training snapshot (in parts of at most 16 MB), run.tar (log, stats,
            options, grids) and manifest.json (every file's size and SHA-256, every point's kimg and trainer time).
            At most 8 files and 62 MB in all, flat: what a remote call brings back from $OUT.
  evaluate  (CPU) checks the returned files against their manifest, reassembles the training snapshot into
            demo64/resume.pt, measures KID and FID of every export (1,000 generated images against the 1,000
            reference emoji, offline detector) with bench/convergence.py's evaluator, draws KID against kimg and
            the trainer's minutes on the GPU with bench/convergence.py's plot, and writes a markdown table for
            docs/BENCHMARKS.md. A rerun skips the points already measured.
  plan      prints the commands above and the sizes of the files they use.

The network: the `tiny` preset with twice its channels (--cbase 4096 --cmax 128: 1.26M parameters in G), batch
128; at 64 px its G_ema export is 2.6 MB and its full training snapshot 38.1 MB (three parts). Why these
settings: docs/BENCHMARKS.md, "A 64 px demo network from one GPU call".
"""

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import convergence  # noqa: E402  (bench/convergence.py: snapshot points, evaluator, plot; torch-free at import)
from engine import runs  # noqa: E402  (torch-free)

WORK = ROOT / "demo64"
# The run's settings. Everything else is the tiny preset's (z/w 64, mapping 2, no path length, lr 0.0025, ADA bgc
# target 0.6; R1 gamma 0.0002 * res^2 / batch and G_ema half-life batch * 10 / 32 kimg, NVIDIA's rules).
CFG_FLAGS = ["--cfg", "tiny", "--cbase", "4096", "--cmax", "128", "--batch", "128", "--mirror", "1"]
BATCH = 128
TOTAL_KIMG = 25000            # never reached: the time box ends the run
TICK_STEPS = {"cuda": 100, "cpu": 10}   # a tick (and a snapshot) every this many steps
BOX_S = 450                   # the trainer's whole life, its start included
BUDGET_S = 560                # the whole train mode; the remote call's time limit (timeout_s) is 600
KILL_GRACE_S = 45             # after the TERM: time to finish the step and write the snapshot, then KILL
EXPORT_RESERVE_S = 60         # kept back for exports and packing when a fallback attempt is sized
REF_IMAGES = 1000
REF_SHUFFLE_SEED = 1
BASELINE_RES = 32             # the current demo's resolution

# What a remote call brings back from $OUT (kept a little inside its limits: 8 files, 16 MiB each, 64 MiB).
MAX_FILES = 8
FILE_LIMIT = 16_000_000
TOTAL_LIMIT = 62_000_000
HARD_FILE_LIMIT = 16 * 2 ** 20
HARD_TOTAL_LIMIT = 64 * 2 ** 20
MAX_DEPTH = 2                 # folders below $OUT
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
CARRY_LIMIT = 64 * 2 ** 20    # the working tree that travels, carried files included
MAX_EXPORTS = 12

MANIFEST = "manifest.json"
RUN_TAR = "run.tar"
SNAPSHOT_BASE = "training-snapshot"
PACK_FORMAT = "demo64-pixels"


def die(message):
    """A one-line error and exit 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def say(text=""):
    print(text, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mb(n):
    return f"{n / 1e6:.1f} MB"


def data_paths(work, res):
    """The files of a work folder: the training zip, its pack, the reference emoji at res and at BASELINE_RES."""
    data = Path(work) / "data"
    return {"zip": data / f"emoji{res}.zip",
            "pack": Path(work) / "carry" / f"emoji{res}.pixels.tar.xz",
            "ref": data / f"emoji{res}-ref.zip",
            "baseline_ref": data / f"emoji{BASELINE_RES}-ref.zip"}


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ===============================================================================================================
# The dataset's trip: pixels packed with lzma, rebuilt as the same zip (same member names, same pixels) there


def pack_dataset(zip_path, pack_path):
    """Prepared dataset zip -> tar.xz of index.json (member names, shape, dataset.json, pixel digest) and the
    decoded pixels [N, H, W, C] uint8. -> bytes written."""
    import numpy as np
    from PIL import Image

    with zipfile.ZipFile(zip_path) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith(".png"))
        if not names:
            die(f"{zip_path} holds no PNG images; make it with `python -m engine prepare`")
        meta = z.read("dataset.json").decode() if "dataset.json" in z.namelist() else None
        pixels = np.stack([np.asarray(Image.open(io.BytesIO(z.read(n)))) for n in names])
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    raw = np.ascontiguousarray(pixels).tobytes()
    index = {"format": PACK_FORMAT, "version": 1, "dataset": Path(zip_path).name, "names": names,
             "shape": list(pixels.shape), "dataset_json": meta, "sha256": hashlib.sha256(raw).hexdigest()}
    pack_path = Path(pack_path)
    pack_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pack_path.with_name(pack_path.name + ".tmp")
    with tarfile.open(tmp, "w:xz", preset=6) as tar:
        for name, blob in (("index.json", json.dumps(index).encode()), ("pixels.u8", raw)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    os.replace(tmp, pack_path)
    return pack_path.stat().st_size


def unpack_dataset(pack_path, dest_dir):
    """tar.xz of pack_dataset -> the dataset zip in dest_dir, under its own name. -> its path."""
    import numpy as np
    from PIL import Image

    try:
        import lzma  # noqa: F401  (some Python builds lack it)
    except ImportError:
        die("this Python has no lzma module to open the dataset pack; carry the prepared zip instead and give it "
            "with --data demo64/data/emoji64.zip")
    try:
        with tarfile.open(pack_path, "r:xz") as tar:
            index = json.loads(tar.extractfile("index.json").read())
            raw = tar.extractfile("pixels.u8").read()
    except (OSError, tarfile.TarError, KeyError, ValueError, EOFError) as e:
        die(f"{pack_path} is not a dataset pack of this script ({type(e).__name__}: {e}); make it again with "
            f"`python bench/demo64_gpu.py prepare`")
    if index.get("format") != PACK_FORMAT or hashlib.sha256(raw).hexdigest() != index.get("sha256"):
        die(f"{pack_path}: the pixels do not match their digest (a damaged copy); make it again with prepare")
    pixels = np.frombuffer(raw, np.uint8).reshape(index["shape"])
    dest = Path(dest_dir) / index["dataset"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        for name, img in zip(index["names"], pixels):
            buf = io.BytesIO()
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
        if index.get("dataset_json") is not None:
            z.writestr(zipfile.ZipInfo("dataset.json", date_time=(1980, 1, 1, 0, 0, 0)), index["dataset_json"])
    os.replace(tmp, dest)
    return dest


# ===============================================================================================================
# What comes back: the rules of $OUT, and planning the files within them


def out_problems(folder, file_limit=HARD_FILE_LIMIT, total_limit=HARD_TOTAL_LIMIT):
    """Every way `folder` breaks the rules of what comes back from $OUT (empty: it keeps them)."""
    folder = Path(folder)
    problems, files, total = [], 0, 0
    for path in sorted(folder.rglob("*")):
        part = path.relative_to(folder)
        if not NAME_RE.match(path.name):
            problems.append(f"{part}: a name with characters other than letters, digits, '.', '_' and '-'")
        if path.is_symlink():
            problems.append(f"{part}: a link")
            continue
        if path.is_dir():
            continue
        if not path.is_file():
            problems.append(f"{part}: not a plain file")
            continue
        if len(part.parts) - 1 > MAX_DEPTH:
            problems.append(f"{part}: more than {MAX_DEPTH} folders down")
        size = path.stat().st_size
        files += 1
        total += size
        if size > file_limit:
            problems.append(f"{part}: {size} bytes, over {file_limit}")
    if files > MAX_FILES:
        problems.append(f"{files} files, over {MAX_FILES}")
    if total > total_limit:
        problems.append(f"{total} bytes in all, over {total_limit}")
    return problems


def tar_size(size, count=1):
    """Bytes of an uncompressed tar of `count` files of `size` bytes each (a 512-byte header and 512-byte blocks
    per file, two empty blocks at the end, padded to 10240-byte records)."""
    body = count * (512 + -(-size // 512) * 512) + 1024
    return -(-body // 10240) * 10240


def plan_exports(available, export_bytes, fixed_files, max_exports=MAX_EXPORTS, file_limit=FILE_LIMIT,
                 max_files=MAX_FILES):
    """How many G_ema exports of export_bytes each fit into `available` bytes and the files left over after
    fixed_files, packed into tars of at most file_limit bytes -> (exports, exports per tar)."""
    member = 512 + -(-export_bytes // 512) * 512
    per_tar = max(0, (file_limit // 10240 * 10240 - 1024) // member)
    if per_tar == 0:
        return 0, 0
    best = 0
    for n in range(1, max_exports + 1):
        tars = -(-n // per_tar)
        sizes = [tar_size(export_bytes, min(per_tar, n - i * per_tar)) for i in range(tars)]
        if fixed_files + tars > max_files or sum(sizes) > available:
            break
        best = n
    return best, per_tar


def pick_points(times, n):
    """Indices of at most n of the points at `times` (ascending), spread evenly over the time: the first and
    the last always (the untrained network and the end of the run)."""
    count = len(times)
    if n <= 0 or count == 0:
        return []
    if n >= count:
        return list(range(count))
    if n == 1:
        return [count - 1]
    chosen = {0, count - 1}
    t0, t1 = times[0], times[-1]
    for k in range(1, n - 1):
        target = t0 + (t1 - t0) * k / (n - 1)
        free = [i for i in range(count) if i not in chosen]
        chosen.add(min(free, key=lambda i: (abs(times[i] - target), i)))
    return sorted(chosen)


def split_file(path, dest_dir, base, part_bytes=FILE_LIMIT):
    """`path` as files of at most part_bytes in dest_dir: base itself when it fits, else base.partKofN.
    -> [(name, bytes)]."""
    size = Path(path).stat().st_size
    if size <= part_bytes:
        shutil.copyfile(path, Path(dest_dir) / base)
        return [(base, size)]
    count = -(-size // part_bytes)
    parts = []
    with open(path, "rb") as f:
        for k in range(1, count + 1):
            name = f"{base}.part{k}of{count}"
            blob = f.read(part_bytes)
            (Path(dest_dir) / name).write_bytes(blob)
            parts.append((name, len(blob)))
    return parts


def join_parts(folder, parts, digest, dest):
    """The parts (names in `folder`) joined into dest, checked against the whole file's SHA-256."""
    missing = [p for p in parts if not (Path(folder) / p).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for p in parts:
            blob = (Path(folder) / p).read_bytes()
            h.update(blob)
            out.write(blob)
    if h.hexdigest() != digest:
        tmp.unlink()
        return "the joined parts do not match the snapshot's SHA-256"
    os.replace(tmp, dest)
    return None


# ===============================================================================================================
# prepare


def engine_prepare(dest, res, extra=()):
    cmd = [sys.executable, "-m", "engine", "prepare", "--source", "emoji", "--dest", str(dest), "--resolution",
           str(res), "--overwrite", "--no-progress"] + list(extra)
    say("$ python " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        die(f"`python -m engine prepare` failed for {dest} (exit {proc.returncode}); see the message above")


def resolved_config(data, work):
    """The trainer's resolved config for this run's flags on `data` (`python -m engine train --dry-run`, which
    makes no folder)."""
    cmd = [sys.executable, "-m", "engine", "train", "--data", str(data), "--outdir", str(Path(work) / "dry-run"),
           "--device", "cpu", "--dry-run"] + CFG_FLAGS
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        die(f"the trainer refused this run's settings: {last}")
    return json.loads(proc.stdout)


def network_sizes(cfg):
    """(G_ema float16 export bytes, full training snapshot bytes) of the networks of a resolved config, written
    and measured (the snapshot from its parts: G, D, G_ema and Adam's two moments of G and D, in float32)."""
    import tempfile

    import torch

    from engine.checkpoint import estimate_saved_size, pack_network, save_snapshot
    from engine.nets import Discriminator, Generator

    G = Generator(**cfg["G_kwargs"])
    D = Discriminator(**cfg["D_kwargs"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.pt"
        save_snapshot(path, {"format": "stylegan-studio", "version": 1,
                             "G_ema": pack_network(G, dtype=torch.float16)})
        export = path.stat().st_size
    moments = {n: {"m": p.detach().clone(), "v": p.detach().clone()}
               for n, p in list(G.named_parameters()) + [("D." + k, v) for k, v in D.named_parameters()]}
    full = estimate_saved_size({"G": pack_network(G), "G_ema": pack_network(G), "D": pack_network(D),
                                "opt": moments}) - (1 << 20)
    return export, full, sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters())


def tracked_bytes():
    """Bytes of the files that travel with every call: tracked, and untracked but not ignored."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in filter(None, out.split(b"\0")):
        p = ROOT / os.fsdecode(name)
        if p.is_file():
            total += p.stat().st_size
    return total


def is_ignored(path):
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0


def cmd_prepare(args):
    work = Path(args.work)
    paths = data_paths(work, args.res)
    limit = ["--max-images", str(args.max_images)] if args.max_images else []
    engine_prepare(paths["zip"], args.res, limit)
    t0 = time.time()
    packed = pack_dataset(paths["zip"], paths["pack"])
    say(f"packed {rel(paths['zip'])} ({mb(paths['zip'].stat().st_size)}) as {rel(paths['pack'])} "
        f"({mb(packed)}, {time.time() - t0:.0f} s)")
    ref_flags = ["--max-images", str(args.ref_images), "--shuffle-seed", str(REF_SHUFFLE_SEED)]
    engine_prepare(paths["ref"], args.res, ref_flags)
    if args.res != BASELINE_RES and not args.no_baseline:
        # the same emoji at the current demo's resolution: today's demo measured against the same images
        engine_prepare(paths["baseline_ref"], BASELINE_RES, ref_flags)
    cfg = resolved_config(paths["zip"], work)
    export, full, g_params, d_params = network_sizes(cfg)
    say(f"network at {args.res} px: G {g_params / 1e6:.2f}M / D {d_params / 1e6:.2f}M parameters, batch "
        f"{cfg['batch_size']}, R1 gamma {cfg['r1_gamma']:g}, G_ema half-life {cfg['ema_kimg']:g} kimg; "
        f"G_ema export (float16) {mb(export)}, full training snapshot about {mb(full)}")
    tree = tracked_bytes()
    if tree is not None:
        fresh = tree + packed
        cont = fresh + full
        say(f"travels with the call: working tree {mb(tree)} + pack {mb(packed)} = {mb(fresh)}; a continued run "
            f"adds its snapshot: {mb(cont)} (limit {mb(CARRY_LIMIT)})")
        if cont > CARRY_LIMIT:
            say(f"warning: a continued run would carry {mb(cont)}, over the limit of {mb(CARRY_LIMIT)}")
    for p in (paths["pack"],):
        if not is_ignored(p):
            say(f"warning: {rel(p)} is not ignored by git: a remote call carries only ignored paths named in its "
                f"carry list")
    say()
    print_plan(args.res, work)


# ===============================================================================================================
# train


def run_trainer(cmd, env, box_s, grace_s, console):
    """The trainer under `timeout --foreground -s TERM -k grace_s box_s`, its output to the console and to
    `console` -> (exit code: 124 when the box ended it, 137 when it was killed grace_s later; wall seconds)."""
    full = ["timeout", "--foreground", "-s", "TERM", "-k", f"{grace_s:.0f}", f"{box_s:.0f}"] + cmd
    say("$ " + " ".join(full))
    t0 = time.time()
    with open(console, "a") as log:
        log.write("$ " + " ".join(full) + "\n")
        proc = subprocess.Popen(full, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
            proc.wait()
        finally:
            if proc.poll() is None:  # this script was stopped: the trainer stops too, with its snapshot
                proc.send_signal(signal.SIGTERM)
                proc.wait()
    return proc.returncode, time.time() - t0


def newest_run(outdir):
    found = sorted(p for p in Path(outdir).glob("*") if p.is_dir() and runs.RUN_RE.match(p.name))
    return found[-1] if found else None


def collect_points(run_dir):
    """[{snapshot, tick, kimg, nimg, total_sec, cpu_s, augment_p}] of the run's snapshots in order."""
    points = []
    for tick, kimg, snap, wall_s, cpu_s, stats in convergence.snapshot_points(run_dir):
        points.append({"snapshot": snap.name, "tick": tick, "kimg": round(kimg, 3), "nimg": int(round(kimg * 1000)),
                       "total_sec": round(wall_s, 2), "cpu_s": None if cpu_s is None else round(cpu_s, 2),
                       "augment_p": stats.get("Progress/augment", {}).get("mean"),
                       "sec_per_kimg": stats.get("Timing/sec_per_kimg", {}).get("mean")})
    return points


def export_name(point):
    return f"gema-{point['kimg']:010.3f}kimg.pt"


def write_run_tar(run_dir, console, dest):
    """log, stats, options, status, reals and the newest grid of the run, and the console output."""
    names = [runs.LOG_FILE, runs.STATS_FILE, runs.OPTIONS_FILE, runs.STATUS_FILE, runs.REALS, runs.FAKES_INIT]
    members = []
    if run_dir:
        members = [Path(run_dir) / n for n in names if (Path(run_dir) / n).is_file()]
        newest = runs.latest_fakes(run_dir)
        if newest is not None and newest not in members:
            members.append(newest)
    if Path(console).is_file():
        members.append(Path(console))
    with tarfile.open(dest, "w") as tar:
        for m in members:
            tar.add(m, arcname=m.name)
    return dest.stat().st_size


def gpu_facts():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cmd_train(args):
    started = time.time()
    deadline = started + args.budget
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        die(f"--out {out} is not empty: give an empty folder ($OUT is emptied before each call)")
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("timeout") is None:
        die("the `timeout` command (GNU coreutils) is not on PATH; it time-boxes the trainer")
    work = Path(args.work) / f"train{args.res}"
    if work.exists():
        shutil.rmtree(work)  # this mode's own scratch folder from an earlier rehearsal
    work.mkdir(parents=True)
    console = work / "console.log"
    pack = Path(args.pack) if args.pack else data_paths(args.work, args.res)["pack"]
    if args.data:
        if not Path(args.data).is_file():
            die(f"--data {args.data}: no such file; carry it")
    elif not pack.is_file():
        die(f"{pack} does not exist: run `python bench/demo64_gpu.py prepare --res {args.res}` first and carry it "
            f"(carry: [\"{rel(pack)}\"])")
    if args.resume and not Path(args.resume).is_file():
        die(f"--resume {args.resume}: no such file (evaluate writes demo64/resume.pt from a returned snapshot; "
            f"carry it too)")

    manifest = {"format": "demo64-return", "version": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "device": args.device, "gpu": gpu_facts() if args.device == "cuda" else None,
                "python": sys.version.split()[0], "ops": args.ops, "box_s": args.box, "budget_s": args.budget,
                "resumed_from": Path(args.resume).name if args.resume else None, "attempts": [], "points": [],
                "exports": [], "training_snapshot": None, "files": {}, "problems": [], "notes": [], "timings": {}}
    run_dir = None
    try:
        t0 = time.time()
        if args.data:
            data = Path(args.data).resolve()
        else:
            data = unpack_dataset(pack, work / "data")
            say(f"dataset {rel(data)} rebuilt from {rel(pack)} in {time.time() - t0:.1f} s")
        manifest["dataset"] = {"name": data.name, "res": args.res}
        manifest["timings"]["unpack_s"] = round(time.time() - t0, 1)

        tick_kimg = TICK_STEPS[args.device] * BATCH / 1000 if args.tick is None else args.tick
        run_flags = ["--kimg", str(TOTAL_KIMG), "--tick", f"{tick_kimg:g}", "--snap", "1", "--metrics", "none",
                   "--device", args.device, "--workers", str(args.workers), "--progress", "0"]
        if args.resume:
            flags = ["--resume", str(Path(args.resume).resolve())] + run_flags
        else:
            flags = CFG_FLAGS + ["--seed", "0"] + run_flags
        manifest["trainer_flags"] = CFG_FLAGS
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if args.ops == "ref":
            env["STUDIO_OPS"] = "ref"  # no kernel build or check: the whole box trains (see the docstring)
        attempts = [flags] + ([] if args.resume else [flags + ["--precision", "fp32"]])
        for i, attempt in enumerate(attempts):
            # the box, the grace after it and the exports all end before the budget does
            box = min(args.box, deadline - time.time() - EXPORT_RESERVE_S - args.grace)
            if box < 20:
                manifest["problems"].append(f"only {box:.0f} s left for training: not started; raise --budget")
                break
            outdir = work / f"runs{i}"
            cmd = [sys.executable, "-m", "engine", "train", "--data", str(data), "--outdir", str(outdir)] + attempt
            rc, wall = run_trainer(cmd, env, box, args.grace, console)
            run_dir = newest_run(outdir)
            status = runs.read_status(run_dir) if run_dir else None
            state = (status or {}).get("state")
            snaps = runs.list_snapshots(run_dir) if run_dir else []
            manifest["attempts"].append({"flags": attempt, "rc": rc, "state": state, "wall_s": round(wall, 1),
                                         "snapshots": len(snaps), "run": run_dir.name if run_dir else None})
            if rc == 137:  # killed: after its last snapshot (state stopped) or before it (the newest one is used)
                (manifest["notes"] if state == "stopped" else manifest["problems"]).append(
                    f"the trainer was killed {args.grace:g} s after the TERM (state {state})")
            # 124: the box ended it (it stopped with a snapshot); 137: killed after the grace; 0: it finished.
            # Only a trainer that failed by itself, early, is tried again.
            if state in ("stopped", "finished") or rc in (124, 137) or len(snaps) > 2:
                break
            remaining = deadline - time.time() - EXPORT_RESERVE_S - args.grace
            if i + 1 < len(attempts) and remaining >= args.box / 2:
                say(f"the trainer failed early (exit {rc}, state {state}); trying once more with --precision fp32 "
                    f"for {min(remaining, args.box):.0f} s")
                continue
            break
        if run_dir is None or not runs.list_snapshots(run_dir):
            raise RuntimeError("the trainer wrote no snapshot; see console.log in run.tar")
        manifest["run"] = run_dir.name
        points = collect_points(run_dir)
        manifest["points"] = points
        if not points:
            raise RuntimeError(f"no snapshot of {run_dir.name} matches a tick of its stats.jsonl")

        # -- the files that come back ---------------------------------------------------------------------
        t0 = time.time()
        last = points[-1]
        snap_path = run_dir / last["snapshot"]
        parts = split_file(snap_path, out, SNAPSHOT_BASE + ".pt")
        manifest["training_snapshot"] = {"snapshot": last["snapshot"], "kimg": last["kimg"],
                                         "total_sec": last["total_sec"], "bytes": snap_path.stat().st_size,
                                         "sha256": sha256(snap_path), "parts": [n for n, _ in parts]}
        small = write_run_tar(run_dir, console, out / RUN_TAR) + 100_000  # and manifest.json, written last
        available = TOTAL_LIMIT - sum(s for _, s in parts) - small

        import torch

        from engine.export import export_network

        manifest["torch"] = torch.__version__
        if torch.cuda.is_available():
            manifest["gpu_torch"] = torch.cuda.get_device_name(0)
        nets = work / "exports"
        nets.mkdir()
        first = export_network(snap_path, nets / export_name(last), fp16=True)
        export_bytes = first.stat().st_size
        count, per_tar = plan_exports(available, export_bytes, fixed_files=len(parts) + 2,
                                      max_exports=min(args.max_exports, MAX_EXPORTS))
        chosen = pick_points([p["total_sec"] for p in points], count)
        say(f"{len(points)} snapshot(s); room for {count} G_ema export(s) ({mb(export_bytes)} each, {per_tar} per "
            f"tar); training snapshot {mb(snap_path.stat().st_size)} in {len(parts)} part(s)")
        exported = []
        for i in chosen:
            p = points[i]
            path = nets / export_name(p)
            if not path.exists():
                if time.time() > deadline - 20:
                    manifest["problems"].append(f"out of time: {p['snapshot']} and later points not exported")
                    break
                export_network(run_dir / p["snapshot"], path, fp16=True)
            exported.append((p, path))
        for k in range(0, len(exported), per_tar or 1):
            group = exported[k:k + per_tar]
            tar_name = f"exports-{k // per_tar + 1}.tar"
            with tarfile.open(out / tar_name, "w") as tar:
                for p, path in group:
                    tar.add(path, arcname=path.name)
                    manifest["exports"].append(dict(p, file=path.name, tar=tar_name, bytes=path.stat().st_size,
                                                    sha256=sha256(path)))
        manifest["timings"]["pack_s"] = round(time.time() - t0, 1)
    except Exception as e:  # whatever happened, the log and the manifest still go back
        manifest["problems"].append(f"{type(e).__name__}: {e}")
        say(f"error: {type(e).__name__}: {e}")
    finally:
        if not (out / RUN_TAR).is_file():
            write_run_tar(run_dir, console, out / RUN_TAR)
        manifest["timings"]["total_s"] = round(time.time() - started, 1)
        for f in sorted(out.iterdir()):
            manifest["files"][f.name] = {"bytes": f.stat().st_size, "sha256": sha256(f)}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        problems = out_problems(out)
        say()
        say(f"{'file':<40} {'bytes':>12}")
        for f in sorted(out.iterdir()):
            say(f"{f.name:<40} {f.stat().st_size:>12}")
        total = sum(f.stat().st_size for f in out.iterdir())
        say(f"{len(list(out.iterdir()))} files, {total} bytes; rules of $OUT: "
            + ("kept" if not problems else "BROKEN: " + "; ".join(problems)))
        for p in manifest["exports"]:
            say(f"point {p['file']}: kimg {p['kimg']:.3f}, trainer {p['total_sec'] / 60:.2f} min, "
                f"sec/kimg {p['sec_per_kimg'] or 0:.2f}, augment p {p['augment_p'] or 0:.3f}")
        say(f"train mode took {time.time() - started:.0f} s (budget {args.budget} s)")
    ok = bool(manifest["exports"]) and bool(manifest["training_snapshot"]) and not problems and not manifest["problems"]
    return 0 if ok else 1


# ===============================================================================================================
# evaluate


def read_return(folder):
    """A returned folder -> (manifest, [problems with its files])."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        die(f"{folder} has no {MANIFEST}: give the folder the train mode's files came back to")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        die(f"{path} is not valid JSON ({e})")
    problems = []
    for name, facts in manifest.get("files", {}).items():
        f = folder / name
        if not f.is_file():
            problems.append(f"{name} did not come back")
        elif f.stat().st_size != facts["bytes"] or sha256(f) != facts["sha256"]:
            problems.append(f"{name} differs from the file that was written (size or SHA-256)")
    return manifest, problems


def setting_label(manifest):
    res = manifest.get("dataset", {}).get("res", 64)
    return f"emoji{res} " + " ".join(manifest.get("trainer_flags", [])).replace("--", "")


def cfg_of(manifest):
    flags = manifest.get("trainer_flags", [])
    return flags[flags.index("--cfg") + 1] if "--cfg" in flags[:-1] else "auto"


def flags_of(manifest):
    """The trainer flags besides --cfg (bench/convergence.py's records keep them so)."""
    flags = list(manifest.get("trainer_flags", []))
    if "--cfg" in flags[:-1]:
        i = flags.index("--cfg")
        del flags[i:i + 2]
    return flags


def run_tag(manifest):
    """'' for the real thing (a GPU run at 64 px), else '-<device><res>' (a rehearsal): its evaluation and rebuilt
    snapshot get their own names and never replace the real ones."""
    device, res = manifest.get("device", "cuda"), manifest.get("dataset", {}).get("res", 64)
    return "" if (device, res) == ("cuda", 64) else f"-{device}{res}"


def cmd_evaluate(args):
    work = Path(args.work)
    returns = []
    for folder in args.returned:
        manifest, problems = read_return(folder)
        for p in problems + manifest.get("problems", []):
            say(f"warning: {folder}: {p}")
        returns.append((Path(folder), manifest, problems))
    returns.sort(key=lambda r: (r[1].get("training_snapshot") or {}).get("kimg", 0))
    tags = {run_tag(m) for _, m, _ in returns}
    if len(tags) > 1:
        die("the returned folders come from different devices or resolutions; evaluate them separately")
    tag = tags.pop()
    ev = work / f"eval{tag}"
    nets = ev / "nets"
    grids = ev / "grids"
    for d in (nets, grids):
        d.mkdir(parents=True, exist_ok=True)
    resume_out = Path(args.resume_out) if args.resume_out else work / f"resume{tag}.pt"

    # the newest training snapshot, joined again: where the next GPU call continues from
    folder, manifest, _ = returns[-1]
    snap = manifest.get("training_snapshot")
    rebuilt = False
    if snap:
        why = join_parts(folder, snap["parts"], snap["sha256"], resume_out)
        rebuilt = why is None
        if why:
            say(f"warning: the training snapshot at kimg {snap['kimg']} cannot be rebuilt ({why}); this return "
                f"cannot be continued")
        else:
            say(f"training snapshot at kimg {snap['kimg']} rebuilt as {rel(resume_out)} (SHA-256 checked)")

    points = []
    for folder, manifest, _ in returns:
        tars = sorted({p["tar"] for p in manifest.get("exports", [])})
        for tar_name in tars:
            if not (folder / tar_name).is_file():
                continue
            with tarfile.open(folder / tar_name) as tar:
                for m in tar.getmembers():
                    if m.isfile() and NAME_RE.match(m.name):  # plain files with plain names, nothing else
                        if hasattr(tarfile, "data_filter"):
                            tar.extract(m, nets, filter="data")
                        else:
                            tar.extract(m, nets)
        for p in manifest.get("exports", []):
            path = nets / p["file"]
            if path.is_file() and sha256(path) == p["sha256"]:
                points.append((manifest, p, path))
            else:
                say(f"warning: export {p['file']} is missing or damaged; its point is left out")
    if not points:
        die("no export came back intact: nothing to evaluate")
    res = returns[-1][1].get("dataset", {}).get("res", 64)
    ref = Path(args.ref) if args.ref else data_paths(work, res)["ref"]
    if not ref.is_file():
        die(f"reference set {ref} does not exist: run `python bench/demo64_gpu.py prepare --res {res}` first")

    import platform

    import torch

    from engine.checkpoint import load_network

    setting = setting_label(returns[0][1])
    asked = [args.images, args.real, args.detector, ref.name]
    known = {r.get("snapshot"): r for r in convergence.read_jsonl(ev / convergence.CURVE)
             if r.get("setting") == setting and r.get("asked") == asked}
    evaluator = None
    records = []
    # the newest point first: if the evaluation is stopped, the network that matters most is measured
    for manifest, p, path in sorted(points, key=lambda t: -t[1]["nimg"]):
        if p["file"] in known:
            records.append(known[p["file"]])
            say(f"{p['file']}: measured before, KID {known[p['file']]['kid']:.4f}")
            continue
        if evaluator is None:
            evaluator = convergence.Evaluator(ref, args.real, args.images, "cpu", detector_kind=args.detector)
        G = load_network(path, "cpu")["G_ema"]
        t0 = time.time()
        kid, fid = evaluator(G)
        grid = grids / (path.stem + ".png")
        convergence.save_grid(G, grid, 16)
        rec = {"setting": setting, "seed": 0, "point": p["tick"], "kimg": p["kimg"], "wall_s": p["total_sec"],
               "cpu_s": p["cpu_s"], "kid": kid, "fid": fid, "grid": str(grid.relative_to(ev)), "snapshot": p["file"],
               "ended": "time box", "cfg": cfg_of(manifest), "flags": flags_of(manifest),
               "data_name": manifest.get("dataset", {}).get("name"), "ref": ref.name, "num_gen": args.images,
               "num_real": evaluator.num_real, "resolution": res, "detector": evaluator.det.name,
               "eval_s": round(time.time() - t0, 1),
               "machine": manifest.get("gpu_torch") or manifest.get("gpu") or manifest.get("device"),
               "torch": manifest.get("torch"), "date": manifest.get("created", "")[:10],
               "augment_p": p.get("augment_p"), "asked": asked,
               "evaluated_on": f"{platform.machine()}, torch {torch.__version__}"}
        records.append(rec)
        say(f"{p['file']}: kimg {p['kimg']:.3f}, trainer {p['total_sec'] / 60:.2f} min, KID {kid:.4f}, FID {fid:.1f} "
            f"({rec['eval_s']:.0f} s)")
        convergence.write_records(ev, setting, 0, sorted(records, key=lambda r: r["kimg"]))
    records.sort(key=lambda r: r["kimg"])
    convergence.write_records(ev, setting, 0, records)
    where = "the GPU" if returns[-1][1].get("device") == "cuda" else "the CPU"
    title = (f"emoji {res} px on {records[-1]['machine']}: KID of {records[0]['num_gen']} generated vs "
             f"{records[0]['num_real']} real; wall-clock = the trainer's clock on {where}")
    convergence.plot(records, ev / "curve.png", title=title)

    baseline = None
    if args.baseline:
        bref = (Path(args.baseline_ref) if args.baseline_ref
                else data_paths(work, BASELINE_RES)["baseline_ref"])
        if not bref.is_file():
            die(f"baseline reference set {bref} does not exist: run prepare (it makes it) or give --baseline-ref")
        asked_b = [args.images, args.real, args.detector, bref.name, sha256(args.baseline)]
        try:
            baseline = json.loads((ev / "baseline.json").read_text())
        except (OSError, ValueError):
            baseline = None
        if not baseline or baseline.get("asked") != asked_b:
            bev = convergence.Evaluator(bref, args.real, args.images, "cpu", detector_kind=args.detector)
            kid, fid = bev(load_network(args.baseline, "cpu")["G_ema"])
            baseline = {"network": rel(args.baseline), "kid": kid, "fid": fid, "ref": bref.name,
                        "num_real": bev.num_real, "asked": asked_b}
            (ev / "baseline.json").write_text(json.dumps(baseline) + "\n")
        say(f"baseline {rel(args.baseline)}: KID {baseline['kid']:.4f}, FID {baseline['fid']:.1f} against {bref.name}")

    table = markdown_table(records, baseline)
    (ev / "table.md").write_text(table + "\n")
    say()
    say(table)
    best = min(records, key=lambda r: r["kid"])
    say()
    say(f"wrote {rel(ev / convergence.CURVE)}, {rel(ev / 'curve.png')}, {rel(ev / 'table.md')}, grids in "
        f"{rel(grids)}")
    say(f"best: {best['snapshot']} (KID {best['kid']:.4f} at kimg {best['kimg']:.1f}); as the demo network: "
        f"cp {rel(nets / best['snapshot'])} assets/demo-network.pt")
    if rebuilt:
        last = returns[-1][1]
        pack = data_paths(work, res)["pack"]
        switch = "" if not tag else f" --device {last.get('device')} --res {res}"
        say(f"to continue the run from kimg {snap['kimg']}: command 'PYTHONUNBUFFERED=1 python3 bench/demo64_gpu.py "
            f"train --out \"$OUT\"{switch} --resume {rel(resume_out)}', carry [\"{rel(pack)}\", "
            f"\"{rel(resume_out)}\"], timeout_s 600")
        tree = tracked_bytes()
        if tree is not None and pack.is_file():
            carried = tree + pack.stat().st_size + resume_out.stat().st_size
            say(f"that call carries {mb(carried)} with the working tree (limit {mb(CARRY_LIMIT)})"
                + ("" if carried <= CARRY_LIMIT else ": OVER THE LIMIT"))
    return 0


def markdown_table(records, baseline=None):
    r0 = records[0]
    lines = [f"KID and FID of {r0['num_gen']:,} generated images against {r0['num_real']:,} real emoji at "
             f"{r0['resolution']} px ({r0['ref']}), detector {r0['detector']}; trainer minutes from "
             f"stats.jsonl `Timing/total_sec`; trained on {r0['machine']} (torch {r0.get('torch')}).", "",
             "| trainer minutes | kimg | KID | FID | ADA p | network |", "|---|---|---|---|---|---|"]
    for r in records:
        p = r.get("augment_p")
        lines.append(f"| {r['wall_s'] / 60:.2f} | {r['kimg']:.1f} | {r['kid']:.4f} | {r['fid']:.1f} | "
                     f"{'-' if p is None else f'{p:.3f}'} | {r['snapshot']} |")
    if baseline:
        lines.append(f"| today's demo ({BASELINE_RES} px, CPU) | | {baseline['kid']:.4f} | {baseline['fid']:.1f} | | "
                     f"{baseline['network']} (vs {baseline['num_real']:,} of the same emoji at {BASELINE_RES} px) |")
    return "\n".join(lines)


# ===============================================================================================================
# plan


def print_plan(res=64, work=WORK):
    paths = data_paths(work, res)
    pack = rel(paths["pack"])
    resume = rel(Path(work) / "resume.pt")

    def size(p):
        return f" ({mb(Path(p).stat().st_size)})" if Path(p).is_file() else " (not made yet)"

    say("CPU, before:")
    say(f"  nice -n 19 python bench/demo64_gpu.py prepare{'' if res == 64 else f' --res {res}'}")
    say("GPU, one remote call:")
    at = "" if res == 64 else f" --res {res}"
    say(f"  command:   PYTHONUNBUFFERED=1 python3 bench/demo64_gpu.py train --out \"$OUT\"{at}")
    say(f"  carry:     [\"{pack}\"]{size(paths['pack'])}")
    say("  timeout_s: 600")
    say("CPU, after (FILES = the folder the files came back to):")
    say("  nice -n 19 python bench/demo64_gpu.py evaluate --returned FILES --baseline assets/demo-network.pt")
    say("Continuing that run later on a GPU:")
    say(f"  command:   PYTHONUNBUFFERED=1 python3 bench/demo64_gpu.py train --out \"$OUT\"{at} --resume {resume}")
    say(f"  carry:     [\"{pack}\", \"{resume}\"]{size(Path(work) / 'resume.pt')}")
    say("  timeout_s: 600")
    say("  then: evaluate --returned FILES_1 FILES_2 (one curve over both calls)")


def cmd_plan(args):
    print_plan(args.res, Path(args.work))
    return 0


# ===============================================================================================================


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)

    p = sub.add_parser("prepare", help="CPU: the dataset pack, the reference sets, the sizes")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--work", default=str(WORK), help="work folder (default demo64/, ignored by git)")
    p.add_argument("--max-images", type=int, help="only this many emoji in the training set (tests)")
    p.add_argument("--ref-images", type=int, default=REF_IMAGES, help="reference emoji for the metrics (1000)")
    p.add_argument("--no-baseline", action="store_true", help=f"skip the {BASELINE_RES} px reference set")

    t = sub.add_parser("train", help="GPU: train in a time box, write the files that come back to --out")
    t.add_argument("--out", default=os.environ.get("OUT"), help="empty folder for what comes back (default $OUT)")
    t.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    t.add_argument("--res", type=int, default=64, help="which pack to train on (prepare --res)")
    t.add_argument("--work", default=str(WORK))
    t.add_argument("--pack", help="dataset pack (default WORK/carry/emoji<res>.pixels.tar.xz)")
    t.add_argument("--data", help="train on this prepared zip instead (WORK/data/emoji<res>.zip, 15.9 MB at 64 px: "
                                  "carry it; for a Python without lzma)")
    t.add_argument("--resume", help="a returned training snapshot (evaluate's demo64/resume.pt): continue that run")
    t.add_argument("--box", type=float, default=BOX_S, help=f"seconds the trainer may run, its start included "
                                                            f"(default {BOX_S})")
    t.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole mode (default {BUDGET_S})")
    t.add_argument("--tick", type=float, help="kimg per tick and snapshot (default: 100 steps on CUDA, 10 on the CPU)")
    t.add_argument("--workers", type=int, default=3, help="data loader processes (default 3)")
    t.add_argument("--grace", type=float, default=KILL_GRACE_S,
                   help=f"seconds between the TERM and a KILL (default {KILL_GRACE_S}; longer than one step)")
    t.add_argument("--ops", default="ref", choices=["ref", "auto"],
                   help="ref (default): the plain-torch ops, no kernel build in the box; auto: the trainer builds "
                        "and checks the compiled kernels on first use, inside the box (1-3 minutes on a bare "
                        "machine)")
    t.add_argument("--max-exports", type=int, default=MAX_EXPORTS, help="at most this many G_ema exports")

    e = sub.add_parser("evaluate", help="CPU: KID/FID of every returned export, the curve, the table")
    e.add_argument("--returned", nargs="+", required=True, help="folder(s) the train mode's files came back to")
    e.add_argument("--work", default=str(WORK))
    e.add_argument("--images", type=int, default=1000, help="generated images per point (default 1000)")
    e.add_argument("--real", type=int, default=REF_IMAGES, help="reference images (default 1000)")
    e.add_argument("--ref", help="reference dataset (default WORK/data/emoji<res>-ref.zip)")
    e.add_argument("--detector", default="offline", choices=["offline", "nvidia", "auto"])
    e.add_argument("--baseline", help="also measure this network (e.g. assets/demo-network.pt) against the same "
                                      "emoji at its own resolution")
    e.add_argument("--baseline-ref", help=f"its reference set (default WORK/data/emoji{BASELINE_RES}-ref.zip)")
    e.add_argument("--resume-out", help="where the rebuilt training snapshot goes (default WORK/resume.pt; "
                                        "a rehearsal's WORK/resume-<device><res>.pt)")

    q = sub.add_parser("plan", help="print the commands")
    q.add_argument("--res", type=int, default=64)
    q.add_argument("--work", default=str(WORK))

    args = ap.parse_args(argv)
    if args.mode == "train" and not args.out:
        ap.error("train needs --out (or $OUT): the empty folder whose files come back")
    return {"prepare": cmd_prepare, "train": cmd_train, "evaluate": cmd_evaluate, "plan": cmd_plan}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
