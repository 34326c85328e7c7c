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

import json
import os
import pickle
import struct
from pathlib import Path

import torch

from engine import fsutil
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
        if is_safetensors_export(path):
            return load_safetensors_network(path, device)
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


# --------------------------------------------------------------------------------------------------------------
# Safetensors exports (written by engine/export.py): the weights, and the constructor arguments in a .json beside
# them and in the file's header

SAFETENSORS_FORMAT = "stylegan-studio-safetensors"
SAFETENSORS_VERSION = 1
METADATA_KEY = "stylegan_studio"   # the JSON, also kept inside the .safetensors header: a lone file still loads


def _require_safetensors():
    try:
        import safetensors

        return safetensors
    except ImportError:
        raise UserError("reading a safetensors network needs the Python package safetensors: pip install -r "
                        "requirements.txt (or pip install safetensors)") from None


def sidecar_path(path):
    """net.safetensors -> net.json (the constructor arguments beside the weights)."""
    return Path(path).with_suffix(".json")


def _is_safetensors_header(path):
    """A safetensors file starts with a little-endian u64 header length and a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= n <= 100 * 2 ** 20


def _read_description(path):
    try:
        with open(path, "r") as f:
            info = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and info.get("format") == SAFETENSORS_FORMAT else None


def is_safetensors_export(path):
    """Whether `path` is one of a safetensors export's two files (the weights or their .json)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return _read_description(path) is not None
    return path.suffix.lower() == ".safetensors" or _is_safetensors_header(path)


def load_safetensors_network(path, device="cpu"):
    """A safetensors export (the .safetensors file or its .json) -> load_network's dict with G_ema only.

    The constructor arguments come from the .json beside the weights, or from the copy in the file's header.
    """
    path = Path(path)
    info = None
    if path.suffix.lower() == ".json":
        info = _read_description(path)
        if info is None:
            raise UserError(f"{path} is not the description of a safetensors export of this program")
        weights = path.parent / str(info.get("weights") or path.with_suffix(".safetensors").name)
        if not weights.is_file():
            raise UserError(f"{path} names the weights file {weights.name}, which is not beside it")
    else:
        weights = path
        if sidecar_path(path).is_file():
            info = _read_description(sidecar_path(path))
    st = _require_safetensors()
    try:
        with st.safe_open(str(weights), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise UserError(f"{weights} is not a readable safetensors file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if info is None and metadata.get(METADATA_KEY):
        try:
            info = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError:
            info = None
    if not isinstance(info, dict) or not isinstance(info.get("kwargs"), dict):
        raise UserError(f"{weights} has no constructor arguments: put the .json written with it beside it "
                        f"({sidecar_path(weights).name})")
    G = build_network("G", info["kwargs"], state, weights, "G_ema")
    G = G.to(torch.device(device)).eval().requires_grad_(False)
    dataset = info.get("dataset") if isinstance(info.get("dataset"), dict) else None
    return {"G": None, "D": None, "G_ema": G, "augment_p": None, "augment_kwargs": None, "progress": None,
            "dataset": dataset, "source": "safetensors", "snapshot": None}
