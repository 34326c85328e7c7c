"""Process plumbing of a training run: the log, status.json, stop signals, numerics and seeds.

Only rank 0 writes; the other ranks hold the same objects so that every rank runs the same code.
"""

import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from engine import runs


def configure_backends(cfg, device):
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.allow_tf32)
        torch.backends.cudnn.allow_tf32 = bool(cfg.allow_tf32)


def seed_everything(seed):
    seed = int(seed) % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Logger:
    """Lines to the console and log.txt (rank 0), and a tqdm bar over kimg when on a terminal."""

    def __init__(self, run_dir, show_progress=None, total_kimg=0):
        self.file = open(runs.log_path(run_dir), "a", buffering=1) if run_dir else None
        self.show = show_progress
        self.total_kimg = total_kimg
        self.bar = None

    def start_bar(self, kimg):
        if self.file is None:
            return
        show = self.show if self.show is not None else sys.stderr.isatty()
        if not show:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=self.total_kimg, initial=kimg, unit="kimg", dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}]")

    def advance(self, kimg):
        if self.bar is not None:
            self.bar.update(kimg)

    def close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, text):
        if self.file is None:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)
        self.file.write(text + "\n")

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


class StatusWriter:
    """status.json of the run (rank 0), and the last known position for a failure written from an except."""

    def __init__(self, cfg, env, started):
        self.cfg = cfg
        self.env = env
        self.started = started
        self.last = {}

    def update(self, state, progress, sec_per_kimg=None, snapshot=None, message=""):
        if not self.env.is_main:
            return
        self.last = dict(kimg=progress.cur_nimg / 1000, tick=progress.tick, snapshot=snapshot)
        runs.write_status(self.cfg.run_dir, state, kimg=progress.cur_nimg / 1000, total_kimg=self.cfg.total_kimg,
                          tick=progress.tick, sec_per_kimg=sec_per_kimg, snapshot=snapshot, message=message,
                          started=self.started)

    def fail(self, message):
        if not self.env.is_main or not Path(self.cfg.run_dir).is_dir():
            return
        try:
            runs.write_status(self.cfg.run_dir, "failed", kimg=self.last.get("kimg", 0.0),
                              total_kimg=self.cfg.total_kimg, tick=self.last.get("tick", 0),
                              snapshot=self.last.get("snapshot"), message=message, started=self.started)
        except OSError:
            pass


def launched_at():
    """When the training command started: the stop requests made since then are this trainer's. Workers of
    --gpus N inherit the launcher's time through the environment."""
    try:
        return float(os.environ["STUDIO_LAUNCHED_AT"])
    except (KeyError, ValueError):
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:
        return time.time()


class StopRequest:
    """SIGTERM / SIGINT, or the run folder's stop file (runs.STOP_FILE, on every platform), ask the loop to finish
    its step, write a snapshot and exit; a second SIGINT interrupts.

    The stop file is looked at no more than once a second, and only by rank 0 (`run_dir` None elsewhere): the
    ranks agree on stopping through the loop's all-reduce."""

    _LOOK_EVERY_S = 1.0

    def __init__(self, run_dir=None, since=None):
        self.run_dir = run_dir
        self.since = launched_at() if since is None else since
        self.signal = None
        self._flag = False
        self._by_file = False
        self._next_look = 0.0
        self._old = {}
        if run_dir is not None and not runs.stop_requested_since(run_dir, self.since):
            runs.clear_stop_request(run_dir)  # a request older than this trainer was meant for an earlier one

    @property
    def requested(self):
        if self._flag or self.run_dir is None:
            return self._flag
        now = time.monotonic()
        if now >= self._next_look:
            self._next_look = now + self._LOOK_EVERY_S
            if runs.stop_requested_since(self.run_dir, self.since):
                self._flag = self._by_file = True
        return self._flag

    def done(self):
        """The run stopped: a stop file it followed is removed, so it cannot stop the run's next session."""
        if self._by_file and self.run_dir is not None:
            runs.clear_stop_request(self.run_dir)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self._flag and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self._flag = True
        self.signal = signum

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def uninstall(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}
