"""Is the network copying its training images? Nearest training images of generated ones, against the training
set's own nearest-neighbour distances.

    report = check_copies(G, "datasets/emoji32.zip", num=64, device="cpu")
    print(report.verdict)
    write_report(report, "out/")          # copies.png (each fake beside its nearest training images), copies.json

Two spaces, each with its own distance:

* Inception: the 2048 pool features of the FID detector (engine/metrics/detector.py), compared by **cosine
  distance** (1 - cos). Feature norms follow image contrast more than content; the angle does not.
* Pixels: the images at the dataset's resolution, values scaled to [0, 1], compared by **RMS difference**
  (the root of the mean squared difference per pixel and channel: 0.02 is about 5 levels of 255).

Mirror images. Training with --mirror shows the network every image flipped left-right as well, so a fake that
is a mirrored training image is a copy too: a fake is compared with every training image and with its mirror
image (the nearer counts, and the grid shows the training image the way it matched). For the training set's own
figures each sampled image is compared with every *other* training image, mirrored or not; its own mirror image
is not "another image" and is left out. Duplicates inside the dataset (the same picture twice, or once mirrored)
are reported as near-twins of the training set.

Figures, per space. d1 is a fake's distance to its nearest training image, d2 to the second nearest (another
image, not the first one's mirror). The reals get the same figures against the rest of the training set.

* below_p5: the share of fakes nearer a training image than the reals' 5th percentile of d1. If the fakes were
  new images from the training distribution this would be about 5%, whatever the dataset.
* below_median: the same against the reals' median (about 50% for new images).
* near-copies: fakes with d1 < d2 / 3, much nearer one training image than any other (the memorisation test of
  Yoon et al. 2023 and Gu et al. 2023, "On memorization in diffusion models"). Scale-free and per image; a
  fake in a crowded part of the data has a near second neighbour too, so crowding alone does not trigger it.

Verdict (the thresholds, see COPIES_SHARE, SOME_SHARE):

* "the network copies its training images" when half of the fakes or more are below the reals' 5th percentile
  in either space (ten times chance) or are near-copies.
* "some fakes are near-copies of training images" when a quarter or more are below the 5th percentile (five
  times chance: more than a GAN's preference for crowded regions explains, and at N = 32 still over 4 standard
  deviations of the binomial noise) or when the near-copies outnumber what the training set's own near-twins
  predict (expected count plus three times its square root, and at least one).
* "no sign of copying" otherwise.

The sample: the first `max_reals` training images (all of a small set; the same images the FID cache holds,
so their Inception features are read from that cache), of which `max_queries` (a seeded sample) get their own
nearest-neighbour figures. Fakes are seeds 0..N-1 at truncation 1 with constant noise, so the same network
gives the same report.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError

MAX_IMAGES = 10_000      # fakes in one check
DEFAULT_IMAGES = 64
DEFAULT_REALS = 5000     # training images compared against (the first ones; 0 = all)
DEFAULT_QUERIES = 1000   # training images whose own nearest-neighbour distances are measured
NEAR_COPY_RATIO = 1 / 3  # d1 / d2 below this: a near-copy
COPIES_SHARE = 0.5       # this share of fakes below the reals' 5th percentile (or near-copies): copying
SOME_SHARE = 0.25        # this share below the 5th percentile: some near-copies (the health monitor's level)
GRID_ROWS = 16           # the fakes nearest the training set shown in the grid
SPACES = ("inception", "pixels")
DISTANCE = {"inception": "cosine distance of Inception pool features",
            "pixels": "RMS pixel difference (0-1 scale) at the dataset's resolution"}


# --------------------------------------------------------------------------------------------------------------
# Nearest neighbours


def _fold(best, d0, d1, exclude, offset):
    """Merge one block of references (columns offset..) into best: d0 / d1 [Q, B] are the distances of each query
    and of its mirror image; the nearer counts; exclude [Q] (or None) is the reference each query must not match."""
    flip = d1 < d0
    d = torch.where(flip, d1, d0)
    if exclude is not None:
        cols = torch.arange(offset, offset + d.shape[1], device=d.device)
        d = d.masked_fill(exclude[:, None] == cols[None, :], math.inf)
    return _merge_top2(*best, d, offset, flip)


def _merge_top2(best_d, best_i, best_f, d, offset, flip):
    """Keep the two smallest distances per row. best_*: [Q, 2]; d, flip: [Q, B] for references offset.."""
    q, b = d.shape
    idx = torch.arange(offset, offset + b, device=d.device).expand(q, b)
    cand_d = torch.cat([best_d, d], 1)
    v, j = cand_d.topk(2, dim=1, largest=False)
    return v, torch.cat([best_i, idx], 1).gather(1, j), torch.cat([best_f, flip], 1).gather(1, j)


def _empty_top2(q, device, dtype=torch.float32):
    return (torch.full([q, 2], math.inf, dtype=dtype, device=device),
            torch.full([q, 2], -1, dtype=torch.long, device=device),
            torch.zeros([q, 2], dtype=torch.bool, device=device))


def _finish(best_d, best_i, best_f):
    return best_d.double().cpu().numpy(), best_i.cpu().numpy(), best_f[:, 0].cpu().numpy()


def nearest_features(queries, queries_flipped, refs, exclude=None, device="cpu", chunk=4096):
    """The two nearest references by cosine distance, a query and its mirror image taking the nearer.

    queries, queries_flipped: [Q, D] features of the images and of their mirror images; refs: [M, D].
    exclude: [Q] reference index each query must not match (itself), -1 for none.
    -> (distances [Q, 2] float64, indices [Q, 2], flipped [Q] bool: the nearest matched the mirror image).
    """
    dev = torch.device(device)

    def unit(x):
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=dev)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    a, af, r = unit(queries), unit(queries_flipped), unit(refs)
    ex = None if exclude is None else torch.as_tensor(np.asarray(exclude), dtype=torch.long, device=dev)
    best = _empty_top2(a.shape[0], dev)
    for start in range(0, r.shape[0], chunk):
        rc = r[start:start + chunk]
        best = _fold(best, (1 - a @ rc.T).clamp_min(0), (1 - af @ rc.T).clamp_min(0), ex, start)
    return _finish(*best)


def _as_float_images(images, dev):
    # Centred, and in float64 on the CPU: |a|^2 + |b|^2 - 2ab cancels for the near-identical pairs that matter here.
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    x = torch.as_tensor(np.asarray(images), device=dev).to(dtype) / 255.0 - 0.5
    return x.reshape(x.shape[0], -1)


def nearest_pixels(queries, reference_batches, exclude=None, device="cpu", budget_bytes=256 * 2 ** 20):
    """The two nearest references by RMS pixel difference (0-1 scale), a query and its mirror taking the nearer.

    queries: uint8 [Q, C, H, W]; reference_batches: a function returning an iterator of (start index,
    uint8 [B, C, H, W]) over the references (called once per group of queries, so large images need not all be
    held at once). -> (distances [Q, 2] float64, indices [Q, 2], flipped [Q] bool).
    """
    dev = torch.device(device)
    queries = np.asarray(queries)
    q_total = queries.shape[0]
    dim = int(np.prod(queries.shape[1:]))
    group = max(1, min(q_total, budget_bytes // max(1, 16 * dim)))  # the queries and their mirror images
    ex_all = None if exclude is None else np.asarray(exclude)
    out_d, out_i, out_f = [], [], []
    for g in range(0, q_total, group):
        chunk = queries[g:g + group]
        a = _as_float_images(chunk, dev)
        af = _as_float_images(np.ascontiguousarray(chunk[..., ::-1]), dev)
        na, naf = (a * a).sum(1, keepdim=True), (af * af).sum(1, keepdim=True)
        ex = None if ex_all is None else torch.as_tensor(ex_all[g:g + group], dtype=torch.long, device=dev)
        best = _empty_top2(a.shape[0], dev, a.dtype)
        for start, refs in reference_batches():
            r = _as_float_images(refs, dev)
            nr = (r * r).sum(1)[None, :]
            d0 = ((na + nr - 2 * a @ r.T).clamp_min(0) / dim).sqrt()
            d1 = ((naf + nr - 2 * af @ r.T).clamp_min(0) / dim).sqrt()
            best = _fold(best, d0, d1, ex, start)
        d, i, f = _finish(*best)
        out_d.append(d), out_i.append(i), out_f.append(f)
    return np.concatenate(out_d), np.concatenate(out_i), np.concatenate(out_f)


# --------------------------------------------------------------------------------------------------------------
# Figures and verdict


def near_mask(d):
    """[K, 2] distances to the nearest and second nearest -> [K] bool: much nearer the first than the second.

    An exact match (both zero: a training image present twice) counts as near too."""
    d = np.asarray(d, np.float64)
    return d[:, 0] < NEAR_COPY_RATIO * d[:, 1] + 1e-9


def space_summary(fake_d, real_d):
    """Figures of one space. fake_d, real_d: [N, 2] / [Q, 2] distances to the nearest and second nearest."""
    fake_d, real_d = np.asarray(fake_d, np.float64), np.asarray(real_d, np.float64)
    real_p5, real_median = float(np.percentile(real_d[:, 0], 5)), float(np.median(real_d[:, 0]))
    return {
        "reals": {"median": real_median, "p5": real_p5,
                  "near_twins": int(near_mask(real_d).sum())},
        "fakes": {"median": float(np.median(fake_d[:, 0])), "p5": float(np.percentile(fake_d[:, 0], 5))},
        "below_p5": float((fake_d[:, 0] < real_p5).mean()),
        "below_median": float((fake_d[:, 0] < real_median).mean()),
        "near_copies": int(near_mask(fake_d).sum()),
    }


def verdict(summary, num_fakes, num_queries, near_copy, real_near_twin, seeds=()):
    """(kind, one line): kind 'none' | 'some' | 'copies'.

    summary: {space: space_summary(...)}; near_copy: [N] bool per fake (a near-copy in any space);
    real_near_twin: [Q] bool per sampled training image (a near-twin in any space).
    """
    n = int(num_fakes)
    below = max(summary[s]["below_p5"] for s in summary)
    space = max(summary, key=lambda s: summary[s]["below_p5"])
    copies = int(np.sum(near_copy))
    expected = n * float(np.mean(real_near_twin)) if num_queries else 0.0
    excess = copies >= max(1.0, expected + 3 * math.sqrt(expected))
    close = (f"{below:.0%} of {n} fakes are nearer a training image than 95% of training images are to any other "
             f"({'pixels' if space == 'pixels' else 'Inception features'}; about 5% if they were new images)")
    if below >= COPIES_SHARE or copies >= COPIES_SHARE * n:
        return "copies", (f"the network copies its training images: {close}; {copies} of {n} are near-copies; "
                          f"stop at an earlier snapshot, add images or use more augmentation (--aug ada, --mirror 1)")
    if below >= SOME_SHARE or excess:
        flagged = [s for s, c in zip(seeds, near_copy) if c][:8]
        which = f" (seeds {', '.join(map(str, flagged))}{', ...' if copies > len(flagged) else ''})" if flagged else ""
        parts = ([f"{copies} of {n} are much nearer one training image than any other{which}"] if copies else []) + \
            ([close] if below >= SOME_SHARE or not copies else [])
        return "some", (f"some fakes are near-copies of training images: {'; '.join(parts)}; look at them in the "
                        f"grid, and prefer an earlier snapshot or more data if they matter")
    return "none", f"no sign of copying: {close}, {copies} near-copies"


@dataclass
class CopyReport:
    """What check_copies found. fakes: uint8 [N, C, H, W]; per-space arrays are [N, 2] / [Q, 2]."""
    network: str
    dataset: str
    seeds: list
    detector: str
    num_reals: int
    dataset_size: int
    query_indices: np.ndarray
    fakes: np.ndarray
    fake_nn: dict                 # space -> (distances [N, 2], indices [N, 2], flipped [N])
    real_nn: dict                 # space -> (distances [Q, 2], indices [Q, 2], flipped [Q])
    summary: dict = field(default_factory=dict)
    kind: str = "none"
    verdict: str = ""
    seconds: float = 0.0
    dataset_images: object = None  # the opened dataset, for the grid (not in the JSON)

    def near_copy(self):
        """[N] bool: a fake much nearer one training image than any other, in either space."""
        return np.any([near_mask(self.fake_nn[s][0]) for s in SPACES], 0)

    def order(self):
        """Fake indices, the nearest to the training set first (by d1 over the reals' median, both spaces)."""
        score = sum(self.fake_nn[s][0][:, 0] / max(self.summary[s]["reals"]["median"], 1e-12) for s in SPACES)
        return np.argsort(score, kind="stable")

    def as_dict(self):
        near = self.near_copy()
        fakes = []
        for k, seed in enumerate(self.seeds):
            entry = {"seed": int(seed), "near_copy": bool(near[k])}
            for s in SPACES:
                d, i, f = self.fake_nn[s]
                entry[s] = {"distance": float(d[k, 0]), "nearest": int(i[k, 0]), "second": int(i[k, 1]),
                            "second_distance": float(d[k, 1]), "mirrored": bool(f[k])}
            fakes.append(entry)
        return {
            "verdict": self.verdict, "kind": self.kind, "network": self.network, "dataset": self.dataset,
            "detector": self.detector, "num_fakes": len(self.seeds), "num_reals": self.num_reals,
            "dataset_size": self.dataset_size, "num_real_queries": int(len(self.query_indices)),
            "distance": dict(DISTANCE), "summary": self.summary,
            "thresholds": {"near_copy_ratio": NEAR_COPY_RATIO, "copies_share": COPIES_SHARE,
                           "some_share": SOME_SHARE},
            "seconds": self.seconds, "fakes": fakes,
        }

    def lines(self):
        """The figures as a few lines for a terminal."""
        out = [self.verdict,
               f"{len(self.seeds)} fakes (seeds {_seed_text(self.seeds)}) against {self.num_reals} of "
               f"{self.dataset_size} training images ({len(self.query_indices)} measured against the rest), "
               f"detector {self.detector}"]
        for s in SPACES:
            m = self.summary[s]
            out.append(
                f"{s:9} ({DISTANCE[s]}): fakes' nearest median {m['fakes']['median']:.4f}, 5th pct "
                f"{m['fakes']['p5']:.4f}; reals' median {m['reals']['median']:.4f}, 5th pct "
                f"{m['reals']['p5']:.4f}; below reals' 5th pct {m['below_p5']:.0%}, below median "
                f"{m['below_median']:.0%}; near-copies {m['near_copies']}, training near-twins "
                f"{m['reals']['near_twins']} of {len(self.query_indices)}")
        return out


def _seed_text(seeds):
    seeds = list(seeds)
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds[:6])) + (", ..." if len(seeds) > 6 else "")


# --------------------------------------------------------------------------------------------------------------
# The check


def _rgb(images):
    """uint8 [N, C, H, W] -> what the detector takes: 1 or 3 channels (alpha dropped)."""
    c = images.shape[1]
    return images[:, :1] if c == 2 else images[:, :3] if c == 4 else images


@torch.no_grad()
def generate_fakes(G, seeds, device, psi=1.0, batch=16):
    """Seeds -> uint8 [N, C, H, W]: NVIDIA's seed rule, constant noise; conditional networks cycle the classes."""
    from engine.generate import seed_to_z

    c_dim = int(getattr(G, "c_dim", 0) or 0)
    out = []
    for start in range(0, len(seeds), batch):
        chunk = seeds[start:start + batch]
        z = torch.from_numpy(np.concatenate([seed_to_z(s, G.z_dim) for s in chunk])).to(device, torch.float32)
        c = torch.zeros([len(chunk), c_dim], device=device)
        for k in range(len(chunk)):
            if c_dim:
                c[k, (start + k) % c_dim] = 1
        img = G(z, c, truncation_psi=psi, noise_mode="const")
        out.append((img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def _flipped_query_features(dataset, path, det, indices, root, batch):
    """Inception features of the sampled training images mirrored, cached beside the real features."""
    from engine.metrics import reals

    key = hashlib.sha1(np.asarray(indices, np.int64).tobytes()).hexdigest()[:12]
    name = f"{det.name}|xflip|{key}"
    res = int(getattr(dataset, "resolution", 0) or 0)
    file = None if root is None else reals.cache_file(root, path, name, len(indices), res)
    if file is not None and file.is_file():
        try:
            feats = np.load(file, allow_pickle=False)
            if feats.shape[0] == len(indices):
                return feats.astype(np.float64)
        except (OSError, ValueError):
            pass
    chunks = []
    for start in range(0, len(indices), batch):
        images = np.stack([np.asarray(dataset[int(i)][0]) for i in indices[start:start + batch]])
        chunks.append(det.features(torch.from_numpy(_rgb(np.ascontiguousarray(images[..., ::-1])))))
    feats = np.concatenate(chunks).astype(np.float32)
    if file is not None:
        from engine.fsutil import atomic_path

        with atomic_path(file, suffix=".tmp.npy") as tmp:
            np.save(tmp, feats, allow_pickle=False)
    return feats.astype(np.float64)


class _RGBDataset:
    """A dataset view whose images have the channels the detector takes."""

    def __init__(self, ds):
        self.ds, self.resolution = ds, ds.resolution

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        img, label = self.ds[i]
        return _rgb(np.asarray(img)[None])[0], label


def check_inputs(G, dataset, dataset_path, num):
    """UserError for a number of images out of range, a dataset too small, or one the network does not fit."""
    if not isinstance(num, int) or isinstance(num, bool) or not 2 <= num <= MAX_IMAGES:
        raise UserError(f"number of images {num!r} is out of range: use 2..{MAX_IMAGES}")
    if len(dataset) < 3:
        raise UserError(f"dataset '{dataset_path}' has {len(dataset)} image(s): comparing training images with "
                        f"each other needs at least 3")
    res, ch = int(dataset.resolution), int(dataset.num_channels)
    g_res, g_ch = int(G.img_resolution), int(G.img_channels)
    if g_res != res:
        raise UserError(f"the network makes {g_res}x{g_res} images but dataset '{dataset_path}' is {res}x{res}: "
                        f"give the dataset the network was trained on")
    if g_ch != ch:
        raise UserError(f"the network makes {g_ch}-channel images but dataset '{dataset_path}' has {ch}: give the "
                        f"dataset the network was trained on")


def check_copies(G, dataset_path, num=DEFAULT_IMAGES, seeds=None, device="cpu", detector=None, cache_dir=None,
                 max_reals=DEFAULT_REALS, max_queries=DEFAULT_QUERIES, batch=32, psi=1.0, progress=None,
                 network_name=""):
    """Nearest training images of N fakes in Inception and pixel space, against the reals' own -> CopyReport.

    seeds: the fakes' seeds (default 0..num-1). detector: None / 'auto' / 'nvidia' / 'offline', or an object with
    .name and .features(uint8 [N, 3, H, W]) -> [N, D]. max_reals: training images compared (the first ones;
    0 or None = all). progress(done, total): images through the detector.
    """
    from engine.metrics import reals
    from engine.metrics.detector import cache_root, load_detector

    t0 = time.time()
    seeds = list(range(int(num))) if seeds is None else [int(s) for s in seeds]
    num = len(seeds)
    dataset = reals.open_dataset(dataset_path)
    check_inputs(G, dataset, dataset_path, num)
    device = torch.device(device)
    det = detector if hasattr(detector, "features") else load_detector(device, kind=detector, cache_dir=cache_dir)
    root = cache_root(cache_dir)

    m = len(dataset) if not max_reals else min(int(max_reals), len(dataset))
    if m < 3:
        raise UserError(f"--reals {max_reals} is too few: at least 3 training images are needed")
    q = min(m, int(max_queries or m))
    queries = np.sort(np.random.RandomState(0).choice(m, q, replace=False)) if q < m else np.arange(m)

    cached = reals.load_cached(dataset, dataset_path, det, m, root)
    total = 2 * num + q + (0 if cached is not None else m)
    done = [0]

    def step(n):
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    rgb = _RGBDataset(dataset)
    if cached is None:
        real_feats, _ = reals.real_features(rgb, dataset_path, det, m, batch=batch, cache_root=root,
                                            progress=lambda d, _t: progress and progress(done[0] + d, total))
        step(m)
    else:
        real_feats = cached
    flipped_q = _flipped_query_features(rgb, dataset_path, det, queries, root, batch)
    step(q)

    from engine.metrics import _network_on

    G = _network_on(G, device)
    fakes = generate_fakes(G, seeds, device, psi=psi, batch=min(batch, 16))
    fake_feats, fake_flip_feats = [], []
    for start in range(0, num, batch):
        part = _rgb(fakes[start:start + batch])
        fake_feats.append(det.features(torch.from_numpy(part)))
        fake_flip_feats.append(det.features(torch.from_numpy(np.ascontiguousarray(part[..., ::-1]))))
        step(2 * part.shape[0])
    fake_feats, fake_flip_feats = np.concatenate(fake_feats), np.concatenate(fake_flip_feats)

    fake_nn = {"inception": nearest_features(fake_feats, fake_flip_feats, real_feats, device=device)}
    real_nn = {"inception": nearest_features(real_feats[queries], flipped_q, real_feats, exclude=queries,
                                             device=device)}

    def reference_batches(size=256):
        for start in range(0, m, size):
            yield start, np.stack([np.asarray(dataset[i][0]) for i in range(start, min(start + size, m))])

    both = np.concatenate([fakes, np.stack([np.asarray(dataset[int(i)][0]) for i in queries])])
    exclude = np.concatenate([np.full(num, -1), queries])
    d, i, f = nearest_pixels(both, reference_batches, exclude=exclude, device=device)
    fake_nn["pixels"], real_nn["pixels"] = (d[:num], i[:num], f[:num]), (d[num:], i[num:], f[num:])

    report = CopyReport(network=network_name, dataset=str(dataset_path), seeds=seeds, detector=det.name,
                        num_reals=m, dataset_size=len(dataset), query_indices=queries, fakes=fakes,
                        fake_nn=fake_nn, real_nn=real_nn, dataset_images=dataset)
    report.summary = {s: space_summary(fake_nn[s][0], real_nn[s][0]) for s in SPACES}
    twins = np.any([near_mask(real_nn[s][0]) for s in SPACES], 0)
    report.kind, report.verdict = verdict(report.summary, num, q, report.near_copy(), twins, seeds)
    report.seconds = time.time() - t0
    return report


# --------------------------------------------------------------------------------------------------------------
# The grid and the files


def _cell(img_chw, size):
    """uint8 [C, H, W] -> RGB uint8 [size, size, 3]: alpha on white, grey to RGB, resized (nearest when enlarging)."""
    from PIL import Image

    x = np.asarray(img_chw).transpose(1, 2, 0)
    c = x.shape[2]
    if c in (2, 4):
        a = x[:, :, -1:].astype(np.float32) / 255
        x = (x[:, :, :-1].astype(np.float32) * a + 255 * (1 - a)).round().astype(np.uint8)
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    if x.shape[0] != size:
        resample = Image.NEAREST if size > x.shape[0] else Image.LANCZOS
        x = np.asarray(Image.fromarray(x).resize((size, size), resample))
    return x


def copy_grid(report, rows=GRID_ROWS, cell=None):
    """The fakes nearest the training set (up to `rows`), each beside its nearest training images -> uint8 [H, W, 3].

    Columns: the fake, its nearest and second-nearest training images in Inception space, its nearest in pixels
    (shown mirrored when the mirror image matched). Under each picture: seed or training index and distance.
    """
    from PIL import Image, ImageDraw, ImageFont

    res = report.fakes.shape[2]
    size = cell or (res * max(1, math.ceil(112 / res)) if res < 112 else min(res, 160))
    order = report.order()[:rows]
    headers = ["generated", "nearest (Inception)", "2nd (Inception)", "nearest (pixels)"]
    text_h, head_h, pad = 16, 20, 4
    width = 4 * size + 5 * pad
    height = head_h + len(order) * (size + text_h + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=11)
    except (TypeError, OSError):
        font = ImageFont.load_default()
    for col, h in enumerate(headers):
        draw.text((pad + col * (size + pad), 4), h, fill=(40, 40, 40), font=font)
    ds = report.dataset_images
    near = report.near_copy()
    for row, k in enumerate(order):
        y = head_h + row * (size + text_h + pad)
        d_i, i_i, f_i = report.fake_nn["inception"]
        d_p, i_p, f_p = report.fake_nn["pixels"]
        cells = [(report.fakes[k], f"seed {report.seeds[k]}" + (" · near-copy" if near[k] else ""))]
        for idx, dist, flip in ((i_i[k, 0], d_i[k, 0], f_i[k]), (i_i[k, 1], d_i[k, 1], False),
                                (i_p[k, 0], d_p[k, 0], f_p[k])):
            img = np.asarray(ds[int(idx)][0])
            if flip:
                img = img[..., ::-1]
            cells.append((img, f"#{int(idx)} d {dist:.3f}" + (" mirrored" if flip else "")))
        for col, (img, label) in enumerate(cells):
            x = pad + col * (size + pad)
            canvas.paste(Image.fromarray(_cell(img, size)), (x, y))
            draw.text((x, y + size + 2), label, fill=(200, 30, 30) if col == 0 and near[k] else (60, 60, 60),
                      font=font)
    return np.asarray(canvas)


def write_report(report, out_dir, rows=GRID_ROWS):
    """copies.png and copies.json in out_dir -> (grid path, json path)."""
    from engine.fsutil import atomic_path
    from engine.media import save_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = save_image(copy_grid(report, rows=rows), out / "copies.png")
    path = out / "copies.json"
    with atomic_path(path, suffix=".tmp") as tmp:
        Path(tmp).write_text(json.dumps(report.as_dict(), indent=1) + "\n", encoding="utf-8")
    return grid, path


# --------------------------------------------------------------------------------------------------------------
# For the health monitor: Inception features it already has (the metrics' real and generated features)


def feature_copy_figures(real_features, fake_features, max_fakes=1000, max_reals=5000, max_queries=1000):
    """Cheap copying figures from features [M, D] and [N, D] (cosine distance, no mirror images).

    -> {'close_share': share of fakes nearer a real than the reals' 5th percentile of nearest-other distances,
        'median_ratio': fakes' median nearest distance / the reals', 'num_fakes', 'num_reals'}; None when either
    set is too small (fewer than 3 reals or 2 fakes). Samples keep it to a few GFLOP for 50k-image metrics.
    """
    real = np.asarray(real_features, np.float32)[:max_reals]
    fake = np.asarray(fake_features, np.float32)[:max_fakes]
    if real.ndim != 2 or fake.ndim != 2 or real.shape[0] < 3 or fake.shape[0] < 2:
        return None
    q = min(real.shape[0], max_queries)
    queries = np.arange(q) if q == real.shape[0] else np.sort(np.random.RandomState(0).choice(real.shape[0], q, False))
    fake_d, _, _ = nearest_features(fake, fake, real)
    real_d, _, _ = nearest_features(real[queries], real[queries], real, exclude=queries)
    p5 = float(np.percentile(real_d[:, 0], 5))
    real_median = float(np.median(real_d[:, 0]))
    return {"close_share": float((fake_d[:, 0] < p5).mean()),
            "median_ratio": float(np.median(fake_d[:, 0]) / max(real_median, 1e-12)),
            "num_fakes": int(fake.shape[0]), "num_reals": int(real.shape[0])}
