"""Real-image features for a prepared dataset, cached on disk per dataset and detector.

The cache key is the dataset's resolved path and fingerprint (size and mtime of the zip, or of every
file of a folder), the detector name, how many images were read and the resolution read at; any change
to the dataset or a different detector gives a new key, so a stale cache is never used.
"""

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError


def open_dataset(path, use_labels=False, resolution=None):
    """The prepared dataset at `path` as an ImageDataset (ds[i] -> (uint8 [C, H, W], label [label_dim]))."""
    from engine.data.dataset import ImageDataset

    if not Path(path).exists():
        raise UserError(f"dataset '{path}' does not exist: give a prepared dataset zip or folder")
    return ImageDataset(str(path), resolution=resolution, use_labels=use_labels)


def dataset_fingerprint(path):
    """A string that changes whenever the dataset's files change (size or modification time)."""
    p = Path(path).resolve()
    h = hashlib.sha1(str(p).encode())
    if p.is_file():
        st = p.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for name in sorted(files):
                fp = Path(root) / name
                st = fp.stat()
                h.update(f"{fp.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(path, detector_name, num_items, resolution):
    text = json.dumps(
        {"dataset": dataset_fingerprint(path), "detector": detector_name, "items": int(num_items), "res": resolution},
        sort_keys=True,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def cache_file(cache_root, path, detector_name, num_items, resolution):
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).resolve().name)[:40] or "dataset"
    key = cache_key(path, detector_name, num_items, resolution)
    return Path(cache_root) / "metric-stats" / f"{stem}-{num_items}-{key}.npy"


def load_cached(dataset, path, detector, num_items, cache_root):
    """Cached features of the first `num_items` images -> np.float64 [num_items, 2048], or None."""
    if cache_root is None:
        return None
    resolution = int(getattr(dataset, "resolution", 0) or 0)
    file = cache_file(cache_root, path, detector.name, num_items, resolution)
    if not file.is_file():
        return None
    try:
        feats = np.load(file, allow_pickle=False)
    except (OSError, ValueError):
        return None  # an unreadable cache file is recomputed and replaced
    if feats.ndim != 2 or feats.shape[0] != num_items:
        return None
    return feats.astype(np.float64)


def real_features(dataset, path, detector, num_items, batch=32, cache_root=None, progress=None):
    """Features of the first `num_items` images of `dataset` -> (np.float64 [num_items, 2048], cache hit: bool).

    progress(done, num_items) is called after every batch when the detector has to run.
    """
    feats = load_cached(dataset, path, detector, num_items, cache_root)
    if feats is not None:
        return feats, True
    chunks = []
    for start in range(0, num_items, batch):
        stop = min(start + batch, num_items)
        images = np.stack([np.asarray(dataset[i][0]) for i in range(start, stop)])
        chunks.append(detector.features(torch.from_numpy(images)))
        if progress is not None:
            progress(stop, num_items)
    feats = np.concatenate(chunks).astype(np.float32)
    if cache_root is not None:
        resolution = int(getattr(dataset, "resolution", 0) or 0)
        file = cache_file(cache_root, path, detector.name, num_items, resolution)
        from engine.fsutil import atomic_path

        with atomic_path(file, suffix=".tmp.npy") as tmp:  # np.save adds .npy to any other name
            np.save(tmp, feats, allow_pickle=False)
    # Stored as float32; the first run returns the same precision so first and later runs agree exactly.
    return feats.astype(np.float64), False
