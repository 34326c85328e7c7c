"""Shared fixtures-by-function for the training tests: tiny datasets and tiny training options (no tests here)."""

import json
from pathlib import Path

import numpy as np
from PIL import Image


def make_dataset(root, n=32, res=16, channels=3, labels=None, seed=0):
    """A prepared dataset folder of n blob images (NVIDIA's layout) -> its path."""
    root = Path(root)
    (root / "00000").mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(seed)
    entries = []
    y, x = np.mgrid[0:res, 0:res]
    for i in range(n):
        cx, cy = rs.uniform(res * 0.25, res * 0.75, 2)
        colour = rs.randint(0, 255, channels)
        mask = ((x - cx) ** 2 + (y - cy) ** 2 < (res / 4) ** 2)[..., None]
        img = np.where(mask, colour, 40).astype(np.uint8)
        name = f"00000/img{i:08d}.png"
        Image.fromarray(img[:, :, 0] if channels == 1 else img).save(root / name)
        if labels:
            entries.append([name, i % labels])
    (root / "dataset.json").write_text(json.dumps({"labels": entries if labels else None}))
    return root


def tiny_options(data, outdir, **overrides):
    """TrainOptions for a network small enough to take a step in well under a second on the CPU (with every
    loss phase, path length included, which the tiny preset itself leaves off)."""
    from engine.train.options import TrainOptions

    kw = dict(data=str(data), outdir=str(outdir), cfg="tiny", batch=4, kimg=0.016, tick=0.008, snap=1,
              cbase=256, cmax=16, map=1, z_dim=16, w_dim=16, pl_weight=2, seed=3, workers=0, progress=False, device="cpu")
    kw.update(overrides)
    return TrainOptions(**kw)


def tensors_equal(a, b):
    """Exact equality of two state dicts -> list of differing names."""
    import torch

    return [k for k in a if not torch.equal(a[k], b[k])]
