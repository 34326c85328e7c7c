"""Seeds -> latents -> images: grids, truncation, style mixing, interpolation frames and GIF/MP4 writers.

Seeds follow NVIDIA's rule (z = np.random.RandomState(seed).randn(1, z_dim)) and images NVIDIA's conversion
((img * 127.5 + 128).clamp(0, 255) as uint8), so seed 85 is the same picture here and in NVIDIA's generate.py.
Images are numpy uint8 arrays [H, W, C].
"""

import math
import re
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError

MAX_SEED = 2 ** 32 - 1
MAX_SEEDS = 100_000


# --------------------------------------------------------------------------------------------------------------
# Parsing


def parse_seeds(text, what="seeds", max_count=MAX_SEEDS, max_value=MAX_SEED):
    """'0,3,5-8' -> [0, 3, 5, 6, 7, 8] (order kept, ranges inclusive). UserError on anything else."""
    if isinstance(text, (list, tuple)):
        values = [int(v) for v in text]
    else:
        s = str(text).strip()
        if not s:
            raise UserError(f"no {what} given: use a list like 0,3,5-8")
        values = []
        for part in s.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*(?:-|\.\.)\s*(\d+)", part)
            if m:
                lo, hi = int(m[1]), int(m[2])
                if hi < lo:
                    raise UserError(f"{what} range {part!r} runs backwards: write it as {hi}-{lo}")
                if len(values) + (hi - lo + 1) > max_count:
                    raise UserError(f"{what} {s!r} make more than {max_count} values; at most {max_count} at once")
                values.extend(range(lo, hi + 1))
            elif re.fullmatch(r"\d+", part):
                values.append(int(part))
            else:
                raise UserError(f"cannot read {what} {s!r}: {part!r} is not a number or a range like 5-8")
    if not values:
        raise UserError(f"no {what} given: use a list like 0,3,5-8")
    if len(values) > max_count:
        raise UserError(f"too many {what} ({len(values)}); at most {max_count} at once")
    for v in values:
        if v < 0 or v > max_value:
            raise UserError(f"{what[:-1] if what.endswith('s') else what} {v} is out of range 0..{max_value}")
    return values


def parse_grid(text):
    """'4x2' -> (cols, rows). UserError on anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(text))
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise UserError(f"cannot read grid {text!r}: write it as COLSxROWS, e.g. 4x2")
    cols, rows = int(m[1]), int(m[2])
    if cols * rows > 10_000:
        raise UserError(f"grid {text!r} has more than 10000 cells")
    return cols, rows


def resolve_device(name="auto"):
    """'auto' -> cuda if available else cpu; otherwise the named device, checked."""
    name = str(name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA GPU is available: use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not supported: use auto, cpu or cuda")
    return device


def load_generator(path, device="cpu"):
    """G_ema of any supported network file, on `device`, in eval mode without gradients."""
    from engine.checkpoint import load_network

    return load_network(path, device=device)["G_ema"]


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
# Grids and files


def make_grid(images, cols, rows, pad=0, background=0):
    """List of np uint8 [H, W, C] -> one np uint8 [rows*H, cols*W, C], row by row; empty cells are background."""
    images = list(images)
    if not images:
        raise UserError("no images to put in a grid")
    cols, rows = int(cols), int(rows)
    if len(images) > cols * rows:
        raise UserError(f"{len(images)} images do not fit a {cols}x{rows} grid ({cols * rows} cells)")
    h, w, c = images[0].shape
    grid = np.full([rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c], background, dtype=np.uint8)
    for i, img in enumerate(images):
        if img.shape != (h, w, c):
            raise ValueError("all grid images must have the same shape")
        r, k = divmod(i, cols)
        y, x = r * (h + pad), k * (w + pad)
        grid[y:y + h, x:x + w] = img
    return grid


def to_pil(array):
    """np uint8 [H, W, C] -> PIL image: 1 channel 'L', 3 'RGB', 4 'RGBA' (2 channels: first as 'L')."""
    from PIL import Image

    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    c = array.shape[2]
    if c == 1:
        return Image.fromarray(array[:, :, 0], "L")
    if c == 3:
        return Image.fromarray(array, "RGB")
    if c == 4:
        return Image.fromarray(array, "RGBA")
    if c == 2:
        return Image.fromarray(array[:, :, 0], "L")
    raise UserError(f"cannot save an image with {c} channels")


def _atomic_write(path, write):
    """Call write(tmp_path) then rename onto path, so a failure never leaves a half file or clobbers one."""
    from engine.fsutil import atomic_path

    path = Path(path)
    try:
        # The temporary keeps the file's extension: the writers choose the format by it.
        with atomic_path(path, suffix=path.suffix) as tmp:
            write(str(tmp))
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def save_image(array, path):
    """Save np uint8 [H, W, C] as PNG (or the format of the suffix): grayscale, RGB or RGBA by channel count."""
    img = to_pil(array)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(Path(path).suffix.lower(), "PNG")
    if fmt == "JPEG" and img.mode == "RGBA":
        img = img.convert("RGB")
    return _atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


def check_can_write(paths, overwrite=False):
    """UserError if any path exists (unless overwrite) — so a run never silently replaces the user's files."""
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more files)" if len(existing) > 1 else ""
        raise UserError(f"{existing[0]}{more} already exists: choose another output or add --overwrite")
    for p in existing:
        if p.is_dir():
            raise UserError(f"{p} is a folder: choose a file name for the output")


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


def label_mix_grid(grid, row_seeds, col_seeds, min_cell=96):
    """A style_mix_grid image as a figure for people -> np uint8 [H, W, 3] on white.

    Cells are enlarged by a whole factor (nearest neighbour, so small images stay sharp) to at least min_cell px,
    "seed N" (or the text itself, for a saved latent's name given as a string) is written above each column and
    left of each row, and the top-left cell is white. Images with
    alpha are laid on white; grayscale becomes RGB.
    """
    from PIL import Image, ImageDraw, ImageFont

    row_seeds, col_seeds = list(row_seeds), list(col_seeds)
    grid = np.asarray(grid)
    if grid.ndim == 2:
        grid = grid[:, :, None]
    n_rows, n_cols = len(row_seeds) + 1, len(col_seeds) + 1
    if grid.shape[0] % n_rows or grid.shape[1] % n_cols:
        raise ValueError(f"a {grid.shape[1]}x{grid.shape[0]} grid does not hold {n_cols}x{n_rows} equal cells")
    h, w = grid.shape[0] // n_rows, grid.shape[1] // n_cols
    c = grid.shape[2]
    if c in (2, 4):
        alpha = grid[:, :, -1:].astype(np.float32) / 255
        grid = (grid[:, :, :-1].astype(np.float32) * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
        c -= 1
    if c == 1:
        grid = np.repeat(grid, 3, axis=2)
    scale = max(1, math.ceil(min_cell / max(h, w)))
    big = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    ch, cw = h * scale, w * scale
    big[:ch, :cw] = 255
    font_px = max(12, round(min(ch, cw) / 7))
    try:
        font = ImageFont.load_default(size=font_px)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text):
        x0, y0, x1, y1 = measure.textbbox((0, 0), text, font=font)
        return x1 - x0, y1 - y0, x0, y0

    pad = max(4, font_px // 2)
    row_text = [s if isinstance(s, str) else f"seed {s}" for s in row_seeds]
    col_text = [s if isinstance(s, str) else f"seed {s}" for s in col_seeds]
    left = max(size(t)[0] for t in row_text) + 2 * pad
    top = max(size(t)[1] for t in col_text) + 2 * pad
    canvas = Image.new("RGB", (left + big.shape[1], top + big.shape[0]), "white")
    canvas.paste(Image.fromarray(big, "RGB"), (left, top))
    draw = ImageDraw.Draw(canvas)
    ink = (50, 50, 50)
    for j, text in enumerate(col_text):
        tw, th, x0, y0 = size(text)
        cx = left + (j + 1) * cw + cw / 2
        draw.text((round(cx - tw / 2 - x0), round((top - th) / 2 - y0)), text, fill=ink, font=font)
    for i, text in enumerate(row_text):
        tw, th, x0, y0 = size(text)
        cy = top + (i + 1) * ch + ch / 2
        draw.text((round(left - pad - tw - x0), round(cy - th / 2 - y0)), text, fill=ink, font=font)
    return np.asarray(canvas)


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


# --------------------------------------------------------------------------------------------------------------
# Video files


def _even_rgb(frame):
    """np uint8 [H, W, C] -> [H', W', 3] with even H', W' (libx264 with yuv420p needs even sizes)."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.shape[2] in (1, 2):
        frame = np.repeat(frame[:, :, :1], 3, axis=2)
    elif frame.shape[2] == 4:
        frame = frame[:, :, :3]
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return np.ascontiguousarray(frame)


def write_video(frames, path, fps=30, quality=8):
    """Write frames (iterable of np uint8 [H, W, C]) as a GIF (loops forever) or MP4 (libx264, yuv420p).

    The file is written beside its destination and renamed into place when complete. Returns the Path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    fps = float(fps)
    if not (0 < fps <= 240):
        raise UserError(f"fps {fps:g} is out of range: use 1..240")
    if suffix == ".gif":
        return _atomic_write(path, lambda tmp: _write_gif(frames, tmp, fps))
    if suffix == ".mp4":
        _require_ffmpeg(path)
        return _atomic_write(path, lambda tmp: _write_mp4(frames, tmp, fps, quality))
    raise UserError(f"cannot write video {path}: the name must end in .gif or .mp4")


def _write_gif(frames, path, fps):
    images = [to_pil(_gif_frame(f)) for f in frames]
    if not images:
        raise UserError("no frames to write")
    # GIF delays are in 1/100 s; Pillow takes milliseconds and rounds to that.
    duration = max(20, int(round(1000 / fps)))
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], loop=0, duration=duration,
                   disposal=1, optimize=False)


def _gif_frame(frame):
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return frame[:, :, :3]  # GIF has one transparent colour at most: drop alpha
    if frame.ndim == 3 and frame.shape[2] == 2:
        return frame[:, :, :1]
    return frame


def _require_ffmpeg(path):
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise UserError(f"cannot write MP4 {path}: the imageio-ffmpeg package with its ffmpeg is not available "
                        f"({e}); install it with pip install imageio-ffmpeg, or write a .gif") from None


def _write_mp4(frames, path, fps, quality):
    import imageio_ffmpeg

    writer = None
    count = 0
    try:
        for frame in frames:
            frame = _even_rgb(frame)
            if writer is None:
                h, w = frame.shape[:2]
                writer = imageio_ffmpeg.write_frames(
                    str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                    quality=quality, macro_block_size=1, ffmpeg_log_level="error",
                    output_params=["-movflags", "+faststart"])
                writer.send(None)
            writer.send(frame.tobytes())
            count += 1
    finally:
        if writer is not None:
            writer.close()
    if count == 0:
        raise UserError("no frames to write")
