"""Our snapshot format, and loading of every network file a user may bring.

Our snapshot (`network-snapshot-NNNNNN.pt`, exports) is `torch.save` of plain data only, so it opens with
`torch.load(weights_only=True)`:

    {'format': 'stylegan-studio', 'version': 1,
     'G_ema': {'kwargs': G.init_kwargs, 'state': state_dict},     # the only required entry
     'G': {...}, 'D': {...}, 'augment': {...}, 'progress': {...}, 'optimizers': {...}, 'options': {...},
     'dataset': {...}, 'rng': {...}}

load_network is the one door for every network file: our .pt here, safetensors exports through engine.export, and
NVIDIA's PyTorch pickles (stylegan2-ada-pytorch, stylegan3 --cfg=stylegan2) and TF-era pickles through the
engine.nvidia package (read by its restricted unpickler, rebuilt as our networks, which keep NVIDIA's names).
Every network is built by engine.nets.build, which checks the file's settings and tensors first.
"""

import os
import pickle
from pathlib import Path

import torch

from engine import export, fsutil
from engine.errors import UserError
from engine.nets.build import build_network, finish_network
from engine.nvidia import pytorch as nvidia_pytorch
from engine.nvidia import tf as nvidia_tf
from engine.nvidia.unpickler import ModuleGraphError, check_zip_expansion, first_line, read_pickle_or_user_error

FORMAT = "stylegan-studio"
VERSION = 1


# --------------------------------------------------------------------------------------------------------------
# Our snapshot


def pack_network(net, dtype=None):
    """A network -> {'kwargs': init_kwargs, 'state': state dict on the CPU} (plain data for torch.save).

    dtype: store floating tensors in this dtype (e.g. torch.float16 for a small export); None keeps them.
    """
    state = {}
    for name, value in net.state_dict().items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[name] = value.clone()
    return {"kwargs": _copy_plain(net.init_kwargs), "state": state}


def _copy_plain(value):
    if isinstance(value, dict):
        return {str(k): _copy_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy_plain(v) for v in value]
    return value


def save_snapshot(path, data):
    """torch.save `data` to `path` atomically: a crash leaves either the old file or the complete new one.

    data: plain data only (tensors, numbers, strings, lists, dicts), so that weights_only loading opens it.
    """
    path = Path(path)
    fsutil.check_name_lengths(path, "snapshot file")
    directory = path.parent if str(path.parent) else Path(".")
    need = estimate_saved_size(data)
    fsutil.check_free_space(directory, need, f"the snapshot {path.name}")
    try:
        with fsutil.atomic_open(path, "wb") as f:
            torch.save(data, f)
    except BaseException as e:
        if fsutil.is_disk_full(e):
            raise UserError(fsutil.disk_full_message(path, need, f"the snapshot {path.name}")) from None
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # directory fsync is not available everywhere; the rename itself is already atomic


def estimate_saved_size(data):
    """Bytes torch.save will write for `data`: every tensor's bytes plus the zip records around them."""
    total, count, stack = 0, 0, [data]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
            count += 1
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return total + 512 * count + (1 << 20)  # headers and alignment per tensor, the pickle itself


def _check_readable(path):
    fsutil.check_name_lengths(path, "network file")
    path = Path(path)
    if not path.exists():
        raise UserError(f"network file {path} does not exist")
    if path.is_dir():
        raise UserError(f"network file {path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"network file {path} cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise UserError(f"network file {path} is empty")
    return path


def load_snapshot(path):
    """Our .pt snapshot -> its dict (torch.load with weights_only=True). UserError for anything else."""
    path = _check_readable(path)
    _check_zip(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} is not a snapshot of this program (it holds objects other than plain data: "
                        f"{first_line(e)})") from None
    except Exception as e:  # a damaged archive makes torch raise assertions, key and type errors, ...
        raise UserError(f"{path} is not a readable snapshot ({type(e).__name__}: {first_line(e)})") from None
    if not is_snapshot(data):
        raise UserError(f"{path} is not a network snapshot of this program (no 'format': '{FORMAT}' entry)")
    return data


def _check_zip(path):
    """A zip whose records would inflate far beyond its size is refused before torch reads it."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return
    try:
        check_zip_expansion(path, "the archive")
    except ValueError as e:
        raise UserError(f"{path} is not a network file that can be read ({e})") from None


def is_snapshot(data):
    return isinstance(data, dict) and data.get("format") == FORMAT


# --------------------------------------------------------------------------------------------------------------
# Our snapshots -> networks


def _load_studio(data, path, device):
    nets = {}
    for key, kind in (("G", "G"), ("D", "D"), ("G_ema", "G")):
        entry = data.get(key)
        if entry is None:
            nets[key] = None
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("kwargs"), dict) or not isinstance(entry.get("state"), dict):
            raise UserError(f"{path}: snapshot entry {key!r} is damaged (needs 'kwargs' and 'state')")
        nets[key] = build_network(kind, entry["kwargs"], entry["state"], path, key)
    if nets["G_ema"] is None:
        if nets["G"] is None:
            raise UserError(f"{path} holds no generator (no 'G_ema' entry)")
        nets["G_ema"] = build_network("G", data["G"]["kwargs"], data["G"]["state"], path, "G")
    augment = data.get("augment") if isinstance(data.get("augment"), dict) else None
    return {
        "G": finish_network(nets["G"], device, False),
        "D": finish_network(nets["D"], device, False),
        "G_ema": finish_network(nets["G_ema"], device, True),
        "augment_p": float(augment["p"]) if augment and augment.get("p") is not None else None,
        "augment_kwargs": augment.get("kwargs") if augment else None,
        "progress": data.get("progress") if isinstance(data.get("progress"), dict) else None,
        "dataset": data.get("dataset") if isinstance(data.get("dataset"), dict) else None,
        "source": "studio",
        "snapshot": data,
    }


# --------------------------------------------------------------------------------------------------------------
# The door: any network file -> networks


def load_network(path, device="cpu"):
    """Any supported network file -> {'G', 'D', 'G_ema', 'augment_p', 'augment_kwargs', 'progress', 'dataset',
    'source', 'snapshot'}.

    source is 'studio' (our .pt), 'safetensors', 'nvidia-pytorch' or 'nvidia-tf'. G and D are None when the file lacks them.
    All networks are float32 and in eval mode on `device`; G_ema has requires_grad False.
    """
    path = _check_readable(path)
    device = torch.device(device)
    try:
        # safetensors exports (source 'safetensors'): the weights or the .json beside them
        if export.is_safetensors_export(path):
            return export.load_safetensors_network(path, device)
        _check_zip(path)
        return _load_network(path, device)
    except UserError as e:
        # The converters describe what is wrong inside the file; the user also needs to know which file.
        if str(path) in str(e):
            raise
        raise UserError(f"{path}: {e}") from None
    except ModuleGraphError as e:
        raise UserError(f"{path} is not a network file that can be read: {e}") from None
    except RecursionError:
        raise UserError(f"{path} is not a network file that can be read: its objects are nested too deeply") from None
    except ValueError as e:
        # Raised for crafted content by the bounded copies of settings (engine.nvidia.unpickler) and the tensor
        # check (engine.nets.build).
        raise UserError(f"{path} is not a network file that can be read: {first_line(e)}") from None
    except (TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
        # What the unpickler rebuilt is walked as NVIDIA lays out its networks; a file laid out otherwise (a
        # setting of another type, an entry missing) ends here.
        raise UserError(f"{path} is not a network file that can be read: its contents are not laid out as in a "
                        f"network file ({type(e).__name__}: {first_line(e)})") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read: {e.strerror or first_line(e)}") from None


# The first opcode of a pickle of protocol 0 or 1 whose top object is a dict or tuple (2 and later start with
# PROTO, 0x80, as does torch's legacy format).
_OLD_PICKLE_STARTS = {b"(", b"}", b"]", b")", b"c"}


def _load_network(path, device):
    with open(path, "rb") as f:
        head = f.read(4)
    data = None
    if head.startswith(b"PK\x03\x04"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            data = None  # holds objects (NVIDIA's networks saved with torch.save): use the restricted reader
        except Exception as e:  # a damaged archive makes torch raise assertions, key and type errors, ...
            raise UserError(f"{path} is not a readable network file ({type(e).__name__}: {first_line(e)})") from None
        if data is not None and is_snapshot(data):
            return _load_studio(data, path, device)
    if data is None:
        if not head.startswith((b"PK\x03\x04", b"\x80")) and head[:1] not in _OLD_PICKLE_STARTS:
            raise UserError(f"{path} is not a network file: it is neither a zip archive (.pt), a pickle (.pkl) nor "
                            "a safetensors export")
        data = read_pickle_or_user_error(path)
    if nvidia_tf.is_tf_pickle(data):
        return nvidia_tf.load(data, path, device)
    if isinstance(data, dict) and ("G_ema" in data or "G" in data):
        if is_snapshot(data):
            return _load_studio(data, path, device)
        return nvidia_pytorch.load(data, path, device)
    raise UserError(f"{path} is not a network file (no generator found in it)")


def export_network(src, dst, fp16=False):
    """Write G_ema of any supported network file `src` as our .pt at `dst` (the format of the demo network).

    fp16: store weights as float16 (half the size); loading converts them back to float32.
    Returns the destination Path.
    """
    loaded = load_network(src, device="cpu")
    data = {
        "format": FORMAT,
        "version": VERSION,
        "G_ema": pack_network(loaded["G_ema"], dtype=torch.float16 if fp16 else None),
    }
    if loaded.get("dataset"):
        data["dataset"] = dict(loaded["dataset"])
    save_snapshot(dst, data)
    return Path(dst)
