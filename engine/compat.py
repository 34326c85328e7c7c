"""What differs between Windows and POSIX systems, in one place.

Every call that exists on one kind of system only (process groups, flock, pwrite, signal 0, SIGKILL) lives here
behind a check, so the rest of engine/ and ui/ runs the same on Linux, macOS and Windows
(tests/test_windows.py fails on such a call anywhere else).
"""

import os
import subprocess
import sys
import time

IS_WINDOWS = os.name == "nt"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None


# ---------------------------------------------------------------------------------------------------------------
# Processes


def pid_alive(pid):
    """False only when no process `pid` exists on this machine. One that exists but belongs to another user, or a
    pid that cannot be asked about, counts as alive: a lock is never taken from a live owner.

    On Windows os.kill(pid, 0) would end the process (TerminateProcess), so psutil asks there."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return True
    if IS_WINDOWS:
        try:
            import psutil

            return psutil.pid_exists(pid)
        except Exception:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def detached_popen_kwargs():
    """Popen arguments that give a child its own process group (POSIX session), so it outlives the dashboard and a
    Ctrl+C in the dashboard's terminal does not reach it."""
    if IS_WINDOWS:
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True}


def ask_to_stop(pid):
    """SIGTERM where a signal lets the process finish its step (POSIX). On Windows a signal would end it at once
    (TerminateProcess), so nothing is sent there: the trainer's stop file asks instead."""
    if IS_WINDOWS:
        return False
    import signal

    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def kill_tree(pid):
    """End process `pid` and everything it started, at once (no snapshot): the process group on POSIX (a child
    started with detached_popen_kwargs leads its own), the process tree through psutil on Windows."""
    pid = int(pid)
    if not IS_WINDOWS:
        import signal

        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError, OSError):
            pass
    try:
        import psutil

        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except Exception:
        return
    for p in procs:
        try:
            p.kill()
        except Exception:
            continue
    try:
        psutil.wait_procs(procs, timeout=10)
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------------------------
# File locks


# msvcrt's locks are mandatory: a locked byte cannot be read by others. The lock takes one byte far past what the
# lock files hold (their owner's pid), so the owner stays readable; locking past the end does not grow the file.
_MSVCRT_LOCK_OFFSET = 1 << 20


class LockUnsupported(OSError):
    """The file system offers no lock (some network mounts): callers fall back to the pid in the lock file."""


def try_lock(fd):
    """An exclusive lock on the open file `fd` without waiting -> True, or False while another holds it.
    LockUnsupported where the file system cannot lock. flock on POSIX, msvcrt's byte-range lock on Windows; both
    are dropped by the system when the holder dies, however it dies."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            raise LockUnsupported(str(e)) from None
    if msvcrt is not None:
        try:
            os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except PermissionError:
            return False
        except OSError as e:
            if getattr(e, "errno", None) in (13, 36):  # EACCES / EDEADLOCK: held by another
                return False
            raise LockUnsupported(str(e)) from None
    raise LockUnsupported("no file locking on this system")


def lock(fd, timeout=None):
    """Wait for the exclusive lock on `fd` (up to `timeout` seconds; None: as long as it takes) -> True, False on
    timeout. LockUnsupported where the file system cannot lock."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if try_lock(fd):
            return True
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def unlock(fd):
    """Release the lock taken with try_lock/lock (closing the file releases it too)."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:
            os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass


def write_at_start(fd, data: bytes):
    """Replace the content of the open file `fd` with `data` (pwrite where there is one)."""
    os.ftruncate(fd, 0)
    if hasattr(os, "pwrite"):
        os.pwrite(fd, data, 0)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)


# ---------------------------------------------------------------------------------------------------------------
# Files


def replace(src, dst, attempts=40, wait_s=0.05):
    """os.replace, which on Windows is refused while another process has `dst` open (the dashboard reading
    status.json as the trainer rewrites it): there it is tried again for up to about two seconds."""
    for i in range(attempts if IS_WINDOWS else 1):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if not IS_WINDOWS or i == attempts - 1:
                raise
            time.sleep(wait_s)


# ---------------------------------------------------------------------------------------------------------------
# Distributed training


def distributed_backend(device_type, nccl_available=None):
    """-> (backend, note or ''). NCCL between GPUs where this torch has it (Linux); gloo between CPU processes and,
    with a note, between GPUs where NCCL is missing (Windows, macOS)."""
    if device_type != "cuda":
        return "gloo", ""
    if nccl_available is None:
        try:
            import torch.distributed as dist

            nccl_available = bool(dist.is_nccl_available())
        except Exception:
            nccl_available = False
    if nccl_available:
        return "nccl", ""
    where = "Windows" if IS_WINDOWS else sys.platform
    return "gloo", (f"note: NCCL is not available in this torch ({where}); the GPUs exchange gradients over gloo, "
                    f"which is slower: on Linux, NCCL is used")
