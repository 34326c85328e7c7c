"""FID and KID of a generator against a prepared dataset, with NVIDIA's metric names and result records.

Names: ``fid<N>`` / ``kid<N>`` use N generated images against the first N real images (fewer when the
dataset is smaller); ``fid<N>_full`` / ``kid<N>_full`` use all real images. N takes a ``k`` suffix:
fid500, kid1k, fid50k, fid50k_full (NVIDIA's paper metric).

    result = compute("fid1k", G, "data/emoji-32.zip", "cuda")
    result["results"]["fid1k"]
    append_metric_jsonl(run_dir, result, "network-snapshot-000200.pt")

Generated images use psi 1, random noise, z ~ N(0, I) from a fixed seed (repeatable values) and, for
conditional networks, labels drawn from the dataset's own labels. Images go through uint8 exactly as in
NVIDIA's code (img * 127.5 + 128, clamped, rounded down) before the detector; grayscale is repeated to RGB.
"""

import copy
import json
import re
import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import UserError
from engine.timefmt import format_time

__all__ = [
    "compute",
    "compute_many",
    "parse_metric",
    "append_metric_jsonl",
    "generated_features",
    "format_time",
    "MetricSpec",
]

_NAME = re.compile(r"^(fid|kid)(\d+)(k?)(_full)?$")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # 'fid' | 'kid'
    num_gen: int
    full: bool  # all real images instead of the first num_gen


def parse_metric(name):
    """'kid1k' -> MetricSpec('kid1k', 'kid', 1000, False); UserError for anything else."""
    text = str(name).strip().lower()
    m = _NAME.match(text)
    if not m or int(m.group(2)) == 0:
        raise UserError(
            f"unknown metric '{name}': use fid<N> or kid<N> with N generated images, e.g. fid500, kid1k, fid50k_full"
        )
    n = int(m.group(2)) * (1000 if m.group(3) else 1)
    if n < 2:
        raise UserError(f"metric '{name}' needs at least 2 generated images")
    return MetricSpec(text, m.group(1), n, bool(m.group(4)))


def parse_metric_list(text):
    """'fid1k,kid1k' -> ['fid1k', 'kid1k'] (validated, duplicates dropped); 'none' or '' -> []."""
    names = []
    for part in str(text or "").split(","):
        part = part.strip().lower()
        if not part or part == "none":
            continue
        spec = parse_metric(part)
        if spec.name not in names:
            names.append(spec.name)
    return names




def _images_uint8(img):
    """G output [N, C, H, W] in ~[-1, 1] -> uint8 [N, C, H, W], NVIDIA's conversion."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def _label_sampler(G, dataset):
    """A function n, rng -> c [n, c_dim] float32 drawn from the dataset's labels (empty for unconditional G)."""
    c_dim = int(getattr(G, "c_dim", 0) or 0)
    if c_dim == 0:
        return lambda n, rng: np.zeros([n, 0], np.float32)
    label_dim = int(getattr(dataset, "label_dim", 0) or 0)
    if label_dim != c_dim:
        raise UserError(
            f"the network is conditional ({c_dim} classes) but the dataset has {label_dim or 'no'} labels: "
            "give the dataset the network was trained on"
        )
    get_label = getattr(dataset, "get_label", None)
    labels = {}

    def label(i):
        if i not in labels:
            labels[i] = np.asarray(get_label(i) if get_label else dataset[i][1], np.float32)
        return labels[i]

    return lambda n, rng: np.stack([label(int(i)) for i in rng.randint(len(dataset), size=n)])


@torch.no_grad()
def generated_features(G, detector, num, device, batch=32, seed=0, dataset=None, progress=None):
    """Features of `num` images from G -> np.float64 [num, 2048].

    z and labels come from `seed`, the per-layer noise from a torch RNG seeded the same way, so the same G
    gives the same value on the same device.
    """
    device = torch.device(device)
    sample_c = _label_sampler(G, dataset)
    rng = np.random.RandomState(seed)
    z_gen = torch.Generator().manual_seed(int(seed))
    chunks = []
    fork_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(int(seed))
        for start in range(0, num, batch):
            n = min(batch, num - start)
            z = torch.randn([n, G.z_dim], generator=z_gen).to(device)
            c = torch.from_numpy(sample_c(n, rng)).to(device)
            img = G(z, c, truncation_psi=1, noise_mode="random")
            chunks.append(detector.features(_images_uint8(img.float())))
            if progress is not None:
                progress(start + n, num)
    return np.concatenate(chunks)


def _network_on(G, device):
    """G itself when its weights are on `device`, else a copy moved there (the caller's network is untouched)."""
    p = next(iter(G.parameters()), None)
    if p is None or p.device == torch.device(device):
        return G
    return copy.deepcopy(G).to(device)


def compute_many(names, G, dataset_path, device, batch=32, progress=None, cache_dir=None, detector=None, seed=0):
    """Several metrics sharing their detector work -> list of result dicts, one per name (see compute()).

    Generated features are computed once for the largest N and the first n rows serve smaller metrics;
    real features once per distinct real-image count, from the on-disk cache when present.
    progress(done, total) counts images through the detector.
    """
    from engine.metrics import reals
    from engine.metrics.detector import Detector, cache_root, load_detector
    from engine.metrics.fid import fid_from_features
    from engine.metrics.kid import kid_from_features

    specs = [parse_metric(n) for n in names]
    if not specs:
        return []
    device = torch.device(device)
    t0 = time.time()
    det = detector if isinstance(detector, Detector) or hasattr(detector, "features") else None
    if det is None:
        det = load_detector(device, kind=detector, cache_dir=cache_dir)
    root = cache_root(cache_dir)

    dataset = reals.open_dataset(dataset_path, use_labels=int(getattr(G, "c_dim", 0) or 0) > 0)
    if len(dataset) < 2:
        raise UserError(f"dataset '{dataset_path}' has {len(dataset)} image(s): metrics need at least 2")
    _label_sampler(G, dataset)  # a network/dataset label mismatch fails now, before minutes of detector work
    real_counts = sorted({len(dataset) if s.full else min(s.num_gen, len(dataset)) for s in specs})
    num_gen = max(s.num_gen for s in specs)
    real_feats, cache_hits = {}, {}
    for count in real_counts:
        real_feats[count] = reals.load_cached(dataset, dataset_path, det, count, root)
        cache_hits[count] = real_feats[count] is not None
    total = num_gen + sum(c for c in real_counts if not cache_hits[c])
    done = 0

    def report(base):
        return None if progress is None else (lambda d, _t: progress(base + d, total))

    for count in real_counts:
        if not cache_hits[count]:
            real_feats[count], _ = reals.real_features(
                dataset, dataset_path, det, count, batch=batch, cache_root=root, progress=report(done)
            )
            done += count

    G = _network_on(G, device)
    gen = generated_features(G, det, num_gen, device, batch=batch, seed=seed, dataset=dataset, progress=report(done))

    values = []
    for s in specs:
        count = len(dataset) if s.full else min(s.num_gen, len(dataset))
        if s.kind == "fid":
            values.append(fid_from_features(real_feats[count], gen[: s.num_gen]))
        else:
            values.append(kid_from_features(real_feats[count], gen[: s.num_gen], seed=seed))
    elapsed = time.time() - t0
    from engine.metrics.copies import feature_copy_figures
    from engine.train.health import feature_spread

    results, copy_figures = [], {}
    for s, value in zip(specs, values):
        count = len(dataset) if s.full else min(s.num_gen, len(dataset))
        # How varied the fakes are next to the reals, for the mode-collapse warning (engine/train/health.py).
        spread_ratio = feature_spread(gen[: s.num_gen]) / max(feature_spread(real_feats[count]), 1e-12)
        # How near the fakes come to the reals next to the reals' own spacing, for the copying warning.
        if (count, s.num_gen) not in copy_figures:
            copy_figures[count, s.num_gen] = feature_copy_figures(real_feats[count], gen[: s.num_gen])
        copying = copy_figures[count, s.num_gen]
        results.append(
            {
                "results": {s.name: value},
                "metric": s.name,
                "total_time": elapsed,
                "total_time_str": format_time(elapsed),
                "num_gpus": 1,
                "detector": det.name,
                "num_real": count,
                "num_gen": s.num_gen,
                "real_cache_hit": cache_hits[count],
                "fake_spread_ratio": spread_ratio,
                **({"fake_close_share": copying["close_share"]} if copying else {}),
            }
        )
    return results


def compute(name, G, dataset_path, device, batch=32, progress=None, cache_dir=None, detector=None, seed=0):
    """One metric of G against the dataset.

    -> {'results': {name: value}, 'metric': name, 'total_time': s, 'total_time_str': str, 'num_gpus': 1,
        'detector': detector name, 'num_real': int, 'num_gen': int, 'real_cache_hit': bool}
    detector: None / 'auto' / 'nvidia' / 'offline', or a loaded detector object.
    """
    return compute_many([name], G, dataset_path, device, batch=batch, progress=progress, cache_dir=cache_dir,
                        detector=detector, seed=seed)[0]


def append_metric_jsonl(run_dir, result, snapshot_name=None):
    """Append NVIDIA's record line to <run_dir>/metric-<name>.jsonl -> the file's path.

    Fields: results, metric, total_time, total_time_str, num_gpus, snapshot_pkl, timestamp (NVIDIA's) plus
    detector, num_real, num_gen. One write call for the whole line so a reader never sees half of it.
    """
    record = {
        "results": dict(result["results"]),
        "metric": result["metric"],
        "total_time": result["total_time"],
        "total_time_str": result["total_time_str"],
        "num_gpus": result.get("num_gpus", 1),
        "snapshot_pkl": snapshot_name,
        "timestamp": time.time(),
    }
    for key in ("detector", "num_real", "num_gen", "fake_spread_ratio", "fake_close_share"):
        if key in result:
            record[key] = result[key]
    from engine.runs import metric_path

    path = metric_path(run_dir, result["metric"])
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return path
