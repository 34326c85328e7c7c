"""The dataset tool: any folder of pictures (or a zip, the emoji set, CIFAR-10, MNIST) -> a training dataset.

Output is NVIDIA's layout -- an uncompressed zip or a folder of `00000/img00000000.png` (1000 a sub-folder) plus
`dataset.json` = {"labels": [[name, label], ...] | null} -- so NVIDIA's training code reads what we write. Class
names from --labels folders (and CIFAR / MNIST) go under an extra key "class_names", which NVIDIA's reader ignores.

Unlike NVIDIA's tool, nothing stops the run but a problem with the options: every picture that cannot be used is
skipped and listed with its reason in a report beside the output, `<dest>.report.json` (cats.zip ->
cats.report.json, folder cats/ -> cats.report.json). It sits beside rather than inside so that a dataset holds
exactly what NVIDIA's layout defines, and so a report survives when nothing could be written.

Decoding runs in worker processes over a bounded window of chunks: the list of names is the only thing that grows
with the size of the source, so memory stays flat for 100,000 pictures.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import random
import shutil
import threading
import time
import zipfile
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from engine.data import LABEL_MODES, RESIZE_FILTERS, TRANSFORMS
from engine.data import imaging
from engine.data.imaging import Options, Skip
from engine.data.dataset import report_path
from engine.data.sources import Item, Source, open_source
from engine.errors import UserError
from engine.fsutil import (check_free_space, check_name_lengths, disk_full_message, is_disk_full, name_too_long_message,
                           temp_beside, write_text_atomic)

IMAGES_PER_FOLDER = 1000
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same source and options give a byte-identical zip
_INLINE_BELOW = 32  # fewer pictures than this are decoded in-process: starting workers would cost more


@dataclass
class PrepareResult:
    """What a prepare run did. `skipped` entries are {"path", "reason", "detail"}."""

    dest: str
    report: str
    written: int
    resolution: int
    channels: int
    label_mode: str
    class_names: list[str] | None
    skipped: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    source: str = ""

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(s["reason"] for s in self.skipped).items()))

    @property
    def images_per_s(self) -> float:
        return self.written / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def summary_line(self) -> str:
        mode = "grey" if self.channels == 1 else "RGB"
        return (
            f"written {self.written} images ({self.resolution}x{self.resolution} {mode}) to {self.dest} in "
            f"{self.elapsed_s:.1f} s; {_skip_text(self.skipped_by_reason)}; report: {self.report}"
        )


def _skip_text(by_reason: dict[str, int]) -> str:
    total = sum(by_reason.values())
    if not total:
        return "skipped 0"
    return f"skipped {total}: " + ", ".join(f"{n} {r}" for r, n in by_reason.items())


# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PrepareOptions:
    """How `prepare` turns pictures into a dataset.

    resolution (or width/height): output side, a power of two; output images are [resolution, resolution].
    transform: center-crop | center-crop-wide (needs height < width; letterboxed on pad_color) | pad | stretch.
    channels: 1 (grey) or 3 (RGB); alpha is composited on `background`.
    labels: auto (the source's own: dataset.json, CIFAR, MNIST) | folders | json | none.
    min_size: skip pictures whose used part is smaller than this (default: half the resolution).
    max_images: stop after writing this many; shuffle_seed: shuffle the order first (None keeps sorted order).
    """

    resolution: int | None = None
    width: int | None = None
    height: int | None = None
    transform: str = "center-crop"
    resize_filter: str = "lanczos"
    channels: int = 3
    background: str | tuple = "white"
    pad_color: str | tuple = "black"
    labels: str = "auto"
    dedupe: bool = False
    min_size: int | None = None
    max_images: int | None = None
    shuffle_seed: int | None = None
    overwrite: bool = False
    workers: int | None = None
    max_megapixels: float = 100.0


def prepare(source: str | os.PathLike, dest: str | os.PathLike, options: PrepareOptions | None = None, *,
            progress: Callable[[int, int], None] | None = None, show_progress: bool = False) -> PrepareResult:
    """Prepare `source` into the dataset `dest` (a path ending .zip, or a new or empty folder), as `options` say.

    progress(done, total): called as pictures are processed (at most ~10 times a second, and once at the end);
    an exception raised by it stops the run and leaves nothing behind (how the dashboard cancels).
    Raises UserError for bad options, a missing source, an existing dest without overwrite, or nothing written.
    """
    o = options or PrepareOptions()
    resolution, width, height, transform, resize_filter = o.resolution, o.width, o.height, o.transform, o.resize_filter
    channels, background, pad_color, labels, dedupe = o.channels, o.background, o.pad_color, o.labels, o.dedupe
    min_size, max_images, shuffle_seed, overwrite, workers = (o.min_size, o.max_images, o.shuffle_seed, o.overwrite,
                                                              o.workers)
    max_megapixels = o.max_megapixels
    t0 = time.monotonic()
    opts = _options(resolution, width, height, transform, resize_filter, channels, background, pad_color, min_size, max_megapixels)
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise UserError(f"--max-images {max_images!r} must be a positive whole number")
    if labels not in LABEL_MODES:
        raise UserError(f"--labels {labels!r} is not one of {', '.join(LABEL_MODES)}")
    check_name_lengths(dest, "--dest")
    check_name_lengths(report_path(dest), "--dest (its report)")
    if str(source) != "emoji":
        check_name_lengths(source, "--source")
    dest = Path(dest).expanduser()
    to_zip = _check_dest(dest, overwrite)
    src = open_source(source, labels)
    _check_not_inside(dest, src)

    items = list(src.items)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(items)
    total = len(items) if max_images is None else min(len(items), max_images)
    workers = _default_workers() if workers is None else max(1, int(workers))

    ctx = _mp_context()  # decided before the progress bar starts its monitor thread
    skipped = list(src.skipped)
    out_labels: list = []
    files: list = []
    seen: dict[bytes, str] = {}
    # Before writing: pictures shrink to PNGs of at least ~1/8 of their raw pixels; a disk that cannot hold even
    # that is refused now rather than after minutes of decoding. While writing, the measured sizes refine it.
    raw_bytes = opts.width * opts.width * opts.channels
    check_free_space(dest, total * raw_bytes // 8 + _REPORT_RESERVE, f"the dataset ({total} images)")
    writer = _ZipWriter(dest) if to_zip else _FolderWriter(dest)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="prepare", dynamic_ncols=True)
    written = processed = written_bytes = 0
    last_call = 0.0
    try:
        results = _results(items, opts, src.zip_path, workers, ctx)
        try:
            for index, res in results:
                item = items[index]
                processed += 1
                if isinstance(res, Skip):
                    skipped.append({"path": item.name, "reason": res.reason, "detail": res.detail})
                elif dedupe and res.digest in seen:
                    skipped.append({"path": item.name, "reason": imaging.DUPLICATE, "detail": f"same pixels as {seen[res.digest]}"})
                else:
                    if dedupe:
                        seen[res.digest] = item.name
                    name = f"{written // IMAGES_PER_FOLDER:05d}/img{written:08d}.png"
                    writer.write(name, res.png)
                    written_bytes += len(res.png)
                    files.append([name, item.name])
                    if src.has_labels:
                        out_labels.append([name, item.label])
                    written += 1
                    if written % _SPACE_CHECK_EVERY == 0:
                        _check_room(dest, written, written_bytes, processed, total)
                done = written if max_images is not None else processed
                if bar is not None:
                    bar.n = done
                    bar.set_postfix_str(f"skipped {len(skipped)}", refresh=False)
                    bar.update(0)
                if progress is not None and time.monotonic() - last_call > 0.1:
                    last_call = time.monotonic()
                    progress(done, total)
                if max_images is not None and written >= max_images:
                    break
        finally:
            results.close()
        if written == 0:
            writer.abort()
            _no_images(src, dest, skipped, opts, to_zip)
        doc = {"labels": out_labels if src.has_labels else None}
        if src.has_labels and src.class_names:
            doc["class_names"] = list(src.class_names)
        writer.write("dataset.json", json.dumps(doc).encode("utf-8"))
        writer.finish()
        result = PrepareResult(
            dest=str(dest), report=str(report_path(dest)), written=written, resolution=opts.width,
            channels=opts.channels, label_mode=src.label_mode,
            class_names=list(src.class_names) if src.has_labels and src.class_names else None,
            skipped=skipped, elapsed_s=time.monotonic() - t0, source=str(source),
        )
        report = _report_doc(result, src, opts, files, processed, len(items), dedupe, max_images, shuffle_seed)
        _commit_pair(writer.tmp, dest, report)
    except OSError as e:
        writer.abort()
        if is_disk_full(e):
            need = written_bytes * total // written if written else total * raw_bytes // 8
            raise UserError(disk_full_message(dest, need + _REPORT_RESERVE, f"the dataset ({total} images)")
                            + "; the previous dataset and report, if any, are unchanged") from None
        too_long = name_too_long_message(e, "--dest")
        if too_long:
            raise UserError(too_long) from None
        raise
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    if progress is not None:
        progress(total, total)
    return result


_REPORT_RESERVE = 1 << 20  # the report and dataset.json: a few hundred bytes per picture, rounded up
_SPACE_CHECK_EVERY = 64


def _check_room(dest: Path, written: int, written_bytes: int, processed: int, total: int) -> None:
    """Stop early, with the disk-full line, when the rest of the dataset will clearly not fit."""
    expected_more = (total - processed) * (written / max(processed, 1)) * (written_bytes / max(written, 1))
    check_free_space(dest, int(expected_more) + _REPORT_RESERVE,
                     f"the rest of the dataset ({total - processed} more pictures)")


def _commit_pair(tmp: Path, dest: Path, report: dict) -> None:
    """Put the finished dataset `tmp` and its report in place together: both new, or (on any failure) both old.

    The report is written in full to a temporary first (the only step that needs space); then the old pair is
    renamed aside, the new pair renamed in, and the old pair deleted. Renames within one folder need no space.
    """
    rp = report_path(dest)
    rtmp = _write_temp_report(rp, report)
    aside: list[tuple[Path, Path]] = []
    placed: list[tuple[Path, Path]] = []
    try:
        for live in (dest, rp):
            if os.path.lexists(live):
                old = live.with_name(f".{live.name}.old-{os.getpid()}")
                _remove(old)
                os.replace(live, old)
                aside.append((old, live))
        os.replace(tmp, dest)
        placed.append((dest, tmp))
        os.replace(rtmp, rp)
        placed.append((rp, rtmp))
    except BaseException:
        for live, temp in reversed(placed):  # the new files go back to their temporaries (removed by abort)
            try:
                os.replace(live, temp)
            except OSError:
                pass
        for old, live in reversed(aside):
            try:
                os.replace(old, live)
            except OSError:
                pass
        Path(rtmp).unlink(missing_ok=True)
        raise
    for old, _ in aside:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _is_pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 4 and n & (n - 1) == 0


def _color(value, flag: str) -> tuple:
    if isinstance(value, (tuple, list)):
        if len(value) >= 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value[:3]):
            return tuple(value[:3])
        raise UserError(f"{flag} {value!r} must be three numbers 0-255")
    from PIL import ImageColor

    try:
        rgb = ImageColor.getrgb(str(value))
    except ValueError:
        raise UserError(f"{flag} {value!r} is not a colour; use a name (white, black) or #rrggbb") from None
    return tuple(rgb[:3])


def _options(resolution, width, height, transform, resize_filter, channels, background, pad_color, min_size, max_megapixels) -> Options:
    for flag, v in (("--resolution", resolution), ("--width", width), ("--height", height)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise UserError(f"{flag} {v!r} must be a positive whole number")
    if resolution is not None and width is not None and resolution != width:
        raise UserError(f"--resolution {resolution} and --width {width} disagree; give one of them")
    W = resolution if resolution is not None else width
    if W is None:
        raise UserError("give --resolution (a power of two such as 64, 256 or 1024)")
    if not _is_pow2(W):
        raise UserError(f"resolution {W} is not a power of two (4, 8, 16, ... 1024); the networks need one, e.g. {_near_pow2(W)}")
    if transform not in TRANSFORMS:
        raise UserError(f"--transform {transform!r} is not one of {', '.join(TRANSFORMS)}")
    if transform == "center-crop-wide":
        if height is None or height >= W:
            raise UserError(f"--transform center-crop-wide needs --height smaller than the width {W}, e.g. --width {W} --height {W * 3 // 4}")
        H = height
    else:
        if height is not None and height != W:
            raise UserError(
                f"--height {height} differs from the width {W}: training needs square images; "
                "use --transform center-crop-wide for a wide picture letterboxed on a square"
            )
        H = W
    if resize_filter not in imaging.FILTERS:
        raise UserError(f"--resize-filter {resize_filter!r} is not one of {', '.join(RESIZE_FILTERS)}")
    if channels not in (1, 3):
        raise UserError(f"--channels {channels!r} must be 1 (grey) or 3 (RGB)")
    if min_size is None:
        min_size = W // 2
    if not isinstance(min_size, int) or min_size < 0:
        raise UserError(f"--min-size {min_size!r} must be a whole number of pixels, 0 or more")
    try:
        max_pixels = int(float(max_megapixels) * 1_000_000)
    except (TypeError, ValueError):
        raise UserError(f"--max-megapixels {max_megapixels!r} must be a number") from None
    if max_pixels < W * W:
        raise UserError(f"--max-megapixels {max_megapixels} is below one output image ({W}x{W})")
    return Options(
        width=W, height=H, transform=transform, resize_filter=resize_filter, channels=channels,
        background=_color(background, "--background"), pad_color=_color(pad_color, "--pad-color"),
        min_size=min_size, max_pixels=max_pixels,
    )


def _near_pow2(n: int) -> int:
    p = 4
    while p * 2 <= n:
        p *= 2
    return p * 2 if n - p > p * 2 - n else p


def _check_dest(dest: Path, overwrite: bool) -> bool:
    """-> True for a zip dest. Refuses to touch anything that exists unless overwrite is set."""
    to_zip = dest.suffix.lower() == ".zip"
    if to_zip:
        if dest.is_dir():
            raise UserError(f"--dest {str(dest)!r} is a folder; a .zip dest must be a file path")
        if dest.exists() and not overwrite:
            raise UserError(f"--dest {str(dest)!r} already exists; pass --overwrite to replace it or choose another name")
    else:
        if dest.exists() and not dest.is_dir():
            raise UserError(f"--dest {str(dest)!r} is a file; give a path ending .zip or a folder")
        if dest.is_dir() and any(dest.iterdir()) and not overwrite:
            raise UserError(f"--dest {str(dest)!r} is a folder that is not empty; pass --overwrite to replace it or choose another")
    return to_zip


def _check_not_inside(dest: Path, src: Source) -> None:
    if not src.root:
        return
    root = Path(src.root)
    d = dest.resolve()
    if d == root:
        raise UserError(f"--dest {str(dest)!r} is the source itself; choose another path")
    if root.is_dir() and root in d.parents:
        raise UserError(f"--dest {str(dest)!r} is inside the source folder {src.spec!r}; choose a path outside it")


def _no_images(src: Source, dest: Path, skipped: list, opts: Options, to_zip: bool):
    by_reason = dict(sorted(collections.Counter(s["reason"] for s in skipped).items()))
    rp = report_path(dest)
    where = ""
    # The report explains the failure, but never replaces the report of a dataset that is still there.
    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        _write_report(rp, {"source": src.spec, "dest": str(dest), "written": 0, "skipped_by_reason": by_reason, "skipped": skipped})
        where = f"; see {rp}"
    if not src.items and not skipped:
        raise UserError(f"no image was written: source {src.spec!r} holds no files")
    raise UserError(f"no image was written from {src.spec!r}: {_skip_text(by_reason)}{where}")


def _report_doc(result: PrepareResult, src: Source, opts: Options, files, processed, listed, dedupe, max_images, seed) -> dict:
    return {
        "source": result.source,
        "source_kind": src.kind,
        "dest": result.dest,
        "written": result.written,
        "listed": listed,
        "processed": processed,
        "skipped_by_reason": result.skipped_by_reason,
        "skipped": result.skipped,
        "resolution": opts.width,
        "channels": opts.channels,
        "labels": src.label_mode,
        "class_names": result.class_names,
        "options": {
            "transform": opts.transform, "width": opts.width, "height": opts.height, "resize_filter": opts.resize_filter,
            "background": list(opts.background), "pad_color": list(opts.pad_color), "min_size": opts.min_size,
            "max_pixels": opts.max_pixels, "dedupe": dedupe, "max_images": max_images, "shuffle_seed": seed,
        },
        "elapsed_s": round(result.elapsed_s, 3),
        "images_per_s": round(result.images_per_s, 1),
        "created": time.time(),
        "files": files,  # [output name, source name]: every written image traced to its picture
    }


def _write_temp_report(path: Path, doc: dict) -> Path:
    """The report, complete and flushed, in a temporary beside `path` -> the temporary (removed on failure)."""
    tmp = temp_beside(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=1))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_report(path: Path, doc: dict) -> None:
    write_text_atomic(path, json.dumps(doc, indent=1))


# ----------------------------------------------------------------------------------------------------------------
# Writers: everything goes to a hidden temporary beside the dest and is renamed into place at the end, so an
# interrupted run or a run that writes nothing leaves whatever was there before untouched.


class _ZipWriter:
    def __init__(self, dest: Path):
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.dest = dest
        self.tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        self.zf = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True)

    def write(self, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        self.zf.writestr(info, data)

    def finish(self) -> None:
        """Complete the temporary zip (self.tmp); _commit_pair puts it in place."""
        self.zf.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())

    def abort(self) -> None:
        try:
            self.zf.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)


class _FolderWriter:
    def __init__(self, dest: Path):
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.dest = dest
        self.tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.dirs: set[str] = set()

    def write(self, name: str, data: bytes) -> None:
        folder = name.rpartition("/")[0]
        if folder and folder not in self.dirs:
            (self.tmp / folder).mkdir(exist_ok=True)
            self.dirs.add(folder)
        (self.tmp / name).write_bytes(data)

    def finish(self) -> None:
        """Nothing left to write: the files are complete in self.tmp; _commit_pair puts the folder in place."""

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Running the decoder: in-process for a handful, else a process pool fed a bounded window of chunks in order.


def _results(items: list[Item], opts: Options, zip_path: str | None, workers: int, ctx) -> Iterator[tuple[int, object]]:
    if workers <= 1 or len(items) < _INLINE_BELOW:
        return _inline_results(items, opts, zip_path)
    return _pool_results(items, opts, zip_path, workers, ctx)


def _inline_results(items, opts, zip_path):
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS  # init_worker sets Pillow's global; the caller's process gets it back
    imaging.init_worker(opts, zip_path)
    try:
        for i, item in enumerate(items):
            yield i, imaging.process_item(item, opts)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _mp_context():
    # fork is instant and, unlike spawn/forkserver, never re-imports the caller's main script (an unguarded script
    # would start prepare again in every worker). But forking a process with other threads (the dashboard's server)
    # can copy a lock in its held state; there forkserver forks from a clean single-threaded process instead.
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield [(i, items[i]) for i in range(start, min(start + size, len(items)))]


def _pool_results(items, opts, zip_path, workers, ctx):
    chunk = max(1, min(64, len(items) // (workers * 8)))
    window = workers * 4
    todo = _chunks(items, chunk)
    retry: collections.deque = collections.deque()  # chunks re-run one item each after a worker died
    pending: collections.deque = collections.deque()

    def start():
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=imaging.init_worker, initargs=(opts, zip_path))

    ex = start()
    broken_in_row = 0  # pools that died before returning anything: a pool that cannot start at all

    def fill():
        while len(pending) < window:
            if retry:
                c = retry.popleft()
            else:
                c = next(todo, None)
                if c is None:
                    return
            try:
                fut = ex.submit(imaging.process_chunk, c)
            except BrokenProcessPool as e:  # the pool died while this chunk was queued: handled like a result
                fut = Future()
                fut.set_exception(e)
            pending.append((c, fut))

    try:
        fill()
        while pending:
            c, fut = pending.popleft()
            try:
                out = fut.result()
            except BrokenProcessPool:
                broken_in_row += 1
                if broken_in_row >= 3:
                    raise RuntimeError("the decoder processes keep dying; run again with --workers 1 to see why") from None
                # A decoder crashed hard (not an exception: a dead process). Which picture did it is unknown, so
                # every chunk in flight is re-run one picture per task; a single picture that kills its worker
                # again is the culprit and is skipped.
                ex.shutdown(wait=False, cancel_futures=True)
                ex = start()
                if len(c) == 1:
                    i, item = c[0]
                    yield i, Skip(imaging.CRASHED, "the decoder process died on this file")
                    again = []
                else:
                    again = [[x] for x in c]
                for other, _ in pending:
                    again.extend([x] for x in other)
                pending.clear()
                retry.extendleft(reversed(again))
                fill()
                continue
            broken_in_row = 0
            yield from out
            fill()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
