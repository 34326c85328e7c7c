"""File-system facts that turn into one clear line for the user: free space, name lengths, disk-full errors; and
the one way files are written in place (atomic_path and the writers built on it).

A full disk shows up in many disguises (OSError ENOSPC or EDQUOT, torch's `enforce fail at inline_container`
from torch.save, a zipfile write error); every writer of big files checks the free space before it starts and
translates those failures into the same message: which folder, how much is free, how much the file needs.
"""

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from engine import compat
from engine.errors import UserError

# Linux and macOS file systems: 255 bytes per name, 4096 per path. A longer name can never be created, so it is
# refused before any file is touched instead of surfacing as a bare `[Errno 36] File name too long`.
NAME_MAX = 255
PATH_MAX = 4096

_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def format_bytes(n):
    n = float(max(0, n))
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _existing_ancestor(path):
    p = Path(path).expanduser().absolute()
    for candidate in (p, *p.parents):
        try:
            if candidate.is_dir():
                return candidate
        except OSError:
            continue
    return Path(p.anchor or "/")


def free_bytes(path):
    """Bytes free for this user on the file system that holds `path` (or its nearest existing parent folder)."""
    return shutil.disk_usage(_existing_ancestor(path)).free


def disk_full_message(path, need, what, free=None):
    folder = _existing_ancestor(path)
    if free is None:
        try:
            free = free_bytes(folder)
        except OSError:
            free = None
    has = f"{format_bytes(free)} free" if free is not None else "no free space"
    return (f"the disk is full: {folder} has {has} but {what} needs about {format_bytes(need)}; "
            f"free some space there or choose another folder")


def check_free_space(path, need, what):
    """UserError (disk full) unless the file system of `path` has at least `need` bytes free."""
    try:
        free = free_bytes(path)
    except OSError:
        return  # cannot tell (a network mount without statvfs): let the write itself decide
    if free < need:
        raise UserError(disk_full_message(path, need, what, free=free))


def is_disk_full(exc):
    """True for an exception that means the disk (or the user's quota) ran out while writing."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        # torch.save reports a failed write of its zip container this way; ENOSPC is by far the usual cause.
        return "inline_container" in text and ("write" in text.lower() or "unexpected pos" in text)
    return False


def _short(text, keep=40):
    return text if len(text) <= 2 * keep + 3 else f"{text[:keep]}...{text[-keep:]}"


def check_name_lengths(path, what):
    """UserError when `path` has a component longer than NAME_MAX bytes, or is longer than PATH_MAX bytes.

    what: how the user gave the path (e.g. '--dest', 'network file'), named in the message.
    """
    text = os.fspath(path)
    encoded = os.fsencode(text)
    for part in Path(text).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise UserError(f"{what}: the name {_short(part)!r} is {size} bytes long; file systems allow at most "
                            f"{NAME_MAX} bytes per file or folder name: choose a shorter name")
    if len(encoded) > PATH_MAX:
        raise UserError(f"{what}: the path {_short(text)!r} is {len(encoded)} bytes long; file systems allow at "
                        f"most {PATH_MAX}: choose a shorter path")


def name_too_long_message(exc, what):
    """A one-line message for an OSError ENAMETOOLONG, or None for other errors."""
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        name = _short(str(exc.filename)) if exc.filename is not None else "a path"
        return (f"{what} {name!r} is longer than the file system allows ({NAME_MAX} bytes per name, "
                f"{PATH_MAX} per path): choose a shorter name")
    return None


def disk_full_line(exc):
    """A one-line message for an OSError that means the disk is full (size unknown), or None."""
    if not is_disk_full(exc):
        return None
    where = f" while writing {_short(str(exc.filename))}" if getattr(exc, "filename", None) else ""
    return f"the disk is full{where}; free some space there or choose another folder"


# -- writing a file in place ------------------------------------------------------------------------------------


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_beside(path, suffix=".tmp"):
    """A new empty file `.<name>.<random><suffix>` in the folder of `path` (made if missing) -> its Path.

    Beside, not in /tmp: the final rename must stay within one file system. The leading dot and `.tmp` ending are
    what engine.train.runlock sweeps up after a killed writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp, path):
    """Rename the finished temporary `tmp` onto `path` in one step, with the permissions a plain open() would give
    (mkstemp makes 0600)."""
    os.chmod(tmp, 0o666 & ~_umask())
    compat.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """with atomic_path(p) as tmp: write tmp. When the block ends without error tmp replaces p in one rename, so
    a reader sees the old file or the complete new one, never half; on any error tmp goes and p is untouched."""
    tmp = temp_beside(path, suffix)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def atomic_open(path, mode="w", encoding=None, fsync=True, suffix=".tmp"):
    """with atomic_open(p, "wb") as f: write f. As atomic_path, with the file open; fsync'd before the rename so a
    power cut cannot leave the new name on empty contents."""
    if encoding is None and "b" not in mode:
        encoding = "utf-8"
    with atomic_path(path, suffix) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def write_json_atomic(path, data, indent=2, fsync=True):
    """JSON to `path` through atomic_open."""
    with atomic_open(path, "w", fsync=fsync) as f:
        json.dump(data, f, indent=indent)


def write_text_atomic(path, text, fsync=True):
    with atomic_open(path, "w", fsync=fsync) as f:
        f.write(text)


def download(url, dest, timeout, check=None):
    """Stream url into dest atomically (a reader never sees half a file); check(tmp_path) may raise to refuse what
    came. Any network or file error propagates and leaves dest as it was."""
    import urllib.request

    with atomic_path(dest, suffix=".part") as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        if check is not None:
            check(tmp)
    return Path(dest)

