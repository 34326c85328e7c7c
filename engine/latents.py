"""Latents as files: NVIDIA's projected_w.npz, and a small named library of latents inside the workdir.

A latent here is always ws [N, num_ws, w_dim] float32 (what G.synthesis takes). Every file we write also records
the identity of the network it belongs to (shapes plus a fingerprint of its weights), so a latent is never fed to
a network it was not made for: a shape mismatch or a different fingerprint is one clear UserError.

projected_w.npz keeps NVIDIA's key 'w' ([1, num_ws, w_dim] float32) and adds 'network' (a JSON string), which
NVIDIA's generate.py ignores.

The library is a folder (<workdir>/latents) holding, per saved latent NAME:
    NAME.npz    'w' [1, num_ws, w_dim] float32 and 'network' (JSON identity)
    NAME.png    thumbnail (the image the latent makes, at most 256 px)
    NAME.json   {'name', 'kind': 'seed'|'projection'|'edit'|..., 'network': identity, 'created', ...details}
"""

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError

LIBRARY_FOLDER = "latents"
THUMB_SIZE = 256
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}")


# --------------------------------------------------------------------------------------------------------------
# Network identity


def network_identity(G):
    """{'z_dim', 'w_dim', 'num_ws', 'c_dim', 'img_resolution', 'img_channels', 'fingerprint'} of a generator.

    The fingerprint hashes w_avg and the 4x4 constant rounded to float16, so an fp16 export of a network and the
    network itself have the same identity, while two trained networks (or two runs) do not.
    """
    h = hashlib.sha256()
    for name in ("mapping.w_avg", "synthesis.b4.const"):
        t = _tensor(G, name)
        if t is not None:
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return {
        "z_dim": int(G.z_dim), "w_dim": int(G.w_dim), "num_ws": int(G.num_ws), "c_dim": int(G.c_dim),
        "img_resolution": int(G.img_resolution), "img_channels": int(G.img_channels),
        "fingerprint": h.hexdigest()[:16],
    }


def _tensor(G, name):
    state = dict(G.named_buffers())
    state.update(dict(G.named_parameters()))
    return state.get(name)


def check_ws(ws, G, source):
    """ws as np/torch [N, num_ws, w_dim] (or [num_ws, w_dim]) -> float32 tensor [N, num_ws, w_dim] on G's device.

    UserError naming `source` when the shape belongs to another network.
    """
    if not torch.is_tensor(ws):
        ws = np.asarray(ws)
        if ws.dtype.kind not in "fiub":
            raise UserError(f"{source} holds a latent of {ws.dtype} values, not of numbers")
        ws = ws.astype(np.float32)
    ws = torch.as_tensor(ws, dtype=torch.float32)
    if ws.ndim == 2:
        ws = ws.unsqueeze(0)
    want = (int(G.num_ws), int(G.w_dim))
    if ws.ndim != 3 or tuple(ws.shape[1:]) != want or ws.shape[0] < 1:
        raise UserError(f"{source} holds a latent of shape {list(ws.shape)}, but this network takes "
                        f"[N, {want[0]}, {want[1]}]: it was made for another network")
    if not torch.isfinite(ws).all():
        raise UserError(f"{source} holds a latent with NaN or infinite values")
    device = next(iter(G.parameters())).device
    return ws.to(device)


def check_identity(saved, G, source):
    """UserError when `saved` (an identity dict or None) names another network than G."""
    if not saved:
        return
    mine = network_identity(G)
    for key in ("w_dim", "num_ws", "img_resolution", "img_channels", "c_dim"):
        if key not in saved:
            continue
        try:
            theirs = int(saved[key])
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{source} records a damaged network identity ({key} {repr(saved[key])[:40]}): "
                            "make the latent again") from None
        if theirs != mine[key]:
            raise UserError(f"{source} was made for another network ({key} {theirs}, this one has "
                            f"{mine[key]}): choose a latent of this network")
    if saved.get("fingerprint") and saved["fingerprint"] != mine["fingerprint"]:
        raise UserError(f"{source} was made for another network (fingerprint {str(saved['fingerprint'])[:40]}, "
                        f"this one is {mine['fingerprint']}): choose a latent of this network")


# --------------------------------------------------------------------------------------------------------------
# NVIDIA's projected_w.npz


def save_w(path, ws, G):
    """Write ws [N, num_ws, w_dim] as npz with NVIDIA's key 'w' plus our 'network' identity. Returns the Path."""
    from engine.media import atomic_write

    w = torch.as_tensor(ws).detach().to("cpu", torch.float32).numpy()
    ident = json.dumps(network_identity(G))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, w=w, network=np.array(ident))

    return atomic_write(path, write)


def read_npz(path, what="latent file"):
    """Open an npz without pickles -> dict of arrays. UserError for a missing, unreadable or damaged file.

    The archive's records and each array's declared size are checked before anything is read: a header of a few
    bytes that declares 10**12 values is refused, not allocated.
    """
    from engine.nvidia.unpickler import check_zip_expansion

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    if head != b"PK\x03\x04":  # np.load would read a lone .npy at the size its header declares
        raise UserError(f"{path} is not a readable .npz {what} (not a zip archive of arrays, as numpy.savez "
                        "writes)")
    try:
        check_zip_expansion(path, "the archive")
        with np.load(path, allow_pickle=False) as data:
            for name in data.zip.namelist():
                _check_declared_size(data.zip, name)
            return {k: data[k] for k in data.files}
    except Exception as e:  # zipfile and numpy's header parser raise many kinds of errors for damaged records
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable .npz {what} ({first})") from None


def _check_declared_size(zf, name):
    """ValueError when the .npy record `name` declares more data than it holds."""
    if not name.endswith(".npy"):
        return
    info = zf.getinfo(name)
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    need = dtype.itemsize
    for n in shape:
        need *= int(n)
    if need > info.file_size:
        raise ValueError(f"{name} declares {need:,} bytes of data and holds {info.file_size:,}")


def identity_of(data):
    """The 'network' identity stored in an npz dict, or None (NVIDIA's files have none)."""
    raw = data.get("network")
    if raw is None:
        return None
    try:
        ident = json.loads(str(raw.item() if hasattr(raw, "item") else raw))
    except (ValueError, TypeError, RecursionError):
        return None
    return ident if isinstance(ident, dict) else None


def load_w(path, G):
    """projected_w.npz (ours or NVIDIA's) -> ws [N, num_ws, w_dim] on G's device, checked against G."""
    data = read_npz(path)
    if "w" not in data:
        raise UserError(f"{path} has no 'w' array (keys: {', '.join(sorted(data)) or 'none'}): "
                        "use a projected_w.npz written by project")
    check_identity(identity_of(data), G, str(path))
    return check_ws(data["w"], G, str(path))


# --------------------------------------------------------------------------------------------------------------
# The library


def library_folder(workdir):
    return Path(workdir) / LIBRARY_FOLDER


def check_name(name):
    """A latent name: letters, digits, space, '_', '-', '.'; 1-64 characters, starting with a letter or digit."""
    name = str(name or "").strip()
    if not _NAME_RE.fullmatch(name) or name.endswith("."):
        raise UserError(f"latent name {name!r} is not allowed: use 1-64 letters, digits, spaces, '_', '-' or '.', "
                        "starting with a letter or digit")
    return name


def _thumbnail(image):
    from PIL import Image

    from engine.media import to_pil

    im = to_pil(image)
    if max(im.size) > THUMB_SIZE:
        im = im.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
    return im


def save_latent(folder, name, ws, G, kind, image=None, overwrite=False, **details):
    """Save ws [1, num_ws, w_dim] as `name` in the library folder, with its thumbnail and G's identity.

    kind: how it was made ('seed', 'projection', 'edit', ...); details: plain values (seed, psi, class, ...).
    image: np uint8 [H, W, C] that ws makes (rendered here when None). Returns the entry dict.
    """
    from engine.generate import synthesize
    from engine.media import atomic_write

    name = check_name(name)
    ws = check_ws(ws, G, f"latent {name!r}")
    if ws.shape[0] != 1:
        raise UserError(f"latent {name!r} holds {ws.shape[0]} latents; the library keeps one per name")
    folder = Path(folder)
    paths = [folder / f"{name}.{ext}" for ext in ("npz", "png", "json")]
    if not overwrite and any(p.exists() for p in paths):
        raise UserError(f"a latent named {name!r} already exists in {folder}: choose another name")
    if image is None:
        image = synthesize(G, ws, noise_mode=details.get("noise_mode", "const"))[0]
    entry = {"name": name, "kind": str(kind), "network": network_identity(G),
             "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **_plain(details)}
    save_w(paths[0], ws, G)
    thumb = _thumbnail(image)
    atomic_write(paths[1], lambda tmp: thumb.save(tmp, format="PNG"))
    atomic_write(paths[2], lambda tmp: Path(tmp).write_text(json.dumps(entry, indent=1) + "\n"))
    return dict(entry, path=str(paths[0]), thumbnail=str(paths[1]))


def _plain(details):
    out = {}
    for k, v in details.items():
        if isinstance(v, (np.generic,)):
            v = v.item()
        if v is None or isinstance(v, (str, int, float, bool, list, dict)):
            out[str(k)] = v
        else:
            out[str(k)] = str(v)
    return out


def list_latents(folder, G=None):
    """Entries of the library, newest first. With G, each entry has 'compatible' (made for this network)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mine = network_identity(G) if G is not None else None
    entries = []
    for meta in folder.glob("*.json"):
        npz = meta.with_suffix(".npz")
        # A name save_latent would refuse was not written here, and load_latent could not open it.
        if not _NAME_RE.fullmatch(meta.stem) or meta.stem.endswith(".") or not npz.is_file():
            continue
        try:
            entry = json.loads(meta.read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(entry, dict):
            continue
        if not isinstance(entry.get("network"), dict):
            entry["network"] = {}
        entry["name"] = meta.stem
        entry["path"] = str(npz)
        thumb = meta.with_suffix(".png")
        entry["thumbnail"] = str(thumb) if thumb.is_file() else None
        if mine is not None:
            net = entry.get("network") or {}
            entry["compatible"] = net.get("fingerprint") == mine["fingerprint"] and \
                net.get("num_ws") == mine["num_ws"] and net.get("w_dim") == mine["w_dim"]
        entries.append(entry)
    entries.sort(key=lambda e: (str(e.get("created", "")), e["name"]), reverse=True)
    return entries


def load_latent(folder, name, G):
    """The saved latent `name` -> ws [1, num_ws, w_dim] on G's device. UserError when missing or of another network."""
    name = check_name(name)
    path = Path(folder) / f"{name}.npz"
    if not path.is_file():
        raise UserError(f"no latent named {name!r} in {folder}")
    return load_w(path, G)


def delete_latent(folder, name):
    name = check_name(name)
    removed = False
    for ext in ("npz", "png", "json"):
        p = Path(folder) / f"{name}.{ext}"
        if p.is_file():
            p.unlink()
            removed = True
    if not removed:
        raise UserError(f"no latent named {name!r} in {folder}")


def load_many(folder, names, G):
    """Saved latents by name -> ws [len(names), num_ws, w_dim], each checked against G."""
    names = [n for n in (str(x).strip() for x in names) if n]
    if not names:
        raise UserError("no latent names given: list saved latents, e.g. smile,frown")
    return torch.cat([load_latent(folder, n, G) for n in names])


def walk_frames(G, keys, frames_per_key=24, kind="cubic", loop=False, noise_mode="const", batch=8):
    """Yield images (np uint8 [H, W, C]) walking through keyframe latents keys [K, num_ws, w_dim] in w
    (kind 'linear' or 'cubic', the video command's interpolations; loop returns to the first key)."""
    from engine.generate import check_interpolation, interpolate_keyframes, synthesize

    kind = check_interpolation("w", kind)
    if keys.shape[0] < 2:
        raise UserError("a walk needs at least 2 latents")
    path = interpolate_keyframes(keys, frames_per_key, kind, loop)
    for i in range(0, path.shape[0], batch):
        yield from synthesize(G, path[i:i + batch], noise_mode=noise_mode, batch=batch)
