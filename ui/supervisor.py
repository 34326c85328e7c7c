"""Training runs as child processes: start, watch, stop, resume, and find them again after a restart.

Each training is `python -m engine train ...` in its own process group, so it outlives the dashboard: a dashboard
that is restarted re-attaches by reading the run's status.json and checking that the pid it names is still a
training process. What the supervisor itself needs to remember (the command line, the console log, which GPU,
whether Stop was pressed) lives in small JSON records under <workdir>/.supervisor/, never in memory only.

No gradio here: the dashboard and the tests drive this module the same way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from engine import compat
from engine.errors import UserError
from engine.fsutil import write_json_atomic
from engine.train.options import flag, user_settings
from engine import runs as run_files

ROOT = Path(__file__).resolve().parents[1]


def _read_json(path: Path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data) -> None:
    write_json_atomic(path, data, indent=1)  # a reader never sees half a record


def tail(path: Path | None, lines: int = 30) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # Progress bars rewrite one line with carriage returns; keep only what the terminal would show.
    out = [ln.rsplit("\r", 1)[-1] for ln in text.rstrip("\n").split("\n")]
    return "\n".join(out[-lines:])


def is_training_process(pid: int | None, started: float | None = None) -> bool:
    """True when `pid` is a live (not zombie) `engine train` process started no later than `started` + slack.

    The command-line and start-time checks keep a recycled pid from passing as the old training.
    """
    if not pid:
        return False
    try:
        p = psutil.Process(int(pid))
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = " ".join(p.cmdline())
        if "engine" not in cmd or "train" not in cmd:
            return False
        if started is not None and p.create_time() > float(started) + 5:
            return False
        return True
    except (psutil.Error, ValueError, OSError):
        return False


def gpu_slots() -> int:
    """How many trainings may run side by side: one per CUDA device, one on a machine without."""
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:
        return 1


@dataclass
class RunView:
    """What the dashboard shows about one run folder (or a launch whose folder does not exist yet)."""

    name: str
    run_dir: Path | None
    state: str  # starting | running | stopping | stopped | finished | failed
    kimg: float = 0.0
    total_kimg: float = 0.0
    tick: int = 0
    sec_per_kimg: float | None = None
    snapshot: str | None = None
    message: str = ""
    pid: int | None = None
    started: float | None = None
    updated: float | None = None
    live: bool = False
    log_tail: str = ""
    launch: dict | None = field(default=None, repr=False)

    @property
    def eta_sec(self) -> float | None:
        if self.state not in ("running", "starting") or not self.sec_per_kimg or not self.total_kimg:
            return None
        return max(0.0, (self.total_kimg - self.kimg) * self.sec_per_kimg)


class Supervisor:
    """Starts and watches trainings whose run folders go to <workdir>/runs.

    `python` and `train_module` make the command `[python, -m, train_module, train, ...]`.
    """

    def __init__(self, workdir, python: str = sys.executable, slots: int | None = None):
        self.workdir = Path(workdir).resolve()
        self.runs_dir = self.workdir / "runs"
        self.records_dir = self.workdir / ".supervisor"
        self.python = python
        self._slots = slots
        self._procs: dict[int, subprocess.Popen] = {}
        self._guard = threading.Lock()

    @contextmanager
    def _one_launch_at_a_time(self):
        """Start and Resume look at what runs and then launch; two of them at once (a double click, two tabs, two
        dashboards on one workdir) must not both see a free GPU or a stopped run. A thread lock inside this
        process, and a lock file in .supervisor/ between processes."""
        with self._guard:
            fd = _lock_file(self.records_dir / ".launch.lock")
            try:
                yield
            finally:
                _unlock_file(fd)

    # ------------------------------------------------------------------ records
    def _records(self) -> list[dict]:
        if not self.records_dir.is_dir():
            return []
        out = []
        for p in sorted(self.records_dir.glob("launch-*.json")):
            rec = _read_json(p)
            if isinstance(rec, dict):
                rec["_path"] = str(p)
                out.append(rec)
        return out

    def _save(self, rec: dict) -> None:
        data = {k: v for k, v in rec.items() if not k.startswith("_")}
        _write_json(Path(rec["_path"]), data)

    def _alive(self, rec: dict) -> bool:
        pid = rec.get("pid")
        proc = self._procs.get(pid)
        if proc is not None:
            # Our own child: poll() is the truth (and reaps it). Its command line is not checked, since it is still
            # this process's own until exec.
            return proc.poll() is None
        return is_training_process(pid, rec.get("started"))

    def _run_dirs(self) -> list[Path]:
        return run_files.run_dirs(self.runs_dir)

    def _attach_records(self) -> dict[str, dict]:
        """{run folder name: its newest launch record}, finding the folder of launches that did not know it yet.

        A resume continues the same folder, so one folder can have several launches; the newest one speaks for it.
        """
        records = self._records()
        pending = [r for r in records if not r.get("run_dir") and not r.get("dismissed")]
        if pending:
            dirs = [(d, run_files.read_status(d) or {}) for d in self._run_dirs()]
            for r in pending:
                for d, st in dirs:
                    pid = st.get("pid")
                    same = pid == r.get("pid") or _is_descendant(pid, r.get("pid"))
                    if same and (st.get("started") or 0) >= r["started"] - 2:
                        r["run_dir"] = d.name
                        self._save(r)
                        break
        by_run: dict[str, dict] = {}
        for r in sorted(records, key=lambda r: r.get("started") or 0):
            if r.get("run_dir"):
                by_run[r["run_dir"]] = r
        # A folder made a moment ago has no status.json yet: lend it the live launch that must have made it,
        # without recording the guess.
        for r in pending:
            if r.get("run_dir") or not self._alive(r):
                continue
            for d in self._run_dirs():
                if d.name not in by_run and not run_files.has_status(d) and d.stat().st_mtime >= r["started"] - 2:
                    by_run[d.name] = r
                    break
        return by_run

    # ------------------------------------------------------------------ views
    def view(self, run_dir) -> RunView:
        run_dir = Path(run_dir)
        rec = self._attach_records().get(run_dir.name)
        return self._view_of(run_dir, rec)

    def _view_of(self, run_dir: Path | None, rec: dict | None) -> RunView:
        st = run_files.read_status(run_dir) if run_dir is not None else None
        st = st if isinstance(st, dict) else {}
        name = run_dir.name if run_dir is not None else f"(starting, pid {rec.get('pid')})"
        pid = st.get("pid") or (rec or {}).get("pid")
        started = st.get("started") or (rec or {}).get("started")
        state = st.get("state")
        live = self._alive(rec) if rec is not None else is_training_process(pid, started)
        if rec is not None and not live and st.get("pid") and st.get("pid") != rec.get("pid"):
            live = is_training_process(st.get("pid"), started)
        message = st.get("message") or ""
        log_file = run_files.log_path(run_dir) if run_dir is not None else None
        console = Path(rec["log"]) if rec and rec.get("log") else None

        if state is None:
            if live:
                state = "starting"
            elif rec is not None:
                state = "failed"
                message = _last_error(console) or "the training exited before it wrote its status"
            else:
                state = "unknown"
        elif state == "running" and not live:
            # status.json still says running, but nobody is training: the process died without saying so.
            state = "failed"
            message = _last_error(console) or _last_error(log_file) or "the training process is gone"
        if live and rec is not None and rec.get("stop_requested") and state in ("running", "starting"):
            state = "stopping"

        log_tail = tail(log_file, 40) if log_file is not None and log_file.exists() else ""
        if state == "failed" and console is not None:
            con = tail(console, 40)
            if con and con not in log_tail:
                log_tail = (log_tail + "\n" + con).strip() if log_tail else con
        elif not log_tail and console is not None:
            log_tail = tail(console, 40)

        return RunView(
            name=name,
            run_dir=run_dir,
            state=state,
            kimg=float(st.get("kimg") or 0.0),
            total_kimg=float(st.get("total_kimg") or (rec or {}).get("kimg") or 0.0),
            tick=int(st.get("tick") or 0),
            sec_per_kimg=st.get("sec_per_kimg"),
            snapshot=st.get("snapshot"),
            message=message,
            pid=pid,
            started=started,
            updated=st.get("updated"),
            live=live,
            log_tail=log_tail,
            launch=rec,
        )

    def runs(self) -> list[RunView]:
        """Every run folder, newest first, plus launches still starting (no folder yet) or that failed before one."""
        by_run = self._attach_records()
        views = [self._view_of(d, by_run.get(d.name)) for d in self._run_dirs()]
        for rec in self._records():
            if rec.get("run_dir") or rec.get("dismissed"):
                continue
            views.append(self._view_of(None, rec))
        views.sort(key=lambda v: v.started or 0, reverse=True)
        return views

    def live(self) -> list[RunView]:
        return [v for v in self.runs() if v.live]

    # ------------------------------------------------------------------ actions
    def start(self, data, cfg: str, kimg: float, options: dict | None = None, force: bool = False,
              resume: str | None = None) -> dict:
        """Launch `python -m engine train --data D --outdir <workdir>/runs --cfg C --kimg K [--flag=value ...]`.

        `options` maps flag names (without dashes) to values; None leaves a flag out, booleans become 1/0 as in
        NVIDIA's scripts. Refuses a second training on a busy GPU unless `force`.
        Returns the launch record (pid, command, console log path).
        """
        with self._one_launch_at_a_time():
            return self._start(Path(data), cfg, kimg, options, force, resume)

    def _start(self, data: Path, cfg, kimg, options, force, resume):
        if not data.exists():
            raise UserError(f"dataset not found: {data.name} — prepare one on the Data tab first")
        live = self.live()
        slots = self._slots or gpu_slots()
        busy = {int(g) for v in live for g in ((v.launch or {}).get("gpus") or [0])}
        free = [g for g in range(slots) if g not in busy]
        if not free and not force:
            names = ", ".join(v.name for v in live)
            raise UserError(f"a training is already running ({names}); stop it first or choose to run alongside")
        gpu = free[0] if free else 0

        args = [f"--data={data}", f"--outdir={self.runs_dir}", f"--cfg={cfg}", f"--kimg={_num(kimg)}"]
        for key, value in (options or {}).items():
            if value is None or value == "":
                continue
            if isinstance(value, bool):
                value = int(value)
            args.append(f"{flag(key)}={_num(value)}")
        if resume:
            args = [a for a in args if not a.startswith("--resume=")] + [f"--resume={resume}"]
        return self._launch(args, gpu, data=str(data), cfg=cfg, kimg=float(kimg), options=options or {},
                            resume=resume)

    def _launch(self, args: list[str], gpu: int, **info) -> dict:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        console = self.records_dir / f"console-{stamp}-{os.getpid()}-{len(self._records())}.log"
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if _has_cuda():
            # Pin the child to its GPU; indices count within what this process was itself allowed to see.
            visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
            env["CUDA_VISIBLE_DEVICES"] = visible[gpu] if gpu < len(visible) else str(gpu)
        cmd = [self.python, "-m", "engine", "train", *args]
        started = time.time()
        with open(console, "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            # Own process group: the training outlives a dashboard restart and a Ctrl+C in the dashboard's terminal.
            proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, **compat.detached_popen_kwargs())
        self._procs[proc.pid] = proc
        rec = {"pid": proc.pid, "started": started, "cmd": cmd, "args": args, "gpus": [gpu], "log": str(console),
               "run_dir": None, "stop_requested": None, **info}
        rec["_path"] = str(self.records_dir / f"launch-{int(started * 1000)}-{proc.pid}.json")
        self._save(rec)
        return rec

    def wait_for_run_dir(self, rec: dict, timeout: float = 60.0) -> Path | None:
        """The run folder of launch `rec` once the trainer has made it (None if it exited or timed out first)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, r in self._attach_records().items():
                if r.get("pid") == rec["pid"] and r.get("started") == rec["started"]:
                    return self.runs_dir / name
            if not self._alive(rec):
                # One last look: the folder may have appeared just before the exit.
                for name, r in self._attach_records().items():
                    if r.get("pid") == rec["pid"]:
                        return self.runs_dir / name
                return None
            time.sleep(0.2)
        return None

    def stop(self, run_dir, wait: float = 0.0) -> RunView:
        """Ask a training to stop: it finishes the step, writes a snapshot and exits. The run folder's stop file asks
        on every platform; on POSIX a SIGTERM asks too (a trainer of an older version watches no file)."""
        view = self.view(run_dir)
        if not view.live or view.state in ("stopped", "finished", "failed"):
            raise UserError(f"run {view.name} is not running (state: {view.state})")
        try:
            run_files.request_stop(run_dir)
        except OSError as e:
            raise UserError(f"cannot ask run {view.name} to stop: {e.strerror or e}") from None
        compat.ask_to_stop(view.pid)
        if view.launch is not None:
            view.launch["stop_requested"] = time.time()
            self._save(view.launch)
        if wait > 0:
            deadline = time.time() + wait
            while time.time() < deadline and self.view(run_dir).live:
                time.sleep(0.2)
        return self.view(run_dir)

    def kill(self, run_dir) -> None:
        """Stop at once, without a snapshot (for a training that does not answer SIGTERM).

        `run_dir` None kills every live launch that has no run folder yet.
        """
        views = [self.view(run_dir)] if run_dir is not None else [v for v in self.runs() if v.run_dir is None]
        for view in views:
            self._kill_view(view)

    def _kill_view(self, view: RunView) -> None:
        if view.live and view.pid:
            compat.kill_tree(view.pid)

    def resume(self, run_dir, kimg: float | None = None, force: bool = False) -> dict:
        """Start a new training that continues run `run_dir` from its newest snapshot.

        The settings and length are the ones the run was launched with; `kimg` sets another length (a finished run
        needs more). The launch record keeps the length before (`length_from`) when it changed.
        """
        with self._one_launch_at_a_time():
            return self._resume(Path(run_dir), kimg, force)

    def _resume(self, run_dir: Path, kimg, force) -> dict:
        view = self.view(run_dir)
        if view.live and view.state in ("stopped", "finished", "failed"):
            # It has said its last word and is only exiting: give it a moment.
            deadline = time.time() + 30
            while time.time() < deadline and view.live:
                time.sleep(0.2)
                view = self.view(run_dir)
        if view.live:
            raise UserError(f"run {view.name} is still running; stop it before resuming")
        if self._resuming(run_dir):
            raise UserError(f"run {run_dir.name} is being resumed already; it appears as running in a moment")
        snap = run_files.latest_snapshot(run_dir)
        if snap is None:
            raise UserError(f"run {run_dir.name} has no snapshot to resume from yet")
        rec = view.launch
        if rec is not None:
            data, cfg, options = rec["data"], rec["cfg"], dict(rec.get("options") or {})
            before = float(view.total_kimg or rec.get("kimg") or 0)
        else:
            data, cfg, options, before = settings_from_run(run_dir)
        total = float(kimg) if kimg else before
        if view.kimg and total <= view.kimg + 1e-6:
            raise UserError(f"run {run_dir.name} already reached {view.kimg:g} kimg of {total:g}; set a larger length "
                            f"to go on")
        options.pop("resume", None)
        # The run folder, not the snapshot seen now: the trainer picks the newest snapshot once it holds the run's
        # lock, so it never continues from one that another trainer has since gone past.
        launched = self._start(Path(data), cfg, total, options, force, str(run_dir))
        if before and abs(total - before) > 1e-9:
            launched["length_from"] = before
            self._save(launched)
        return launched

    def _resuming(self, run_dir: Path) -> bool:
        """Whether a live launch that has not reported its run folder yet continues `run_dir`."""
        target = run_dir.resolve()
        for rec in self._records():
            resume = rec.get("resume")
            if rec.get("run_dir") or not resume or not self._alive(rec):
                continue
            path = Path(resume).resolve()
            if target in (path, path.parent):
                return True
        return False

    def dismiss_failed_launches(self) -> None:
        """Hide launches that died before they made a run folder."""
        for rec in self._records():
            if not rec.get("run_dir") and not self._alive(rec):
                rec["dismissed"] = True
                self._save(rec)


def settings_from_run(run_dir: Path):
    """(data, cfg, options, total kimg) of a run started outside the dashboard, from training_options.json."""
    opts = run_files.read_options(run_dir) or {}
    data, cfg, total = opts.get("data"), opts.get("cfg"), opts.get("total_kimg")
    if not data or not cfg or not total:
        raise UserError(f"run {run_dir.name} has no record of its dataset and length; resume it from the command line")
    # training_options.json holds the resolved numbers; pass the ones a user sets so the run goes on unchanged.
    return data, cfg, user_settings(opts), float(total)


def _lock_file(path: Path):
    """Open and lock `path` exclusively, waiting for another holder -> the descriptor (None where the file system
    cannot lock: the thread lock still serialises this process)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not compat.lock(fd, timeout=120):
            raise UserError(f"another dashboard is launching a training in {path.parent.parent}; try again in a "
                            f"moment")
    except compat.LockUnsupported:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlock_file(fd) -> None:
    if fd is None:
        return
    compat.unlock(fd)
    os.close(fd)


def _num(v):
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _is_descendant(pid, ancestor) -> bool:
    if not pid or not ancestor:
        return False
    try:
        return any(p.pid == ancestor for p in psutil.Process(int(pid)).parents())
    except psutil.Error:
        return False


def _last_error(path: Path | None) -> str:
    """The line that says why a process failed: the last 'error:'/exception line of its console, else the last line."""
    text = tail(path, 60)
    if not text:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        s = ln.strip()
        if s.startswith("error:") or re.match(r"^[A-Za-z_.]*(Error|Exception)\b", s) or "Killed" in s:
            return s
    return lines[-1].strip() if lines else ""
