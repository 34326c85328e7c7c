"""Reading a prepared dataset (ours or NVIDIA's; an uncompressed zip or a folder) for training.

Same rules as NVIDIA's reader, so the same dataset gives the same indices, subset and labels here and there:
every image file (sorted names) is one sample; dataset.json's "labels" are integers (-> one-hot, one column per
class) or float vectors; a subset (max_size) is a seeded shuffle of indices, kept in sorted order; x-flip mirroring
appends a mirrored copy of every sample, doubling the length.

Works with torch's DataLoader and its worker processes: a zip is opened lazily, once per process, and never
pickled with the dataset.
"""

from __future__ import annotations

import collections
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import UserError

_IMAGE_EXTS = None
MAX_SIDE = 4096  # pixels: the largest resolution a network may have
MAX_CLASSES = 100_000  # the largest label size (c_dim) a network may have
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError)


def read_record(zf: zipfile.ZipFile, name: str, archive) -> bytes:
    """The whole record `name` of the zip `zf` (a small one: dataset.json).

    zipfile asks for a record's declared size in one read: a damaged header declaring gigabytes would have them
    allocated. A record declaring more than its archive holds, or more than 16x that inflated, is a ValueError.
    """
    info = zf.getinfo(name)
    size = os.path.getsize(archive)
    if info.compress_size > size or info.file_size > 16 * size + (1 << 20):
        raise ValueError(f"its {name} record declares {info.file_size:,} bytes ({info.compress_size:,} stored) "
                         f"in an archive of {size:,}")
    return zf.read(info)


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def image_extensions() -> set[str]:
    """Every file extension Pillow can read ('.png', '.jpg', ...), as NVIDIA's reader decides what is an image."""
    global _IMAGE_EXTS
    if _IMAGE_EXTS is None:
        Image.init()
        _IMAGE_EXTS = {ext.lower() for ext in Image.registered_extensions()}
    return _IMAGE_EXTS


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_extensions()


class ImageDataset:
    """A prepared dataset: `ds[i]` -> (image uint8 [C, H, W], label float32 [label_dim]).

    path: a .zip or a folder. resolution: if given, the dataset must have it (else UserError).
    use_labels: read dataset.json's labels (otherwise label_dim is 0). max_size: keep at most this many samples,
    chosen by a shuffle seeded with random_seed. xflip: append a mirrored copy of every sample.
    """

    def __init__(self, path, resolution=None, use_labels=False, max_size=None, xflip=False, random_seed=0):
        self.path = str(path)
        p = Path(path)
        self._zip = None
        self._zip_pid = None
        if not p.exists():
            raise UserError(f"dataset {self.path!r} does not exist; prepare one with: python -m engine prepare --source ... --dest {self.path}")
        if p.is_dir():
            self._type = "dir"
            names = [
                os.path.relpath(os.path.join(root, f), p).replace(os.sep, "/")
                for root, _dirs, files in os.walk(p)
                for f in files
            ]
        elif zipfile.is_zipfile(p):
            self._type = "zip"
            try:
                names = self._zipfile().namelist()
            except _ZIP_ERRORS as e:
                raise UserError(f"dataset {self.path!r} is a damaged zip ({_short(e)}); prepare it again") from None
        else:
            raise UserError(f"dataset {self.path!r} is neither a folder nor a zip file")
        self._all_names = set(names)
        self._image_fnames = sorted(n for n in names if is_image_name(n) and not n.startswith("__MACOSX/"))
        if not self._image_fnames:
            raise UserError(f"dataset {self.path!r} holds no image files")
        self.name = p.stem if self._type == "zip" else p.name

        first = self._read_pil(self._image_fnames[0], max_side=MAX_SIDE)
        channels = 1 if first.mode in ("1", "L", "I", "F") or first.mode.startswith("I;16") else 3
        w, h = first.size
        self._raw_shape = [len(self._image_fnames), channels, h, w]
        if w != h:
            raise UserError(f"dataset {self.path!r} has {w}x{h} images; training needs square images (prepare it again)")
        if w < 4 or w & (w - 1):
            raise UserError(f"dataset {self.path!r} has {w}x{w} images; training needs a power of two (prepare it again)")
        if resolution is not None and resolution != w:
            raise UserError(f"dataset {self.path!r} is {w}x{w} but resolution {resolution} was asked for")

        self.class_names = None
        self.label_kind = None
        self._raw_labels = self._load_labels() if use_labels else None
        if self._raw_labels is None:
            self._raw_labels = np.zeros([len(self._image_fnames), 0], dtype=np.float32)
        self._label_dim = self._raw_labels.shape[1] if self._raw_labels.ndim == 2 else self._onehot_dim

        n = len(self._image_fnames)
        self._raw_idx = np.arange(n, dtype=np.int64)
        if max_size is not None and n > max_size:
            np.random.RandomState(random_seed).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    # -- files ---------------------------------------------------------------------------------------------------

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def _open(self, name: str):
        if self._type == "dir":
            return open(os.path.join(self.path, name), "rb")
        return self._zipfile().open(name, "r")

    def _read_pil(self, name: str, size=None, max_side=None) -> Image.Image:
        """The picture `name`, decoded; size (w, h) or max_side are checked from its header, before the pixels
        are allocated."""
        try:
            with self._open(name) as f:
                im = Image.open(f)
                if size is not None and im.size != tuple(size):
                    raise UserError(f"dataset {self.path!r}: {name} is {im.size[0]}x{im.size[1]}, the others "
                                    f"{size[0]}x{size[1]}; prepare the dataset again")
                if max_side is not None and max(im.size) > max_side:
                    raise UserError(f"dataset {self.path!r}: {name} is {im.size[0]}x{im.size[1]}, larger than "
                                    f"any training resolution (at most {max_side}); prepare the dataset again")
                im.load()
                return im
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
            # The zip was read fine when training started: it was cut short or replaced since.
            raise UserError(f"dataset {self.path!r} is damaged or was changed while in use ({type(e).__name__}: "
                            f"{_short(e)}, reading {name}); restore it or prepare it again, then continue the run "
                            f"with --resume latest") from None
        except (OSError, SyntaxError, ValueError, KeyError, IndexError, TypeError, struct.error,
                Image.DecompressionBombError) as e:  # what Pillow raises for a damaged picture
            raise UserError(f"dataset {self.path!r}: cannot read {name} ({_short(e)}); prepare the dataset "
                            "again") from None

    def close(self) -> None:
        if self._zip is not None:
            try:
                self._zip.close()
            finally:
                self._zip = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"] = None  # each DataLoader worker opens its own
        state["_zip_pid"] = None
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- labels --------------------------------------------------------------------------------------------------

    def _load_labels(self):
        if "dataset.json" not in self._all_names:
            return None
        try:
            if self._type == "zip":
                text = read_record(self._zipfile(), "dataset.json", self.path)
            else:
                with self._open("dataset.json") as f:
                    text = f.read()
        except (OSError, ValueError, KeyError, EOFError, zlib.error, NotImplementedError, RuntimeError,
                zipfile.BadZipFile) as e:
            raise UserError(f"dataset {self.path!r}: dataset.json cannot be read ({_short(e)}); prepare the "
                            "dataset again") from None
        try:
            doc = json.loads(text)
        except RecursionError:
            raise UserError(f"dataset {self.path!r}: dataset.json is nested too deeply to be a list of "
                            "labels") from None
        except ValueError as e:
            raise UserError(f"dataset {self.path!r}: dataset.json is not valid JSON ({_short(e)})") from None
        if not isinstance(doc, dict):
            raise UserError(f"dataset {self.path!r}: dataset.json must hold an object with 'labels'")
        raw = doc.get("labels")
        if raw is None:
            return None
        try:
            table = {str(k).replace("\\", "/"): v for k, v in raw}
        except (TypeError, ValueError):
            raise UserError(f"dataset {self.path!r}: dataset.json 'labels' must be a list of [file name, label]") from None
        missing = [n for n in self._image_fnames if n not in table]
        if missing:
            raise UserError(f"dataset {self.path!r}: dataset.json has no label for {missing[0]} (and {len(missing) - 1} more)")
        values = [table[n] for n in self._image_fnames]
        names = doc.get("class_names")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            if any(v < 0 for v in values):
                raise UserError(f"dataset {self.path!r}: dataset.json holds a negative class label")
            # Each sample's label becomes a one-hot vector of max + 1 values: a label of 10**12 would ask for
            # terabytes.
            if any(v >= MAX_CLASSES for v in values):
                raise UserError(f"dataset {self.path!r}: dataset.json holds the class label {max(values)}; class "
                                f"labels are 0..{MAX_CLASSES - 1}, one per class, counted from 0")
            ints = np.asarray(values, dtype=np.int64)
            dim = int(ints.max(initial=-1)) + 1
            if isinstance(names, list) and len(names) >= dim:
                self.class_names = [str(c) for c in names]
                dim = len(names)
            self.label_kind = "int"
            self._onehot_dim = dim
            return ints
        try:
            floats = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"dataset {self.path!r}: labels must all be integers or all be equal-length number lists") from None
        if floats.ndim != 2:
            raise UserError(f"dataset {self.path!r}: labels must all be integers or all be equal-length number lists")
        self.label_kind = "float"
        return floats

    def raw_int_labels(self) -> np.ndarray:
        """Integer class of every image file (all of them, before subset and x-flip) -> int64 [N]."""
        if self.label_kind != "int":
            raise ValueError("this dataset has no integer class labels")
        return self._raw_labels.copy()

    def get_label(self, idx: int) -> np.ndarray:
        """Label of sample idx -> float32 [label_dim] (one-hot for class labels)."""
        raw = self._raw_labels[self._raw_idx[idx]]
        if self._raw_labels.ndim == 1:
            onehot = np.zeros(self._label_dim, dtype=np.float32)
            onehot[raw] = 1
            return onehot
        return raw.astype(np.float32, copy=True)

    # -- samples -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._raw_idx.size)

    def __getitem__(self, idx: int):
        image = self._load_raw_image(int(self._raw_idx[idx]))
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return np.ascontiguousarray(image), self.get_label(idx)

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        """-> uint8 [C, H, W]."""
        name = self._image_fnames[raw_idx]
        im = self._read_pil(name, size=(self._raw_shape[3], self._raw_shape[2]))
        want = "L" if self.num_channels == 1 else "RGB"
        if im.mode != want:
            from engine.data.imaging import to_channels

            im = to_channels(im, self.num_channels)
        arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = arr.transpose(2, 0, 1)
        if list(arr.shape) != self._raw_shape[1:]:
            raise UserError(
                f"dataset {self.path!r}: {name} is {arr.shape[2]}x{arr.shape[1]}, the others "
                f"{self._raw_shape[3]}x{self._raw_shape[2]}; prepare the dataset again"
            )
        return arr

    # -- facts ---------------------------------------------------------------------------------------------------

    @property
    def image_shape(self) -> list[int]:
        return list(self._raw_shape[1:])

    @property
    def num_channels(self) -> int:
        return self._raw_shape[1]

    @property
    def resolution(self) -> int:
        return self._raw_shape[2]

    @property
    def label_shape(self) -> list[int]:
        return [self._label_dim]

    @property
    def label_dim(self) -> int:
        return self._label_dim

    @property
    def has_labels(self) -> bool:
        return self._label_dim != 0

    @property
    def has_onehot_labels(self) -> bool:
        return self.label_kind == "int" and self._label_dim != 0

    def __repr__(self) -> str:
        return f"ImageDataset({self.path!r}, {len(self)} samples, shape {self.image_shape}, label_dim {self.label_dim})"


# ----------------------------------------------------------------------------------------------------------------
# The report prepare writes beside a dataset


def report_path(dest: str | os.PathLike) -> Path:
    """Where the report of a dataset lives: beside it, cats.zip -> cats.report.json, cats/ -> cats.report.json."""
    p = Path(dest)
    if p.suffix.lower() == ".zip":
        return p.with_name(p.name[: -len(p.suffix)] + ".report.json")
    return p.with_name(p.name.rstrip("/") + ".report.json")


def read_report(dest: str | os.PathLike) -> dict | None:
    """The report of a prepared dataset, or None when there is none (NVIDIA's datasets have none)."""
    try:
        return json.loads(report_path(dest).read_text("utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# Reading back: what the dashboard shows about a prepared dataset.


def summary(path: str | os.PathLike) -> dict:
    """A prepared dataset (ours or NVIDIA's, zip or folder) -> facts for display.

    Keys: path, name, kind ('zip' | 'folder'), count, resolution, channels, label_dim, num_classes, has_labels,
    class_names (list or None), class_counts ({name: count} or None), size_bytes, report (path or None),
    skipped_by_reason ({} when there is no report).
    """
    ds = ImageDataset(path, use_labels=True)
    try:
        p = Path(path)
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        class_counts = None
        num_classes = None
        if ds.has_labels and ds.label_kind == "int":
            num_classes = ds.label_dim
            ints = ds.raw_int_labels()
            counts = collections.Counter(ints.tolist())
            names = ds.class_names or [str(c) for c in range(ds.label_dim)]
            class_counts = {names[c] if c < len(names) else str(c): counts.get(c, 0) for c in range(ds.label_dim)}
        rep = read_report(path)
        return {
            "path": str(path),
            "name": ds.name,
            "kind": "zip" if p.is_file() else "folder",
            "count": len(ds),
            "resolution": ds.resolution,
            "channels": ds.num_channels,
            "label_dim": ds.label_dim,
            "num_classes": num_classes,
            "has_labels": ds.has_labels,
            "class_names": ds.class_names,
            "class_counts": class_counts,
            "size_bytes": size,
            "report": str(report_path(path)) if rep is not None else None,
            "skipped_by_reason": (rep or {}).get("skipped_by_reason", {}),
        }
    finally:
        ds.close()


def preview_grid(path: str | os.PathLike, rows: int = 4, cols: int = 8, seed: int = 0, cell: int | None = None):
    """A grid of up to rows*cols images of a prepared dataset, picked at random with `seed` -> PIL image.

    cell: side of each tile in pixels (default: the dataset's resolution, at most 128). Grey datasets give an
    'L' image, colour ones 'RGB'.
    """
    import numpy as np
    from PIL import Image

    if rows < 1 or cols < 1:
        raise UserError(f"a preview grid needs at least one row and one column, got {rows}x{cols}")
    ds = ImageDataset(path)
    try:
        n = min(len(ds), rows * cols)
        idx = np.sort(np.random.RandomState(seed).choice(len(ds), n, replace=False))
        cell = cell or min(ds.resolution, 128)
        mode = "L" if ds.num_channels == 1 else "RGB"
        use_rows = (n + cols - 1) // cols
        use_cols = min(cols, n)
        grid = Image.new(mode, (use_cols * cell, use_rows * cell), 0)
        for k, i in enumerate(idx):
            img, _ = ds[int(i)]
            tile = Image.fromarray(img[0] if mode == "L" else img.transpose(1, 2, 0), mode)
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.Resampling.LANCZOS if cell < tile.size[0] else Image.Resampling.NEAREST)
            grid.paste(tile, ((k % cols) * cell, (k // cols) * cell))
        return grid
    finally:
        ds.close()
