"""Pictures and videos to files: grids, PNG (any channel count), labelled style-mixing figures, GIF and MP4.

Images are numpy uint8 arrays [H, W, C]. Every file is written beside its destination and renamed into place,
so a failure never leaves half a file or replaces one. No torch here.
"""

import math
from pathlib import Path

import numpy as np

from engine.errors import UserError


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


def atomic_write(path, write):
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
    return atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


def check_can_write(paths, overwrite=False):
    """UserError if any path exists (unless overwrite) — so a run never silently replaces the user's files."""
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more files)" if len(existing) > 1 else ""
        raise UserError(f"{existing[0]}{more} already exists: choose another output or add --overwrite")
    for p in existing:
        if p.is_dir():
            raise UserError(f"{p} is a folder: choose a file name for the output")


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
        return atomic_write(path, lambda tmp: _write_gif(frames, tmp, fps))
    if suffix == ".mp4":
        require_ffmpeg(path)
        return atomic_write(path, lambda tmp: _write_mp4(frames, tmp, fps, quality))
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


def require_ffmpeg(path):
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
