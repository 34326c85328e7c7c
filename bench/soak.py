"""Soak: the dashboard under a bounded mixed load on 127.0.0.1 while a training runs; latency, errors and memory.

Starts `python app.py` itself on a free port of 127.0.0.1 with a fresh temporary workdir, prepares a small emoji
dataset and starts a tiny training through the dashboard's own API (the Data and Train tabs), then runs --clients
visitors for --duration seconds. Each visitor is two gradio_client sessions, as an open page is:
- the page's timer: the Train tab's status (/train_watch) and health (/train_health) every 3 s;
- the person: seed grids (/generate, 8 seeds), interpolation GIFs (/video, 3 seeds x 6 frames, looped),
  live-view drags (/explore_live, 3 updates in a row) and network-list refreshes (/networks), all on the demo
  network: each once, then picked by weight (ACTIONS), with a random pause of 0-2x --think seconds between actions.
Every few seconds it samples the resident memory of the app (its process and children; the trainer apart), the
training's progress and the load average. At the end (also on Ctrl+C or SIGTERM) it stops the training through
the dashboard, shuts the app down, removes the workdir (--keep keeps it) and writes soak.json, soak.md,
samples.jsonl and app.log into --out; it prints soak.md.

Exit status 0 when every request was answered without error, the app stayed up, the training kept going and the
app's memory levelled off (growth over the second half of the load below max(--max-growth-mb,
--max-growth-pct of its size); judged on loads of at least 120 s); 1 otherwise; 130 when interrupted.

python bench/soak.py --duration 600 --clients 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from engine import runs as run_files  # noqa: E402

DEMO = "Demo: emoji (built in)"  # ui.networks.DEMO_LABEL (not imported: that would load gradio and torch here)
LABELS_AUTO = "Automatic (the source's own, if any)"
ENDPOINTS = {"grid": "/generate", "gif": "/video", "live": "/explore_live", "networks": "/networks",
             "status": "/train_watch", "health": "/train_health"}
KINDS = list(ENDPOINTS)
# The person's actions and how often each is picked; a live action is a drag of 3 updates.
ACTIONS = {"live": 4, "grid": 2, "gif": 1, "networks": 1}
LIVE_BURST = 3
POLL_SEC = 3.0  # ui.train_tab.REFRESH_SEC: the page's timer
GIF_SEEDS, GIF_FRAMES = 3, 6
GRID_SEEDS = 8
MIN_JUDGED_S = 120.0
MIB = 2 ** 20


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------------------- the app and its run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(work: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(work / "gradio-cache"))
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                                 "--workdir", str(work / "studio")], cwd=str(ROOT), env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                # A Ctrl+C in the terminal reaches the soak alone, which then stops the training
                                # through the dashboard before it closes the app.
                                start_new_session=True)
    finally:
        log.close()


def wait_for_app(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited ({proc.returncode}):\n{_tail(log_path)}")
        try:
            if httpx.get(url + "config", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"app.py did not answer in {timeout:.0f} s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def client_for(url: str, folder: Path):
    from gradio_client import Client

    folder.mkdir(parents=True, exist_ok=True)
    return Client(url, verbose=False, download_files=str(folder), analytics_enabled=False)


def train_args(dataset: str, kimg: float, batch: int, snap: int, tick: float) -> tuple:
    """The Train tab's form for a new run of the tiny preset from scratch (order of /train_start's inputs)."""
    return (dataset, "tiny", kimg, batch, None, snap, tick, "ADA (adaptive)", "bgc", None, None, False, False,
            "none", 0, "", "the preset's", "", "Scratch", None, None, 0, False)


def trainer_pids(app_pid: int) -> dict[int, psutil.Process]:
    """The training processes the app launched (`python -m engine train`), by pid."""
    out = {}
    try:
        kids = psutil.Process(app_pid).children(recursive=True)
    except psutil.Error:
        return out
    for p in kids:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "engine" in cmd and "train" in cmd:
            out[p.pid] = p
    return out


# ------------------------------------------------------------------------------------------- measuring


class Record:
    """Latencies and errors of every request, by kind (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ms = {k: [] for k in KINDS}
        self.errors = {k: 0 for k in KINDS}
        self.messages: list[dict] = []

    def add(self, kind: str, ms: float, error: str | None, t: float) -> None:
        with self.lock:
            if error is None:
                self.ms[kind].append(ms)
            else:
                self.errors[kind] += 1
                if len(self.messages) < 20:
                    self.messages.append({"kind": kind, "t_s": round(t, 1), "ms": round(ms), "error": error[:300]})


def check(kind: str, out) -> str | None:
    """What is wrong with an answer (None when it is what the page would show)."""
    def exists(x) -> bool:
        while isinstance(x, dict):
            x = x.get("value", x.get("path"))
        return isinstance(x, str) and Path(x).is_file()

    if kind == "grid":
        gallery, files = out
        if len(gallery) != GRID_SEEDS or not all(exists(g["image"]) for g in gallery):
            return f"grid: {len(gallery)} images, expected {GRID_SEEDS}"
        if len(files) != 2:
            return f"grid: {len(files)} download files, expected 2"
    elif kind == "gif":
        if not exists(out[0]):
            return f"gif: no animation in the answer ({str(out[0])[:80]})"
    elif kind == "live":
        if not exists(out[0]) or "ms" not in str(out[1]):
            return "live: no image in the answer"
    elif kind == "status":
        status = out[0].get("value") if isinstance(out[0], dict) else out[0]
        if "run-status" not in str(status):
            return f"status: no run shown ({str(status)[:80]})"
    elif kind == "networks":
        if DEMO not in json.dumps(out[0]):
            return "networks: the demo network is not offered"
    return None


class Visitor:
    """One open page: its timer (status + health polls) and a person doing the action mix."""

    def __init__(self, i, url, folder, run, deadline, stop, rec, t0, args):
        self.i, self.url, self.folder, self.run, self.deadline = i, url, folder, run, deadline
        self.stop, self.rec, self.t0, self.args = stop, rec, t0, args
        self.rng = random.Random(1000 + i)
        self.count = {"poller": 0, "person": 0}

    def _going(self, who: str) -> bool:
        return (not self.stop.is_set() and time.monotonic() < self.deadline
                and self.count[who] < self.args.max_requests)

    def call(self, client, who: str, kind: str, *inputs) -> None:
        self.count[who] += 1
        t = time.monotonic()
        error = out = None
        job = client.submit(*inputs, api_name=ENDPOINTS[kind])
        try:
            out = job.result(timeout=self.args.request_timeout)
            error = check(kind, out)
        except TimeoutError:
            job.cancel()
            error = f"no answer in {self.args.request_timeout:.0f} s"
        except Exception as e:  # the app's message as the client got it
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        self.rec.add(kind, (time.monotonic() - t) * 1000, error, t - self.t0)
        return None if error else out

    def poller(self) -> None:
        client = client_for(self.url, self.folder / f"poll{self.i}")
        try:
            # Pages are not opened in step with each other.
            self.stop.wait(random.Random(2000 + self.i).uniform(0, POLL_SEC))
            slider = slider_default(client)
            while self._going("poller"):
                t = time.monotonic()
                # The page sends the grid slider's position it shows, so it is kept from the answer before.
                out = self.call(client, "poller", "status", self.run, slider)
                if out:
                    shown = out[3].get("value", slider) if isinstance(out[3], dict) else out[3]
                    slider = slider if shown is None else shown
                self.call(client, "poller", "health", self.run)
                self.stop.wait(max(0.0, POLL_SEC - (time.monotonic() - t)))
        finally:
            client.close()

    def person(self) -> None:
        client = client_for(self.url, self.folder / f"person{self.i}")
        rng = self.rng
        try:
            # Each action once (in a random order) as someone new to the page does, then picked by weight.
            first = rng.sample(list(ACTIONS), len(ACTIONS))
            while self._going("person"):
                kind = first.pop() if first else rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
                if kind == "live":
                    seed = rng.uniform(0, 500)
                    for k in range(LIVE_BURST):
                        if not self._going("person"):
                            break
                        self.call(client, "person", "live", DEMO, round(seed + 0.1 * k, 2), 0.7, "const", None,
                                  "all", 0, 0, 0, 0, 0)
                elif kind == "grid":
                    a = rng.randrange(0, 10000)
                    self.call(client, "person", "grid", DEMO, f"{a}-{a + GRID_SEEDS - 1}", 0.7, None, "const", [])
                elif kind == "gif":
                    seeds = ",".join(str(rng.randrange(0, 10000)) for _ in range(GIF_SEEDS))
                    self.call(client, "person", "gif", DEMO, seeds, GIF_FRAMES, 12, "z", "slerp", True, "GIF", 0.7,
                              None, "const", [])
                else:
                    self.call(client, "person", "networks", DEMO)
                self.stop.wait(rng.uniform(0, 2 * self.args.think))
        finally:
            client.close()


def slider_default(client):
    """The grid slider's initial value, as the Train tab's page first sends it to /train_watch."""
    info = client.view_api(print_info=False, return_format="dict")
    params = info["named_endpoints"][ENDPOINTS["status"]]["parameters"]
    return params[1].get("parameter_default", 1)


def sample(app: psutil.Process, run_dir: Path | None, t0: float) -> dict:
    """One point of the memory curve: the app (process + children, the trainer apart), the trainer, the run."""
    s = {"t_s": round(time.monotonic() - t0, 1), "load1": round(os.getloadavg()[0], 2)}
    try:
        main_rss = app.memory_info().rss
        s["threads"] = app.num_threads()
        s["fds"] = app.num_fds()
        kids = app.children(recursive=True)
    except psutil.Error:
        s["app_alive"] = False
        return s
    s["app_alive"] = True
    other = trainer = 0
    n_kids = 0
    for p in kids:
        try:
            cmd = p.cmdline()
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        if "engine" in cmd and "train" in cmd:
            trainer += rss
        else:
            other += rss
            n_kids += 1
    s.update(app_mib=round((main_rss + other) / MIB, 1), main_mib=round(main_rss / MIB, 1),
             children=n_kids, trainer_mib=round(trainer / MIB, 1))
    if run_dir is not None:
        st = run_files.read_status(run_dir) or {}
        stats = run_files.read_stats(run_dir)
        kimg = float(st.get("kimg") or 0)
        if stats:
            k = stats[-1].get("Progress/kimg")
            kimg = max(kimg, float(k.get("mean", 0) if isinstance(k, dict) else k or 0))
        s.update(kimg=round(kimg, 3), ticks=len(stats), state=st.get("state"),
                 snapshots=len(run_files.list_snapshots(run_dir)))
    return s


class Sampler(threading.Thread):
    def __init__(self, app_pid, t0, every, path):
        super().__init__(daemon=True)
        self.app = psutil.Process(app_pid)
        self.t0, self.every, self.path = t0, every, path
        self.run_dir: Path | None = None
        self.samples: list[dict] = []
        self.phase = "setup"
        self.halt = threading.Event()

    def take(self) -> dict:
        s = dict(sample(self.app, self.run_dir, self.t0), phase=self.phase)
        self.samples.append(s)
        with open(self.path, "a") as f:
            f.write(json.dumps(s) + "\n")
        return s

    def run(self):
        while not self.halt.is_set():
            self.take()
            self.halt.wait(self.every)


# ------------------------------------------------------------------------------------------- the report


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def memory_verdict(samples: list[dict], t_start: float, t_end: float, max_mb: float, max_pct: float) -> dict:
    """RSS at the start, middle and end of the load; levelled when the second half grew less than the limit."""
    pts = [(s["t_s"], s["app_mib"]) for s in samples if "app_mib" in s and t_start <= s["t_s"] <= t_end + 1]
    out = {"samples": len(pts)}
    if len(pts) < 4:
        out.update(levelled=None, why="too few samples")
        return out
    span = t_end - t_start
    w = max(span * 0.05, 1.0)  # each point is the median over a short window, so one spike does not decide

    def at(t):
        near = [m for (x, m) in pts if abs(x - t) <= w]
        return statistics.median(near) if near else min(pts, key=lambda p: abs(p[0] - t))[1]

    start, mid, end = at(t_start + w), at(t_start + span / 2), at(t_end - w)
    last_half = [(x, m) for (x, m) in pts if x >= t_start + span / 2]
    slope = None
    if len(last_half) >= 3:
        mx = statistics.mean(x for x, _ in last_half)
        my = statistics.mean(m for _, m in last_half)
        den = sum((x - mx) ** 2 for x, _ in last_half)
        slope = sum((x - mx) * (m - my) for x, m in last_half) / den * 60 if den else 0.0
    limit = max(max_mb, mid * max_pct / 100)
    out.update(start_mib=round(start, 1), mid_mib=round(mid, 1), end_mib=round(end, 1),
               first_mib=pts[0][1], last_mib=pts[-1][1], max_mib=max(m for _, m in pts),
               growth_first_half_mib=round(mid - start, 1), growth_second_half_mib=round(end - mid, 1),
               slope_second_half_mib_per_min=None if slope is None else round(slope, 2),
               limit_mib=round(limit, 1))
    if span < MIN_JUDGED_S:
        out.update(levelled=None, why=f"a load of {span:.0f} s is too short to tell (at least {MIN_JUDGED_S:.0f} s)")
    else:
        out["levelled"] = (end - mid) <= limit
        out["why"] = (f"grew {end - mid:+.1f} MiB over the second half of the load (limit {limit:.1f} MiB)")
    return out


def build_report(args, rec: Record, samples: list[dict], t_start: float, t_end: float, extra: dict) -> dict:
    span = max(t_end - t_start, 1e-9)
    kinds = {}
    for k in KINDS:
        ms = rec.ms[k]
        kinds[k] = {"endpoint": ENDPOINTS[k], "served": len(ms), "errors": rec.errors[k],
                    "per_min": round(len(ms) / span * 60, 1),
                    **{f"p{q}_ms": None if not ms else round(pct(ms, q)) for q in (50, 90, 99)},
                    "max_ms": round(max(ms)) if ms else None}
    load = [s for s in samples if t_start <= s["t_s"] <= t_end + 1]
    loads = [s["load1"] for s in load]
    mem = memory_verdict(samples, t_start, t_end, args.max_growth_mb, args.max_growth_pct)
    trained = [s for s in load if "kimg" in s]
    training = {}
    if trained:
        a, b = trained[0], trained[-1]
        training = {"kimg_start": a["kimg"], "kimg_end": b["kimg"], "ticks_start": a["ticks"], "ticks_end": b["ticks"],
                    "snapshots_end": b["snapshots"], "state_end": b["state"],
                    "sec_per_kimg": round(span / (b["kimg"] - a["kimg"])) if b["kimg"] > a["kimg"] else None,
                    "trainer_mib_first": a.get("trainer_mib"), "trainer_mib_last": b.get("trainer_mib"),
                    "trainer_mib_max": max((s.get("trainer_mib") or 0) for s in trained)}
    threads = [s["threads"] for s in load if "threads" in s]
    fds = [s["fds"] for s in load if "fds" in s]
    return {
        "command": "python bench/soak.py " + " ".join(extra.pop("argv")),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
                    "cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "load": {"clients": args.clients, "think_s": args.think, "duration_s": round(span, 1),
                 "poll_s": POLL_SEC, "actions": ACTIONS, "live_burst": LIVE_BURST,
                 "grid_seeds": GRID_SEEDS, "gif": f"{GIF_SEEDS} seeds x {GIF_FRAMES} frames, looped, 32 px"},
        "requests": {"served": sum(v["served"] for v in kinds.values()),
                     "errors": sum(v["errors"] for v in kinds.values()),
                     "per_s": round(sum(v["served"] for v in kinds.values()) / span, 2)},
        "kinds": kinds,
        "errors_first": rec.messages,
        "memory": mem,
        "threads": {"first": threads[0], "last": threads[-1], "max": max(threads)} if threads else {},
        "fds": {"first": fds[0], "last": fds[-1], "max": max(fds)} if fds else {},
        "load_avg_1min": {"min": min(loads), "mean": round(statistics.mean(loads), 2), "max": max(loads)}
        if loads else {},
        "training": training,
        **extra,
    }


def _f(x, unit=""):
    return "—" if x is None else f"{x:g}{unit}" if isinstance(x, (int, float)) else str(x)


def markdown(r: dict, samples: list[dict], t_start: float) -> str:
    m, tr, ld, mc, la = r["memory"], r["training"], r["load"], r["machine"], r["load_avg_1min"]
    lines = [f"# Soak ({r['date']})", "", f"`{r['command']}`", "",
             f"Machine: {mc['cpus']} CPUs, {mc['memory_gib']} GiB, Python {mc['python']}; "
             f"load average (1 min) during the soak {_f(la.get('min'))}-{_f(la.get('max'))}, "
             f"mean {_f(la.get('mean'))}.",
             f"Load: {ld['clients']} visitors for {ld['duration_s']:g} s; each polls /train_watch + /train_health "
             f"every {ld['poll_s']:g} s and does actions picked by weight {ld['actions']} (live = {ld['live_burst']} "
             f"updates in a row; grid = {ld['grid_seeds']} seeds; GIF = {ld['gif']}), "
             f"pausing 0-{2 * ld['think_s']:g} s.",
             "", f"Requests: {r['requests']['served']} served ({r['requests']['per_s']:g}/s), "
                 f"{r['requests']['errors']} errors.", "",
             "| kind | endpoint | served | errors | per min | p50 ms | p90 ms | p99 ms | max ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, v in r["kinds"].items():
        lines.append(f"| {k} | `{v['endpoint']}` | {v['served']} | {v['errors']} | {v['per_min']:g} "
                     f"| {_f(v['p50_ms'])} | {_f(v['p90_ms'])} | {_f(v['p99_ms'])} | {_f(v['max_ms'])} |")
    if r["errors_first"]:
        lines += ["", "First errors:"] + [f"- {e['kind']} at {e['t_s']} s: {e['error']}" for e in r["errors_first"][:5]]
    lines += ["", f"App memory (RSS of the app and its children, the trainer apart): "
                  f"first {_f(m.get('first_mib'))} MiB, last {_f(m.get('last_mib'))} MiB, max {_f(m.get('max_mib'))} "
                  f"MiB; growth over the first half {_f(m.get('growth_first_half_mib'))} MiB, over the second half "
                  f"{_f(m.get('growth_second_half_mib'))} MiB "
                  f"(slope {_f(m.get('slope_second_half_mib_per_min'))} MiB/min). Levelled off: "
                  f"{ {True: 'yes', False: 'NO', None: 'not judged'}[m.get('levelled')] } ({m.get('why')}).",
              f"Threads {r['threads'].get('first')} -> {r['threads'].get('last')} (max {r['threads'].get('max')}), "
              f"open files {r['fds'].get('first')} -> {r['fds'].get('last')} (max {r['fds'].get('max')})."]
    if tr:
        lines.append(f"Training (tiny, 16 px): {tr['kimg_start']:g} -> {tr['kimg_end']:g} kimg during the load "
                     f"({_f(tr['sec_per_kimg'])} s/kimg), ticks {tr['ticks_start']} -> {tr['ticks_end']}, "
                     f"{tr['snapshots_end']} snapshots, state {tr['state_end']}; trainer RSS "
                     f"{_f(tr['trainer_mib_first'])} -> {_f(tr['trainer_mib_last'])} MiB "
                     f"(max {_f(tr['trainer_mib_max'])}).")
    if r.get("shutdown"):
        lines.append(f"Shutdown: {r['shutdown']}")
    lines += ["", "| min | app RSS MiB | trainer RSS MiB | kimg | load avg | threads |", "|---|---|---|---|---|---|"]
    load = [s for s in samples if s["t_s"] >= t_start and "app_mib" in s]
    step = max(1, len(load) // 12)
    for s in load[::step] + ([load[-1]] if load and (len(load) - 1) % step else []):
        lines.append(f"| {(s['t_s'] - t_start) / 60:.1f} | {s['app_mib']:g} | {s['trainer_mib']:g} | "
                     f"{_f(s.get('kimg'))} | {s['load1']:g} | {s['threads']} |")
    lines += ["", "Verdict: " + ("PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"]))]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- the soak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    p.add_argument("--clients", type=int, default=4, help="visitors, each a polling page and a person (default 4)")
    p.add_argument("--think", type=float, default=1.0, help="mean pause between a person's actions, s (default 1)")
    p.add_argument("--max-requests", type=int, default=20000, help="most requests of each session (default 20000)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between memory samples (default 5)")
    p.add_argument("--images", type=int, default=200, help="emoji in the training set (default 200)")
    p.add_argument("--request-timeout", type=float, default=180.0,
                   help="a request unanswered this long counts as an error (default 180 s)")
    p.add_argument("--max-growth-mb", type=float, default=32.0)
    p.add_argument("--max-growth-pct", type=float, default=5.0)
    p.add_argument("--out", default="out/soak", help="folder for soak.json, soak.md, samples.jsonl, app.log")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir (its path is printed)")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        p.error("--clients must be at least 1 and --duration above 0")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("samples.jsonl", "app.log", "soak.json", "soak.md"):
        (out / name).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="studio-soak-"))
    # gradio_client downloads each file through a folder of its own in the temporary directory and leaves the
    # folder behind: inside the soak's workdir they go with it.
    (work / "tmp").mkdir()
    tempfile.tempdir = str(work / "tmp")
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Also when started in the background of a script (SIGINT ignored there, and so in the app it starts).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rec = Record()
    stop = threading.Event()
    proc = sampler = setup = None
    run_name, threads = None, []
    t0 = time.monotonic()
    t_start = t_end = None
    extra = {"argv": argv if argv is not None else sys.argv[1:]}
    failures: list[str] = []
    interrupted = False
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        proc = start_app(work, port, out / "app.log")
        sampler = Sampler(proc.pid, t0, args.sample, out / "samples.jsonl")
        wait_for_app(proc, url, out / "app.log", timeout=300)
        extra["app_ready_s"] = round(time.monotonic() - t0, 1)
        sampler.start()
        print(f"app on {url} (pid {proc.pid}, workdir {work / 'studio'}) ready in {extra['app_ready_s']} s", flush=True)

        setup = client_for(url, work / "clients" / "setup")
        setup.predict("Built-in emoji set", None, "", "emoji16", 16, args.images, "center-crop", "RGB", LABELS_AUTO,
                      False, api_name="/prepare")
        run_name = setup.predict(*train_args("emoji16.zip", 1000, 8, 4, 0.064), api_name="/train_start")
        run_name = run_name.get("value") if isinstance(run_name, dict) else run_name
        sampler.run_dir = work / "studio" / "runs" / run_name
        print(f"training {run_name} started", flush=True)
        # Warm-up (not counted): the first call of each kind loads the demo network and fills the caches.
        warm = Visitor(-1, url, work / "clients", run_name, float("inf"), stop, Record(), t0, args)
        gif = (DEMO, "0,1,2", GIF_FRAMES, 12, "z", "slerp", True, "GIF", 0.7, None, "const", [])
        for kind, inputs in (("grid", (DEMO, "0-7", 0.7, None, "const", [])), ("gif", gif),
                             ("live", (DEMO, 1.5, 0.7, "const", None, "all", 0, 0, 0, 0, 0)),
                             ("networks", (DEMO,)), ("status", (run_name, slider_default(setup))),
                             ("health", (run_name,))):
            warm.call(setup, "person", kind, *inputs)
        for m in warm.rec.messages:
            rec.add(m["kind"], m["ms"], "warm-up: " + m["error"], m["t_s"])

        sampler.phase = "load"
        t_start = time.monotonic() - t0
        deadline = time.monotonic() + args.duration
        for i in range(args.clients):
            v = Visitor(i, url, work / "clients", run_name, deadline, stop, rec, t0, args)
            threads += [threading.Thread(target=v.poller, daemon=True), threading.Thread(target=v.person, daemon=True)]
        for t in threads:
            t.start()
        print(f"load: {args.clients} visitors for {args.duration:g} s", flush=True)
        next_note = time.monotonic() + 60
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=1.0)
            if proc.poll() is not None:
                failures.append(f"the app exited ({proc.returncode}) during the load")
                stop.set()
                break
            if time.monotonic() >= next_note:
                next_note += 60
                s = sampler.samples[-1] if sampler.samples else {}
                print(f"  {time.monotonic() - t0 - t_start:5.0f} s: {sum(len(x) for x in rec.ms.values())} served, "
                      f"{sum(rec.errors.values())} errors, app {s.get('app_mib')} MiB, kimg {s.get('kimg')}, "
                      f"load {s.get('load1')}", flush=True)
            if time.monotonic() > deadline + args.request_timeout + 30:
                failures.append("sessions still busy long after the end of the load")
                stop.set()
                break
        t_end = time.monotonic() - t0
        sampler.phase = "end"
        sampler.take()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping the training, then the app", flush=True)
    except Exception as e:
        failures.append(f"the soak could not run: {type(e).__name__}: {e}")
        print(failures[-1], file=sys.stderr, flush=True)
    finally:
        # The shutdown itself is not interrupted (each of its waits is bounded).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop.set()
        if t_end is None and t_start is not None:
            t_end = time.monotonic() - t0
        if sampler is not None and sampler.is_alive():
            sampler.halt.set()
            sampler.join(timeout=args.sample + 5)
        extra["shutdown"] = shutdown(proc, setup, run_name, work / "studio" / "runs")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"workdir kept: {work}", flush=True)

    if t_start is None:
        return 130 if interrupted else 1
    samples = sampler.samples if sampler else []
    report = build_report(args, rec, samples, t_start, t_end, extra)
    if report["requests"]["errors"]:
        failures.append(f"{report['requests']['errors']} requests failed")
    for k, v in report["kinds"].items():
        if not v["served"]:
            failures.append(f"no {k} request was served")
    if report["memory"].get("levelled") is False:
        failures.append("the app's memory kept growing: " + report["memory"]["why"])
    tr = report["training"]
    if tr and tr.get("state_end") not in ("running", None):
        failures.append(f"the training ended during the load (state {tr['state_end']})")
    if tr and tr["kimg_end"] <= tr["kimg_start"] and report["load"]["duration_s"] >= MIN_JUDGED_S:
        failures.append("the training made no progress during the load")
    if interrupted:
        failures.append("interrupted")
    report["passed"] = not failures
    report["failures"] = failures
    report["samples"] = samples
    (out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report, samples, t_start)
    (out / "soak.md").write_text(text)
    print(text, flush=True)
    return 130 if interrupted else 0 if not failures else 1


def wait_gone(procs, timeout: float) -> list:
    """The processes still running after up to `timeout` s. The trainer is the app's child, not ours: once it has
    exited it stays a zombie until the app reaps it, so a zombie counts as gone."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.5)


def shutdown(proc, setup, run_name, runs_dir: Path) -> str:
    """Stop the training through the dashboard (a final snapshot), then the app; force only what does not stop."""
    notes = []
    trainers = trainer_pids(proc.pid) if proc is not None and proc.poll() is None else {}
    if run_name and runs_dir.is_dir():
        st = run_files.read_status(runs_dir / run_name) or {}
        if st.get("pid") and st.get("alive"):
            try:
                trainers.setdefault(int(st["pid"]), psutil.Process(int(st["pid"])))
            except psutil.Error:
                pass
    if trainers and setup is not None and proc is not None and proc.poll() is None:
        t = time.monotonic()
        try:
            setup.submit(run_name, api_name="/train_stop").result(timeout=60)
        except Exception as e:
            notes.append(f"Stop answered {type(e).__name__}: {str(e)[:120]}")
        alive = wait_gone(trainers.values(), 300)
        state = (run_files.read_status(runs_dir / run_name) or {}).get("state")
        notes.append(f"training stopped through the dashboard in {time.monotonic() - t:.0f} s (state {state})"
                     if not alive else "the training did not stop in 300 s")
        trainers = {p.pid: p for p in alive}
    for p in trainers.values():  # only the trainers this soak started, by pid
        try:
            p.terminate()
        except psutil.Error:
            pass
    if trainers:
        alive = wait_gone(trainers.values(), 120)
        for p in alive:
            p.kill()
        notes.append(f"training sent SIGTERM{' and SIGKILL' if alive else ''}")
    if setup is not None:
        try:
            setup.close()
        except Exception:
            pass
    if proc is not None and proc.poll() is None:
        t = time.monotonic()
        kids = []
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            pass
        proc.send_signal(signal.SIGINT)  # the app's own Ctrl+C path
        try:
            proc.wait(timeout=30)
            notes.append(f"app exited {proc.returncode} on SIGINT in {time.monotonic() - t:.1f} s")
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=15)
                notes.append("app ignored SIGINT for 30 s; exited on SIGTERM")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                notes.append("app ignored SIGINT and SIGTERM; killed")
        for p in kids:
            if p.is_running():
                try:
                    p.kill()
                except psutil.Error:
                    pass
    return "; ".join(notes)


if __name__ == "__main__":
    sys.exit(main())
