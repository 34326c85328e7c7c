"""Seeds -> latents -> images: truncation, style mixing, interpolation frames (files: engine/media.py).

Seeds follow NVIDIA's rule (z = np.random.RandomState(seed).randn(1, z_dim)) and images NVIDIA's conversion
((img * 127.5 + 128).clamp(0, 255) as uint8), so seed 85 is the same picture here and in NVIDIA's generate.py.
Images are numpy uint8 arrays [H, W, C].
"""

import math

import numpy as np
import torch

from engine.errors import UserError
from engine.media import make_grid


# --------------------------------------------------------------------------------------------------------------
# Latents and labels


def seed_to_z(seed, z_dim):
    """NVIDIA's rule: np [1, z_dim] float64 from np.random.RandomState(seed)."""
    return np.random.RandomState(int(seed)).randn(1, int(z_dim))


def class_vector(G, class_idx, n=1, device="cpu"):
    """One-hot labels c [n, c_dim] for a conditional G; [n, 0] for an unconditional one.

    UserError when a conditional network gets no class or one out of range.
    """
    c_dim = int(G.c_dim)
    c = torch.zeros([n, c_dim], device=device)
    if c_dim == 0:
        return c
    if class_idx is None:
        raise UserError(f"this network is conditional ({c_dim} classes): choose one with --class 0..{c_dim - 1}")
    try:
        k = int(class_idx)
    except (TypeError, ValueError):
        raise UserError(f"class {class_idx!r} is not a number: use 0..{c_dim - 1}") from None
    if not 0 <= k < c_dim:
        raise UserError(f"class {k} is out of range: this network has classes 0..{c_dim - 1}")
    c[:, k] = 1
    return c


def _net_device(G):
    for p in G.parameters():
        return p.device
    for b in G.buffers():
        return b.device
    return torch.device("cpu")


def to_uint8(img):
    """img [N, C, H, W] float in about [-1, 1] -> np uint8 [N, H, W, C] (NVIDIA's rounding)."""
    img = (img.detach().to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()


def check_noise_mode(noise_mode):
    if noise_mode not in ("const", "random", "none"):
        raise UserError(f"noise mode {noise_mode!r} is not one of const, random, none")
    return noise_mode


def _check_trunc(psi, cutoff, G):
    try:
        psi = float(psi)
    except (TypeError, ValueError):
        raise UserError(f"truncation psi {psi!r} is not a number") from None
    if not math.isfinite(psi):
        raise UserError(f"truncation psi {psi} is not a finite number")
    if cutoff is not None:
        cutoff = int(cutoff)
        if cutoff < 0:
            raise UserError(f"truncation cutoff {cutoff} must be 0 or more (it counts w layers from the start)")
    return psi, cutoff


@torch.no_grad()
def seeds_to_ws(G, seeds, psi=1, cutoff=None, class_idx=None, batch=32):
    """ws [len(seeds), num_ws, w_dim] on G's device: mapping of each seed's z with truncation."""
    psi, cutoff = _check_trunc(psi, cutoff, G)
    device = _net_device(G)
    out = []
    for i in range(0, len(seeds), batch):
        chunk = seeds[i:i + batch]
        z = torch.from_numpy(np.concatenate([seed_to_z(s, G.z_dim) for s in chunk])).to(device, torch.float32)
        c = class_vector(G, class_idx, len(chunk), device)
        out.append(G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff))
    return torch.cat(out)


@torch.no_grad()
def synthesize(G, ws, noise_mode="const", batch=8, seed=0):
    """ws [N, num_ws, w_dim] -> list of np uint8 [H, W, C], in batches.

    noise_mode 'random' draws from a generator seeded with `seed`, so the same call gives the same pictures.
    """
    check_noise_mode(noise_mode)
    images = []
    batch = max(int(batch), 1)
    cuda = [ws.device] if ws.device.type == "cuda" else []
    # A private RNG stream: random noise is reproducible and the caller's RNG state is left alone.
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed) % (2 ** 63))
        for i in range(0, ws.shape[0], batch):
            img = G.synthesis(ws[i:i + batch], noise_mode=noise_mode, force_fp32=ws.device.type != "cuda")
            images.extend(to_uint8(img))
    return images


def generate_images(G, seeds, psi=1, cutoff=None, class_idx=None, noise_mode="const", batch=8, device=None):
    """One image per seed -> list of np uint8 [H, W, C] (C = G.img_channels), as NVIDIA's generate.py makes them.

    device: move G there first (None keeps G where it is).
    """
    if device is not None:
        G = G.to(device)
    seeds = list(seeds)
    if not seeds:
        return []
    class_vector(G, class_idx)  # fail early on a bad class
    ws = seeds_to_ws(G, seeds, psi=psi, cutoff=cutoff, class_idx=class_idx, batch=max(int(batch), 1))
    return synthesize(G, ws, noise_mode=noise_mode, batch=batch, seed=seeds[0])


# --------------------------------------------------------------------------------------------------------------
# Style mixing


@torch.no_grad()
def style_mix_grid(G, row_seeds, col_seeds, styles, psi=1, cutoff=None, class_idx=None, noise_mode="const",
                   batch=8):
    """NVIDIA's style-mixing figure -> (grid np uint8, {(row_seed, col_seed): image}).

    Layout: the first row shows the column seeds, the first column the row seeds (top-left empty: white, or
    transparent with alpha); cell (r, c) is row seed r's ws with the layers in `styles` taken from column seed c.
    """
    row_seeds, col_seeds, styles = list(row_seeds), list(col_seeds), list(styles)
    if not row_seeds or not col_seeds:
        raise UserError("style mixing needs at least one row seed and one column seed")
    class_vector(G, class_idx)
    all_seeds = list(dict.fromkeys(row_seeds + col_seeds))
    ws_all = seeds_to_ws(G, all_seeds, psi=psi, cutoff=cutoff, class_idx=class_idx, batch=batch)
    w_of = {seed: ws_all[i] for i, seed in enumerate(all_seeds)}
    grid, cells = style_mix_ws_grid(G, torch.stack([w_of[r] for r in row_seeds]),
                                    torch.stack([w_of[c] for c in col_seeds]), styles, noise_mode=noise_mode,
                                    batch=batch)
    return grid, {(row_seeds[i], col_seeds[j]): img for (i, j), img in cells.items()}


@torch.no_grad()
def style_mix_ws_grid(G, row_ws, col_ws, styles, noise_mode="const", batch=8):
    """The style-mixing figure from latents: row_ws [R, num_ws, w_dim], col_ws [C, num_ws, w_dim] ->
    (grid np uint8, {(row index, column index): image}), laid out as style_mix_grid does.

    Saved latents (projections, edits) mix like seeds: cell (r, c) is row r's ws with the layers in `styles`
    taken from column c.
    """
    styles = list(styles)
    if row_ws.shape[0] < 1 or col_ws.shape[0] < 1:
        raise UserError("style mixing needs at least one row and one column")
    for s in styles:
        if not 0 <= s < G.num_ws:
            raise UserError(f"style layer {s} is out of range: this network has layers 0..{G.num_ws - 1}")
    R, C = row_ws.shape[0], col_ws.shape[0]
    mixed = row_ws.unsqueeze(1).repeat(1, C, 1, 1)  # [R, C, num_ws, w_dim]
    if styles:
        mixed[:, :, styles] = col_ws[:, styles].unsqueeze(0)
    row_images = synthesize(G, row_ws, noise_mode=noise_mode, batch=batch)
    col_images = synthesize(G, col_ws, noise_mode=noise_mode, batch=batch)
    mixed_images = synthesize(G, mixed.reshape(R * C, *row_ws.shape[1:]), noise_mode=noise_mode, batch=batch)
    cells = {(i, j): mixed_images[i * C + j] for i in range(R) for j in range(C)}
    h, w_, ch = row_images[0].shape
    blank = np.full([h, w_, ch], 255, np.uint8)  # white: a black square would read as a broken image
    if ch in (2, 4):
        blank[..., -1] = 0  # transparent corner for images with alpha
    grid_cells = [blank] + list(col_images)
    for i in range(R):
        grid_cells.append(row_images[i])
        grid_cells.extend(cells[(i, j)] for j in range(C))
    grid = make_grid(grid_cells, C + 1, R + 1)
    return grid, cells


# --------------------------------------------------------------------------------------------------------------
# Interpolation


def slerp(a, b, t):
    """Spherical interpolation of z vectors a, b [..., D] at t in [0, 1]; falls back to lerp when parallel."""
    a_n = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b_n = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    dot = (a_n * b_n).sum(-1, keepdim=True).clamp(-1, 1)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    lerp = a + (b - a) * t
    safe = so.abs() > 1e-6
    out = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.where(safe, so, torch.ones_like(so))
    return torch.where(safe, out, lerp)


def _catmull_rom(p0, p1, p2, p3, t):
    t2, t3 = t * t, t * t * t
    return 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)


def interpolate_keyframes(keys, frames_per_seed, kind="linear", loop=False):
    """keys [K, ...] -> frames [F, ...] passing through every key.

    Without loop: F = (K - 1) * frames_per_seed + 1, ending on the last key. With loop: F = K * frames_per_seed,
    returning towards the first key so the sequence repeats seamlessly. kind: 'linear', 'cubic' (Catmull-Rom
    spline through the keys) or 'slerp' (spherical, for z).
    """
    K = keys.shape[0]
    if K < 2 and not loop:
        raise UserError("an interpolation needs at least 2 seeds (or 1 seed per cell with --loop)")
    n = int(frames_per_seed)
    if n < 1:
        raise UserError(f"frames per seed must be at least 1, got {n}")
    segments = K if loop else K - 1
    frames = []
    for s in range(segments):
        i1, i2 = s, (s + 1) % K
        if loop:
            i0, i3 = (s - 1) % K, (s + 2) % K
        else:
            i0, i3 = max(s - 1, 0), min(s + 2, K - 1)
        for f in range(n):
            t = f / n
            if kind == "linear":
                frames.append(keys[i1] + (keys[i2] - keys[i1]) * t)
            elif kind == "slerp":
                frames.append(slerp(keys[i1], keys[i2], torch.tensor(t, dtype=keys.dtype)))
            elif kind == "cubic":
                frames.append(_catmull_rom(keys[i0], keys[i1], keys[i2], keys[i3], t))
            else:
                raise UserError(f"interpolation kind {kind!r} is not one of linear, slerp, cubic")
    if not loop:
        frames.append(keys[K - 1])
    return torch.stack(frames)


def check_interpolation(space, kind):
    """Validate the (space, kind) pair; kind None picks slerp for z and cubic for w."""
    if space not in ("w", "z"):
        raise UserError(f"interpolation space {space!r} is not w or z")
    if kind is None:
        return "slerp" if space == "z" else "cubic"
    if kind not in ("linear", "slerp", "cubic"):
        raise UserError(f"interpolation kind {kind!r} is not one of linear, slerp, cubic")
    if space == "w" and kind == "slerp":
        raise UserError("slerp interpolates z vectors: use --space z with --kind slerp, or linear/cubic in w")
    if space == "z" and kind == "cubic":
        raise UserError("cubic splines interpolate w: use --space w with --kind cubic, or slerp/linear in z")
    return kind


def count_frames(num_keys, frames_per_seed, loop):
    return num_keys * frames_per_seed if loop else (num_keys - 1) * frames_per_seed + 1


@torch.no_grad()
def interpolation_frames(G, seeds, frames_per_seed=30, space="w", kind=None, loop=False, psi=1, cutoff=None,
                         class_idx=None, noise_mode="const", grid=(1, 1), batch=8):
    """Yield video frames (np uint8 [H*rows, W*cols, C]) interpolating through the seeds' latents.

    With grid (cols, rows), the seeds are dealt to the cells in order: each cell gets len(seeds) / (cols*rows)
    consecutive seeds as its keyframes (NVIDIA's gen_video layout).
    """
    kind = check_interpolation(space, kind)
    check_noise_mode(noise_mode)
    psi, cutoff = _check_trunc(psi, cutoff, G)
    cols, rows = grid
    cells = cols * rows
    seeds = list(seeds)
    if len(seeds) % cells != 0:
        raise UserError(f"{len(seeds)} seeds cannot be split evenly over a {cols}x{rows} grid: give a multiple of "
                        f"{cells} seeds")
    K = len(seeds) // cells
    if K < 2 and not loop:
        raise UserError(f"an interpolation needs at least 2 seeds per grid cell, got {K}: add seeds or --loop")
    frames_per_seed = int(frames_per_seed)
    if frames_per_seed < 1:
        raise UserError(f"frames per seed must be at least 1, got {frames_per_seed}")
    class_vector(G, class_idx)
    device = _net_device(G)
    cell_paths = []
    for i in range(cells):
        cell_seeds = seeds[i * K:(i + 1) * K]
        if space == "z":
            z = torch.from_numpy(np.concatenate([seed_to_z(s, G.z_dim) for s in cell_seeds])).to(device, torch.float32)
            cell_paths.append(interpolate_keyframes(z, frames_per_seed, kind, loop))
        else:
            ws = seeds_to_ws(G, cell_seeds, psi=psi, cutoff=cutoff, class_idx=class_idx, batch=batch)
            cell_paths.append(interpolate_keyframes(ws, frames_per_seed, kind, loop))
    num_frames = cell_paths[0].shape[0]
    per_batch = max(1, int(batch) // cells)
    for f0 in range(0, num_frames, per_batch):
        f1 = min(num_frames, f0 + per_batch)
        latents = torch.cat([p[f0:f1] for p in cell_paths])  # [cells * n, ...], cell-major
        if space == "z":
            c = class_vector(G, class_idx, latents.shape[0], device)
            ws = G.mapping(latents, c, truncation_psi=psi, truncation_cutoff=cutoff)
        else:
            ws = latents
        imgs = synthesize(G, ws, noise_mode=noise_mode, batch=batch, seed=seeds[0] + f0)
        n = f1 - f0
        for j in range(n):
            yield make_grid([imgs[i * n + j] for i in range(cells)], cols, rows)
