"""Turning one picture of any kind into one square training image, or a reason why not.

Runs inside worker processes: everything here is a plain function of (item, options) and never raises for a bad
picture; it returns a skip reason instead. Reasons are short stable words that the report and the summary line use.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


try:
    from PIL import ImageCms
except ImportError:  # Pillow built without littlecms: colour profiles are then ignored
    ImageCms = None

# Skip reasons (stable: the report, the dashboard's table and the tests use these words).
ZERO_BYTES = "zero-bytes"
NOT_AN_IMAGE = "not-an-image"
TRUNCATED = "truncated"
UNREADABLE = "unreadable"
TOO_SMALL = "too-small"
BOMB = "decompression-bomb"
DUPLICATE = "duplicate"
NO_LABEL = "no-label"
CRASHED = "decoder-crashed"
UNSAFE_PATH = "unsafe-path"  # a zip member named outside its archive (`..`, absolute); found while listing

FILTERS = {"lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}

_EXIF_ORIENTATION = 0x0112
_RAISE_LIMIT = "; raise --max-megapixels to include it"


@dataclass(frozen=True)
class Options:
    """How every picture is turned into a training image.

    width x height is the picture area; the output is always width x width (square) -- height differs from width
    only for center-crop-wide, which letterboxes a wide crop onto the square.
    """

    width: int
    height: int
    transform: str = "center-crop"
    resize_filter: str = "lanczos"
    channels: int = 3
    background: tuple = (255, 255, 255)
    pad_color: tuple = (0, 0, 0)
    min_size: int = 0
    max_pixels: int = 100_000_000
    png_level: int = 3


@dataclass
class Done:
    """A prepared image: PNG bytes and a digest of its pixels (for --dedupe)."""

    png: bytes
    digest: bytes


@dataclass
class Skip:
    reason: str
    detail: str = ""


# ----------------------------------------------------------------------------------------------------------------
# Worker process state: the options and, for zip sources, one open zip per process (a ZipFile must not be shared
# across a fork, and reopening it for every member would re-read the central directory each time).

_opts: Options | None = None
_zip_path: str | None = None
_zip: zipfile.ZipFile | None = None
_zip_pid: int | None = None


def init_worker(opts: Options, zip_path: str | None) -> None:
    global _opts, _zip_path, _zip, _zip_pid
    _opts, _zip_path, _zip, _zip_pid = opts, zip_path, None, None
    # Our own check against opts.max_pixels, right after the header is read, is the one that counts (and words
    # the reason); Pillow's, four times looser, only backs it up for formats whose size changes after opening.
    Image.MAX_IMAGE_PIXELS = max(opts.max_pixels, 1) * 4


def _zipfile() -> zipfile.ZipFile:
    global _zip, _zip_pid
    if _zip is None or _zip_pid != os.getpid():
        _zip = zipfile.ZipFile(_zip_path)
        _zip_pid = os.getpid()
    return _zip


def process_chunk(items: list) -> list:
    """[(index, Item)] -> [(index, Done | Skip)], in the same order."""
    return [(i, process_item(item, _opts)) for i, item in items]


def process_item(item, opts: Options):
    """Item -> Done or Skip. Never raises for a bad picture."""
    try:
        if item.kind == "array":
            im = Image.fromarray(np.ascontiguousarray(item.ref))
            side = effective_side(*im.size, opts)
            if side < opts.min_size:
                return Skip(TOO_SMALL, f"{im.size[0]}x{im.size[1]} is under --min-size {opts.min_size}")
            return _finish(im, opts)
        if item.kind == "zip":
            info = _zipfile().getinfo(item.ref)
            if info.file_size == 0:
                return Skip(ZERO_BYTES)
            fp = _zipfile().open(info)
        else:
            if os.path.getsize(item.ref) == 0:
                return Skip(ZERO_BYTES)
            fp = open(item.ref, "rb")
    except (OSError, KeyError, RuntimeError, NotImplementedError, zipfile.BadZipFile) as e:
        return Skip(UNREADABLE, _short(e))
    with fp:
        return _decode(fp, opts)


def _short(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# What decoding a damaged picture raises; a zip member also fails its CRC check or inflation while it is read.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zipfile.BadZipFile, zlib.error)


def _decode(fp, opts: Options):
    with warnings.catch_warnings():
        # A DecompressionBombWarning (between the limit and twice it) is treated as the error it warns about.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return Skip(BOMB, _short(e) + _RAISE_LIMIT)
        except UnidentifiedImageError:
            return Skip(NOT_AN_IMAGE, "not a picture format that Pillow reads")
        except _DECODE_ERRORS as e:
            return Skip(TRUNCATED if _looks_truncated(e) else UNREADABLE, _short(e))
        w, h = im.size
        if w * h > opts.max_pixels:
            return Skip(BOMB, f"{w}x{h} is {w * h / 1e6:.0f} megapixels, over the limit of {opts.max_pixels / 1e6:g}" + _RAISE_LIMIT)
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a broken EXIF block only loses the rotation, not the picture
            orientation = 1
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        side = effective_side(w, h, opts)
        if side < opts.min_size:
            return Skip(TOO_SMALL, f"{w}x{h}: the part that becomes the image is {side:.0f} px, under --min-size {opts.min_size}")
        if im.format == "JPEG":
            # DCT-domain downscaling: decodes a large JPEG at 1/2, 1/4 or 1/8 size, never below what we need.
            scale = opts.width / max(side, 1)
            if scale < 0.5:
                im.draft(im.mode, (int(np.ceil(im.size[0] * scale)) + 1, int(np.ceil(im.size[1] * scale)) + 1))
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return Skip(BOMB, _short(e) + _RAISE_LIMIT)
        except _DECODE_ERRORS as e:
            return Skip(TRUNCATED if _looks_truncated(e) else UNREADABLE, _short(e))
        try:
            im = ImageOps.exif_transpose(im) if orientation != 1 else im
        except Exception:
            pass
        try:
            return _finish(im, opts)
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            return Skip(TRUNCATED if _looks_truncated(e) else UNREADABLE, _short(e))


def _looks_truncated(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, EOFError) or "truncated" in text or "broken data stream" in text or "premature" in text


def effective_side(w: float, h: float, opts: Options) -> float:
    """Side, in source pixels, of the part of the picture that becomes the output's full width."""
    if opts.transform == "pad":
        return max(w, h)
    if opts.transform == "center-crop-wide":
        return min(w, h * opts.width / opts.height)
    return min(w, h)


def _finish(im: Image.Image, opts: Options) -> Done:
    im = to_channels(im, opts.channels, opts.background)
    im = fit(im, opts)
    arr = np.asarray(im)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(arr.shape).encode())
    h.update(arr.tobytes())
    digest = h.digest()
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=opts.png_level)
    return Done(buf.getvalue(), digest)


# ----------------------------------------------------------------------------------------------------------------
# Colour: every Pillow mode -> L or RGB.

_SRGB = None


def _srgb():
    global _SRGB
    if _SRGB is None:
        _SRGB = ImageCms.createProfile("sRGB")
    return _SRGB


def to_channels(im: Image.Image, channels: int, background=(255, 255, 255)) -> Image.Image:
    """Any Pillow image -> mode 'L' (channels=1) or 'RGB' (channels=3).

    Alpha is composited on `background` (RGB tuple); palette transparency counts as alpha; 16-bit and 32-bit
    integer greys are scaled to 8 bits rather than clipped; float images in [0, 1] are scaled to [0, 255];
    an embedded ICC profile (CMYK print profiles, wide-gamut phone photos) is converted to sRGB.
    """
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("1",):
        im = im.convert("L")
    elif mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        a = np.asarray(im).astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")

    icc = im.info.get("icc_profile")
    if icc and ImageCms is not None and im.mode in ("RGB", "RGBA", "CMYK"):
        im = _icc_to_srgb(im, icc)
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK without a profile, YCbCr, LAB, HSV, RGBX

    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background[:3]) + (255,))
        im = Image.alpha_composite(base, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def _icc_to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    alpha = im.getchannel("A") if im.mode == "RGBA" else None
    src = im.convert("RGB") if im.mode == "RGBA" else im
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if im.mode != "CMYK" and "srgb" in (ImageCms.getProfileDescription(profile) or "").lower():
            return im  # already what PNG viewers and the networks assume
        out = ImageCms.profileToProfile(src, profile, _srgb(), outputMode="RGB")
    except Exception:  # a broken or unsupported profile: Pillow's plain conversion is still a fair picture
        return im
    if out is None:
        return im
    if alpha is not None:
        out.putalpha(alpha)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Geometry.


def fit(im: Image.Image, opts: Options) -> Image.Image:
    """L/RGB image of any size -> [width, width] by opts.transform."""
    W, H = opts.width, opts.height
    f = FILTERS[opts.resize_filter]
    w, h = im.size
    # reducing_gap: a cheap integer reduction first, then the filter over the last factor <= 3 (visually identical).
    kw = {"reducing_gap": 3.0}
    if opts.transform == "stretch":
        return im.resize((W, W), f, **kw) if (w, h) != (W, W) else im
    if opts.transform == "center-crop":
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        return im.resize((W, W), f, box=box, **kw)
    fill = _fill(opts.pad_color, im.mode)
    if opts.transform == "pad":
        scale = W / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        inner = im.resize((nw, nh), f, **kw) if (nw, nh) != (w, h) else im
        canvas = Image.new(im.mode, (W, W), fill)
        canvas.paste(inner, ((W - nw) // 2, (W - nh) // 2))
        return canvas
    if opts.transform == "center-crop-wide":
        aspect = W / H
        if w / h > aspect:
            cw, ch = h * aspect, h
        else:
            cw, ch = w, w / aspect
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        inner = im.resize((W, H), f, box=box, **kw)
        canvas = Image.new(im.mode, (W, W), fill)
        canvas.paste(inner, (0, (W - H) // 2))
        return canvas
    raise ValueError(f"unknown transform {opts.transform!r}")


def _fill(rgb, mode):
    if mode == "L":
        r, g, b = rgb[:3]
        return int(round(0.299 * r + 0.587 * g + 0.114 * b))
    return tuple(rgb[:3])
