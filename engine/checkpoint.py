"""Our snapshot format, and loading of every network file a user may bring.

Our snapshot (`network-snapshot-NNNNNN.pt`, exports) is `torch.save` of plain data only, so it opens with
`torch.load(weights_only=True)`:

    {'format': 'stylegan-studio', 'version': 1,
     'G_ema': {'kwargs': G.init_kwargs, 'state': state_dict},     # the only required entry
     'G': {...}, 'D': {...}, 'augment': {...}, 'progress': {...}, 'optimizers': {...}, 'options': {...},
     'dataset': {...}, 'rng': {...}}

NVIDIA's PyTorch pickles (stylegan2-ada-pytorch, stylegan3 --cfg=stylegan2) and TF-era pickles are read through
the restricted unpickler in engine.nvidia.unpickler and rebuilt as our networks, which keep NVIDIA's names.
"""

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from engine.errors import UserError
from engine.nets.build import build_network, finish_network

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
    from engine import fsutil

    path = Path(path)
    fsutil.check_name_lengths(path, "snapshot file")
    directory = path.parent if str(path.parent) else Path(".")
    need = estimate_saved_size(data)
    fsutil.check_free_space(directory, need, f"the snapshot {path.name}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        if fsutil.is_disk_full(e):
            raise UserError(fsutil.disk_full_message(path, need, f"the snapshot {path.name}")) from None
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; snapshots get the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
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
    from engine.fsutil import check_name_lengths

    check_name_lengths(path, "network file")
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
                        f"{str(e).splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a readable snapshot ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not is_snapshot(data):
        raise UserError(f"{path} is not a network snapshot of this program (no 'format': '{FORMAT}' entry)")
    return data


def _check_zip(path):
    """A zip whose records would inflate far beyond its size is refused before torch reads it."""
    from engine.nvidia.unpickler import check_zip_expansion

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
# NVIDIA PyTorch pickles


_G_POSITIONAL = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"]
_D_POSITIONAL = ["c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
                 "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs"]


def _kwargs_from_persistent(obj, positional, attrs):
    from engine.nvidia.unpickler import init_arguments, module_state, to_plain

    args, kwargs = init_arguments(obj)
    for name, value in zip(positional, args):
        kwargs.setdefault(name, to_plain(value))
    state = module_state(obj)
    for name in attrs:
        if name not in kwargs and name in state:
            kwargs[name] = to_plain(state[name])
    return kwargs


def _refuse_stylegan3(obj, path):
    from engine.nvidia.unpickler import class_name, iter_modules

    for name, mod in iter_modules(obj):
        if class_name(mod) == "SynthesisInput" or name.split(".")[-1] == "input":
            raise UserError(f"{path} is a StyleGAN3 (-T/-R) network, a different architecture; only StyleGAN2 "
                            "networks load here (stylegan2-ada, stylegan3 --cfg=stylegan2, TF StyleGAN2/ADA)")


def _nvidia_generator(obj, path, what):
    from engine.nvidia.unpickler import PersistentObject, class_name, flat_state_dict

    if not isinstance(obj, PersistentObject) or class_name(obj) != "Generator":
        raise UserError(f"{path}: {what} is not a StyleGAN2 Generator (found {class_name(obj)})")
    _refuse_stylegan3(obj, path)
    kwargs = _kwargs_from_persistent(obj, _G_POSITIONAL, ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"])
    nested = kwargs.pop("synthesis_kwargs", None) or {}
    kwargs = {**nested, **kwargs}
    kwargs["mapping_kwargs"] = dict(kwargs.get("mapping_kwargs") or {})
    for name in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"):
        if name not in kwargs:
            raise UserError(f"{path}: {what} does not record its {name}")
    return build_network("G", kwargs, flat_state_dict(obj), path, what)


def _nvidia_discriminator(obj, path):
    from engine.nvidia.unpickler import PersistentObject, class_name, flat_state_dict

    if not isinstance(obj, PersistentObject) or class_name(obj) != "Discriminator":
        raise UserError(f"{path}: D is not a StyleGAN2 Discriminator (found {class_name(obj)})")
    kwargs = _kwargs_from_persistent(obj, _D_POSITIONAL, ["c_dim", "img_resolution", "img_channels"])
    for name in ("block_kwargs", "mapping_kwargs", "epilogue_kwargs"):
        if name in kwargs:
            kwargs[name] = dict(kwargs[name] or {})
    return build_network("D", kwargs, flat_state_dict(obj), path, "D")


def _augment_from_pipe(pipe):
    from engine.nvidia.unpickler import PersistentObject, flat_state_dict, init_arguments

    if not isinstance(pipe, PersistentObject):
        return None, None
    state = flat_state_dict(pipe)
    p = float(state["p"].item()) if "p" in state and state["p"].numel() == 1 else None
    _, kwargs = init_arguments(pipe)
    return p, kwargs


def _load_nvidia_pytorch(data, path, device):
    if "G_ema" not in data and "G" not in data:
        raise UserError(f"{path} holds no generator (no 'G_ema' or 'G' entry)")
    G_ema = _nvidia_generator(data["G_ema"], path, "G_ema") if data.get("G_ema") is not None else None
    G = _nvidia_generator(data["G"], path, "G") if data.get("G") is not None else None
    D = _nvidia_discriminator(data["D"], path) if data.get("D") is not None else None
    if G_ema is None:
        G_ema = _nvidia_generator(data["G"], path, "G")
    augment_p, augment_kwargs = _augment_from_pipe(data.get("augment_pipe"))
    dataset = _dataset_facts(G_ema, data.get("training_set_kwargs"))
    return {
        "G": finish_network(G, device, False),
        "D": finish_network(D, device, False),
        "G_ema": finish_network(G_ema, device, True),
        "augment_p": augment_p,
        "augment_kwargs": augment_kwargs,
        "progress": None,
        "dataset": dataset,
        "source": "nvidia-pytorch",
        "snapshot": None,
    }


def _dataset_facts(G, training_set_kwargs):
    from engine.nvidia.unpickler import to_plain

    facts = {"resolution": int(G.img_resolution), "channels": int(G.img_channels), "label_dim": int(G.c_dim)}
    if isinstance(training_set_kwargs, dict):
        tsk = to_plain(training_set_kwargs)
        if tsk.get("path") is not None:
            facts["path"] = str(tsk["path"])
            facts["name"] = Path(str(tsk["path"])).stem
    return facts


# --------------------------------------------------------------------------------------------------------------
# TF-era pickles


def _load_nvidia_tf(data, path, device):
    from engine import tf_import
    from engine.nvidia.unpickler import TFNetwork

    G_tf, D_tf, Gs_tf = data
    for name, net in (("G", G_tf), ("D", D_tf), ("Gs", Gs_tf)):
        if not isinstance(net, TFNetwork):
            raise UserError(f"{path}: the {name} entry of the TF pickle is not a network")
    out = []
    for net, kind, what in ((G_tf, "G", "G"), (D_tf, "D", "D"), (Gs_tf, "G", "Gs")):
        if kind == "G":
            kwargs, state = tf_import.convert_generator(net)
        else:
            kwargs, state = tf_import.convert_discriminator(net)
        out.append(build_network(kind, kwargs, state, path, what, fill_missing=("resample_filter",)))
    G, D, G_ema = out
    return {
        "G": finish_network(G, device, False),
        "D": finish_network(D, device, False),
        "G_ema": finish_network(G_ema, device, True),
        "augment_p": None,
        "augment_kwargs": None,
        "progress": None,
        "dataset": _dataset_facts(G_ema, None),
        "source": "nvidia-tf",
        "snapshot": None,
    }


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


def _is_tf_tuple(data):
    from engine.nvidia.unpickler import TFNetwork

    return isinstance(data, tuple) and len(data) == 3 and any(isinstance(x, TFNetwork) for x in data)


def load_network(path, device="cpu"):
    """Any supported network file -> {'G', 'D', 'G_ema', 'augment_p', 'augment_kwargs', 'progress', 'dataset',
    'source', 'snapshot'}.

    source is 'studio' (our .pt), 'nvidia-pytorch' or 'nvidia-tf'. G and D are None when the file lacks them.
    All networks are float32 and in eval mode on `device`; G_ema has requires_grad False.
    """
    from engine.nvidia.unpickler import ModuleGraphError

    path = _check_readable(path)
    device = torch.device(device)
    try:
        from engine import export  # safetensors exports (source 'safetensors'): the weights or the .json beside them

        if export.is_safetensors_export(path):
            return export.load_safetensors_network(path, device)
        _check_zip(path)
        return _load_network(path, device)
    except ModuleGraphError as e:
        raise UserError(f"{path} is not a network file that can be read: {e}") from None
    except RecursionError:
        raise UserError(f"{path} is not a network file that can be read: its objects are nested too deeply") from None
    except ValueError as e:
        # Raised by the bounded copies of settings and tensors (engine.nvidia.unpickler) for crafted content.
        raise UserError(f"{path} is not a network file that can be read: {str(e)[:300]}") from None


def _load_network(path, device):
    from engine.nvidia.unpickler import read_pickle_or_user_error

    with open(path, "rb") as f:
        head = f.read(4)
    data = None
    if head.startswith(b"PK\x03\x04"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            data = None  # holds objects (NVIDIA's networks saved with torch.save): use the restricted reader
        except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
            raise UserError(f"{path} is not a readable network file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]})") from None
        if data is not None and is_snapshot(data):
            return _load_studio(data, path, device)
    if data is None:
        data = read_pickle_or_user_error(path)
    if _is_tf_tuple(data):
        return _load_nvidia_tf(data, path, device)
    if isinstance(data, dict) and ("G_ema" in data or "G" in data):
        if is_snapshot(data):
            return _load_studio(data, path, device)
        return _load_nvidia_pytorch(data, path, device)
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
