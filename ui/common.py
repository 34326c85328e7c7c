"""What every tab shares: the workdir and its folders, the shared-mode rules, safe names and error messages."""

from __future__ import annotations

import functools
import html
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
DEMO_NETWORK = ASSETS / "demo-network.pt"

log = logging.getLogger("studio")

# (server path, what a visitor sees instead): filled for shared dashboards so messages do not reveal the layout.
_MASKS: list[tuple[str, str]] = []


def mask_paths(text: str) -> str:
    for path, shown in _MASKS:
        text = text.replace(path, shown)
    return text


@dataclass
class Studio:
    """The dashboard's settings. `shared` means visitors may be strangers (a public link)."""

    workdir: Path
    shared: bool = False
    max_upload_mb: int = 500
    demo_network: Path = DEMO_NETWORK

    def __post_init__(self):
        self.workdir = Path(self.workdir).expanduser().resolve()
        for d in (self.datasets_dir, self.runs_dir, self.outputs_dir, self.uploads_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.shared:
            for path, shown in ((str(self.workdir), "<studio>"), (str(ROOT), "<app>")):
                if (path, shown) not in _MASKS:
                    _MASKS.append((path, shown))

    @property
    def datasets_dir(self) -> Path:
        return self.workdir / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.workdir / "runs"

    @property
    def outputs_dir(self) -> Path:
        return self.workdir / "outputs"

    @property
    def uploads_dir(self) -> Path:
        return self.workdir / "uploads"

    def inside(self, path, what: str = "file") -> Path:
        """`path` resolved, refused unless it lies inside the workdir (or is the bundled demo network)."""
        p = Path(path).expanduser().resolve()
        if p == self.demo_network.resolve():
            return p
        if p != self.workdir and self.workdir not in p.parents:
            raise UserError(f"the {what} {Path(path).name} is outside the studio folder and cannot be used")
        return p

    def new_output_dir(self, kind: str) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = self.outputs_dir / f"{stamp}-{safe_name(kind)}"
        d, i = base, 1
        while d.exists():
            d = base.with_name(f"{base.name}-{i}")
            i += 1
        d.mkdir(parents=True)
        return d

    def check_upload(self, path, what: str = "upload") -> Path:
        """An uploaded file from gradio's cache, refused when larger than --max-upload-mb."""
        p = Path(path)
        if not p.is_file():
            raise UserError(f"the {what} did not arrive; upload it again")
        size_mb = p.stat().st_size / 2**20
        if size_mb > self.max_upload_mb:
            raise UserError(f"the {what} {p.name} is {size_mb:.0f} MB; the limit is {self.max_upload_mb} MB")
        return p

    def keep_upload(self, path, folder: str, what: str = "upload") -> Path:
        """Copy an upload into <workdir>/uploads/<folder>/ under a safe name; never overwrites an earlier file."""
        src = self.check_upload(path, what)
        dest_dir = self.uploads_dir / safe_name(folder)
        dest_dir.mkdir(parents=True, exist_ok=True)
        stem, suffix = safe_name(Path(src.name).stem, "upload"), Path(src.name).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
        dest = dest_dir / f"{stem}{suffix}"
        i = 1
        while dest.exists():
            dest = dest_dir / f"{stem}-{i}{suffix}"
            i += 1
        shutil.copyfile(src, dest)
        return dest


# Names Windows keeps for devices, whatever the extension ("nul.zip" is the null device there).
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_name(text, default: str = "unnamed", max_len: int = 60) -> str:
    """A file name made from user text that every platform accepts: letters (any script), digits, '.', '_' and
    '-'; no path separators (/ or \\), drive letters, leading or trailing dots, Windows device names; never empty."""
    s = re.sub(r"[^\w.-]+", "-", str(text or "")).strip(".-_")
    s = re.sub(r"-{2,}", "-", s)[:max_len].strip(".-_")
    stem, dot, rest = s.partition(".")
    if stem.upper() in _WINDOWS_RESERVED:
        s = f"{stem}-file{dot}{rest}"
    return s or default


def friendly(fn):
    """Turn every failure of an event handler into a message on the page, never a traceback.

    UserError carries its own one-line message; anything else is logged in full on the server and shown as
    one line naming the exception.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as e:
            raise gr.Error(html.escape(mask_paths(str(e))), print_exception=False) from None
        except MemoryError:
            raise gr.Error("out of memory: try fewer seeds, a smaller batch or a smaller network",
                           print_exception=False) from None
        except Exception as e:  # the page gets one line; the terminal keeps the full story
            log.exception("error in %s", getattr(fn, "__name__", "handler"))
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            text = mask_paths(f"{type(e).__name__}: {msg}")[:400]
            raise gr.Error(html.escape(text), print_exception=False) from None

    return wrapper
