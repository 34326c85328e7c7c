"""Interactive exploration: fractional seeds and one-image renders fast enough to follow a slider.

A fractional seed s blends the w of its two neighbouring integer seeds, floor(s) and floor(s) + 1, by the fraction
(NVIDIA's visualizer blends neighbouring seeds the same way), so dragging the seed slides smoothly from one image
to the next instead of jumping.
"""

import math
import threading

import numpy as np
import torch

from engine.errors import UserError
from engine.generate import class_vector, seed_to_z, synthesize
from engine.commands.common import MAX_SEED


@torch.no_grad()
def seed_ws(G, seed, psi=1.0, cutoff=None, class_idx=None):
    """ws [1, num_ws, w_dim] of a seed that may be fractional (e.g. 12.25: 75 % seed 12, 25 % seed 13)."""
    try:
        seed = float(seed)
    except (TypeError, ValueError):
        raise UserError(f"seed {seed!r} is not a number") from None
    if not math.isfinite(seed) or seed < 0 or seed > MAX_SEED - 1:
        raise UserError(f"seed {seed:g} is out of range 0..{MAX_SEED - 1}")
    try:
        psi = float(psi)
    except (TypeError, ValueError):
        raise UserError(f"truncation psi {psi!r} is not a number") from None
    lo = int(math.floor(seed))
    frac = seed - lo
    device = next(iter(G.parameters())).device
    seeds = [lo] if frac == 0 else [lo, lo + 1]
    z = torch.from_numpy(np.concatenate([seed_to_z(s, G.z_dim) for s in seeds])).to(device, torch.float32)
    c = class_vector(G, class_idx, len(seeds), device)
    ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
    if frac == 0:
        return ws
    return ws[:1].lerp(ws[1:], float(frac))


_render_lock = threading.Lock()
ONE_THREAD_MAX_RES = 64


def render(G, ws, noise_mode="const"):
    """ws [1, num_ws, w_dim] -> np uint8 [H, W, C] (one image, the quickest path).

    On the CPU a small image renders on one thread: its ops are too small to split, and a second thread only adds
    synchronisation (measured on the demo network: 6-9 ms of CPU time on one thread, 60-67 ms on two; see
    docs/BENCHMARKS.md). The thread count is restored afterwards.
    """
    if ws.device.type != "cpu" or int(G.img_resolution) > ONE_THREAD_MAX_RES:
        return synthesize(G, ws, noise_mode=noise_mode, batch=1)[0]
    with _render_lock:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return synthesize(G, ws, noise_mode=noise_mode, batch=1)[0]
        finally:
            torch.set_num_threads(before)


def combine(ws, directions=None, strengths=(), layers=None, scales=None):
    """ws moved by sum_i strengths[i] * scales[i] * directions[i] on `layers` (ws indices, None = all)."""
    if directions is None or not len(strengths):
        return ws
    out = ws.clone()
    idx = list(range(ws.shape[1])) if layers is None else list(layers)
    for i, a in enumerate(strengths):
        if a:
            s = 1.0 if scales is None else float(scales[i])
            out[:, idx] += float(a) * s * directions[i].to(out.device, out.dtype)
    return out
