"""Our networks built from recorded settings and tensors, checked before anything is allocated.

Every network file ends here: our .pt snapshots (engine.checkpoint), safetensors exports (engine.export) and
NVIDIA's pickles once converted (engine.nvidia). The settings are held to the ranges of real StyleGAN2 networks,
the network they describe is laid out on the meta device and measured against the file, and each tensor is
compared with that layout, so that a few crafted bytes cannot ask for gigabytes.
"""

import os

import torch

from engine.nets.discriminator import Discriminator
from engine.nets.generator import Generator
from engine.errors import UserError
from engine.ops.reference import activation_funcs

# NVIDIA constructor arguments that only choose an execution strategy with identical results.
_IGNORED_KWARGS = {"fused_modconv_default", "class_name"}


# Settings every real StyleGAN2 network lies well inside (NVIDIA's published networks: up to 1024 px, z and w 512,
# 2-8 mapping layers, channel_base 16384-32768 / channel_max 512, conditional ones up to 1000 classes). They only
# keep the measuring of a network cheap; the real bound is the file's size (see _check_against_file).
_INT_LIMITS = {
    "z_dim": (0, 4096), "w_dim": (1, 4096), "c_dim": (0, 100_000), "img_resolution": (4, 4096),
    "img_channels": (1, 16), "channel_base": (1, 1 << 22), "channel_max": (1, 8192), "num_fp16_res": (0, 16),
    "num_layers": (0, 64), "embed_features": (0, 8192), "layer_features": (1, 8192), "cmap_dim": (0, 8192),
    "mbstd_group_size": (0, 4096), "mbstd_num_channels": (0, 64), "freeze_layers": (0, 64),
}
_SETTINGS_DEPTH = 4  # kwargs -> mapping_kwargs / synthesis_kwargs / block_kwargs -> resample_filter list
_SETTINGS_NODES = 2000


def check_network_settings(kwargs, path, what):
    """Refuse constructor settings outside _INT_LIMITS, or too large/deep to be a network's settings.

    Runs before anything is built, so that a few bytes of settings cannot ask for gigabytes.
    """
    budget = [_SETTINGS_NODES]

    def visit(value, key, depth):
        budget[0] -= 1
        if budget[0] < 0 or depth > _SETTINGS_DEPTH:
            raise UserError(f"{path}: the recorded settings of {what} are nested too deeply or too large to be a "
                            "network's settings")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise UserError(f"{path}: {what} has a setting named by a {type(k).__name__}, not a string")
                visit(v, k, depth + 1)
        elif isinstance(value, (list, tuple)):
            if len(value) > 64:
                raise UserError(f"{path}: {what} setting {key} is a list of {len(value)} entries (at most 64)")
            for v in value:
                visit(v, key, depth + 1)
        elif key == "activation" and value is not None:
            # Checked only when the network first runs otherwise.
            if not isinstance(value, str) or value not in activation_funcs:
                raise UserError(f"{path}: {what} setting activation={str(value)[:40]!r} is not one of "
                                f"{', '.join(sorted(activation_funcs))}")
        elif key in _INT_LIMITS and value is not None:
            lo, hi = _INT_LIMITS[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{path}: {what} setting {key} is {type(value).__name__}, not a whole number")
            if not lo <= value <= hi:
                raise UserError(f"{path}: {what} setting {key}={value} is outside {lo}..{hi}, the range of real "
                                "StyleGAN2 networks")
        elif not (value is None or isinstance(value, (bool, int, float, str))):
            raise UserError(f"{path}: {what} setting {key} is a {type(value).__name__}, not a plain value")
        elif isinstance(value, str) and len(value) > 256:
            raise UserError(f"{path}: {what} setting {key} is a string of {len(value)} characters")

    visit(kwargs, "settings", 0)


def _file_size(path):
    try:
        return os.path.getsize(path)
    except (OSError, TypeError):
        return None


def network_layout(kind, kwargs, path, what):
    """The state dict (meta tensors: shapes, no memory) of the network `kwargs` describe, after the settings
    passed check_network_settings. UserError when they do not describe a network."""
    cls = Generator if kind == "G" else Discriminator
    kwargs = {k: v for k, v in dict(kwargs).items() if k not in _IGNORED_KWARGS}
    check_network_settings(kwargs, path, what)
    try:
        with torch.device("meta"):
            return cls(**kwargs).state_dict()
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError, ZeroDivisionError,
            OverflowError) as e:
        raise UserError(f"{path}: cannot build {what} from its recorded settings ({str(e)[:300]})") from None


def _check_against_file(layout, path, what):
    """The network `layout` (a state dict of meta tensors) must fit in the file: at least one byte per value.

    Real files hold 2 (float16 export) or 4 bytes per value, so a network implied by settings that is larger
    than its file cannot be what the file holds, whatever its tensors claim to be.
    """
    size = _file_size(path)
    needed = sum(int(t.numel()) for t in layout.values())
    if size is not None and needed > size:
        raise UserError(f"{path}: the settings of {what} describe a network of {needed:,} values, more than this "
                        f"{size:,}-byte file can hold; the file is damaged or not a real network")


def build_network(kind, kwargs, state, path, what, fill_missing=()):
    """Construct our Generator/Discriminator from kwargs and load `state` into it (float32, strict names).

    kind: 'G' or 'D'. path/what name the file and entry in error messages. fill_missing: name suffixes of
    tensors the file may lack because they follow from the settings (TF files store no resample filters).
    The settings are checked, and the network is laid out on the meta device (no memory) and compared with the
    file's size and tensors, before it is built.
    """
    cls = Generator if kind == "G" else Discriminator
    kwargs = {k: v for k, v in dict(kwargs).items() if k not in _IGNORED_KWARGS}
    layout = network_layout(kind, kwargs, path, what)
    _check_against_file(layout, path, what)
    state = dict(state)
    missing = [k for k in layout if k not in state and not k.endswith(tuple(fill_missing))]
    unexpected = [k for k in state if k not in layout]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(map(str, unexpected[:4]))}{' ...' if len(unexpected) > 4 else ''}")
        raise UserError(f"{path}: {what} does not match a StyleGAN2 network ({'; '.join(parts)})")
    for name, ref in layout.items():
        if name not in state:
            continue
        value = state[name]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: {what} entry {name} is not a tensor")
        try:
            check_tensor_data(value, name)
        except ValueError as e:
            raise UserError(f"{path}: {what} {e}") from None
        if tuple(value.shape) != tuple(ref.shape):
            raise UserError(f"{path}: {what} tensor {name} has shape {list(value.shape)}, expected {list(ref.shape)}")
    try:
        net = cls(**kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise UserError(f"{path}: cannot build {what} from its recorded settings ({e})") from None
    own = net.state_dict()
    converted = {}
    for name, ref in own.items():
        value = state.get(name, ref)
        converted[name] = value.to(ref.dtype) if value.is_floating_point() else value
    net.load_state_dict(converted, strict=True)
    return net


def finish_network(net, device, frozen):
    """`net` on `device` in eval mode, its gradients off when frozen (G_ema); None stays None."""
    if net is None:
        return None
    net = net.to(device).eval()
    if frozen:
        net.requires_grad_(False)
    return net


def check_tensor_data(value, name):
    """Refuse a tensor that claims more values than its data holds (a stride-0 view of a few bytes posing as a
    large weight): every later copy of it would allocate memory the file never paid for."""
    need = value.numel() * value.element_size()
    if need and need > value.untyped_storage().nbytes():
        raise ValueError(f"tensor {name} of shape {list(value.shape)} claims more values than its data holds")
