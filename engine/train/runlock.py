"""One live trainer per run folder.

Two trainers continuing the same run would log every tick twice and write the same snapshots. The trainer that
starts or continues a run takes an exclusive lock on `<run>/.train.lock` (flock: the kernel drops it when the
process dies, however it dies, so a lock left by a killed trainer is simply taken over) and writes its pid and
start time into the file so that a refused trainer can say who holds the run. The lock is flock on POSIX and
msvcrt's byte lock on Windows (engine/compat.py); where the file system has neither, the pid in the file decides: a
live pid refuses, a dead one is taken over.

Holding the lock also proves that no writer of this folder is alive, so the temporary files of killed writers
(`.network-snapshot-*.pt.*.tmp` can be as large as a snapshot) are removed when the lock is taken; a trainer
starting in an outdir also clears them from the other run folders there whose trainers are gone.
"""

import json
import os
import socket
import time
from pathlib import Path

from engine import compat
from engine.errors import UserError
from engine.procs import pid_alive

LOCK_NAME = ".train.lock"
_PATIENCE_S = 2.0


def read_owner(run_dir):
    """{'pid', 'started', 'host'} written by the trainer that holds (or last held) the run, or None."""
    try:
        owner = json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _refusal(run_dir, owner):
    pid = (owner or {}).get("pid", "unknown")
    since = ""
    if isinstance((owner or {}).get("started"), (int, float)):
        since = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner['started']))}"
    host = (owner or {}).get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return UserError(f"run folder {run_dir} is in use by training process pid {pid}{where}{since}; stop that "
                     f"training (or wait for it to end) before continuing this run")


class RunLock:
    """The lock on one run folder, held until release() or the end of the process."""

    def __init__(self, run_dir, fd, removed, locked=True):
        self.run_dir = Path(run_dir)
        self.fd = fd
        self.locked = locked  # False where the file system has no lock and the pid in the file decides
        self.removed = removed  # [(name, bytes)] temporary files of dead writers that were deleted

    def release(self):
        if self.fd is None:
            return
        if self.locked:
            compat.unlock(self.fd)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def acquire(run_dir):
    """Take the run folder for this process -> RunLock; UserError naming the pid when a live trainer holds it."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot lock run folder {run_dir}: {e.strerror or e}") from None
    try:
        try:
            # Another trainer's sweep (below) holds a lock for milliseconds only: wait that out.
            locked = compat.lock(fd, timeout=_PATIENCE_S)
            if not locked:
                raise _refusal(run_dir, read_owner(run_dir))
        except compat.LockUnsupported:
            locked = False  # no lock on this file system (some network mounts): fall back to the pid
        if not locked:
            owner = read_owner(run_dir)
            pid = (owner or {}).get("pid")
            if pid and int(pid) != os.getpid() and pid_alive(pid):
                raise _refusal(run_dir, owner)
        record = json.dumps({"pid": os.getpid(), "started": time.time(), "host": socket.gethostname()})
        compat.write_at_start(fd, record.encode())
    except BaseException:
        os.close(fd)
        raise
    return RunLock(run_dir, fd, remove_stale_temporaries(run_dir), locked)


def _stale_candidates(run_dir):
    try:
        return [p for p in Path(run_dir).iterdir()
                if p.name.startswith(".") and p.name.endswith(".tmp") and p.name != LOCK_NAME]
    except OSError:
        return []


def sweep_outdir(outdir, own_run_dir=None):
    """Remove the temporaries that killed trainers left in the other run folders of `outdir` (runs that may never
    be resumed) -> [(name, bytes)]. A folder whose trainer is alive is left alone."""
    from engine.runs import run_dirs

    removed = []
    folders = run_dirs(outdir)
    own = Path(own_run_dir).resolve() if own_run_dir else None
    for folder in folders:
        if (own is not None and folder.resolve() == own) or not _stale_candidates(folder):
            continue
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            try:
                if not compat.try_lock(fd):
                    continue  # held: its trainer lives and its temporaries may be in progress
            except compat.LockUnsupported:
                pid = (read_owner(folder) or {}).get("pid")
                if pid and pid_alive(pid):
                    continue
                removed.extend(remove_stale_temporaries(folder))
                continue
            try:
                removed.extend(remove_stale_temporaries(folder))
            finally:
                compat.unlock(fd)
        finally:
            os.close(fd)
    return removed


def remove_stale_temporaries(run_dir):
    """Delete `.<name>.<random>.tmp` files of the run folder (left by writers that were killed) -> [(name, bytes)].

    Only call while holding the run's lock: then no live process is writing them.
    """
    removed = []
    for p in _stale_candidates(run_dir):
        try:
            size = p.stat().st_size
            if p.is_file():
                p.unlink()
                removed.append((p.name, size))
        except OSError:
            continue
    return removed
