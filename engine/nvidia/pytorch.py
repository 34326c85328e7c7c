"""NVIDIA's PyTorch pickles (stylegan2-ada-pytorch, stylegan3 --cfg=stylegan2) rebuilt as our networks.

The unpickler hands over each network as a PersistentObject: the arguments its constructor was called with and
the module tree with its tensors. The constructor arguments become our settings (NVIDIA's names are ours), the
tensors keep their names, and engine.nets.build checks both before anything is built.
"""

from pathlib import Path

from engine.errors import UserError
from engine.nets.build import build_network, finish_network
from engine.nvidia.unpickler import (PersistentObject, class_name, flat_state_dict, init_arguments, iter_modules,
                                     module_state, to_plain)


_G_POSITIONAL = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"]
_D_POSITIONAL = ["c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
                 "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs"]


def _kwargs_from_persistent(obj, positional, attrs):
    args, kwargs = init_arguments(obj)
    for name, value in zip(positional, args):
        kwargs.setdefault(name, to_plain(value))
    state = module_state(obj)
    for name in attrs:
        if name not in kwargs and name in state:
            kwargs[name] = to_plain(state[name])
    return kwargs


def _refuse_stylegan3(obj, path):
    for name, mod in iter_modules(obj):
        if class_name(mod) == "SynthesisInput" or name.split(".")[-1] == "input":
            raise UserError(f"{path} is a StyleGAN3 (-T/-R) network, a different architecture; only StyleGAN2 "
                            "networks load here (stylegan2-ada, stylegan3 --cfg=stylegan2, TF StyleGAN2/ADA)")


def _generator(obj, path, what):
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


def _discriminator(obj, path):
    if not isinstance(obj, PersistentObject) or class_name(obj) != "Discriminator":
        raise UserError(f"{path}: D is not a StyleGAN2 Discriminator (found {class_name(obj)})")
    kwargs = _kwargs_from_persistent(obj, _D_POSITIONAL, ["c_dim", "img_resolution", "img_channels"])
    for name in ("block_kwargs", "mapping_kwargs", "epilogue_kwargs"):
        if name in kwargs:
            kwargs[name] = dict(kwargs[name] or {})
    return build_network("D", kwargs, flat_state_dict(obj), path, "D")


def _augment_from_pipe(pipe):
    if not isinstance(pipe, PersistentObject):
        return None, None
    state = flat_state_dict(pipe)
    p = float(state["p"].item()) if "p" in state and state["p"].numel() == 1 else None
    _, kwargs = init_arguments(pipe)
    return p, kwargs


def load(data, path, device):
    """The dict of an NVIDIA PyTorch pickle -> load_network's dict (source 'nvidia-pytorch').

    G_ema is G when the file has no G_ema; D, G and the augmentation state are taken when present.
    """
    if "G_ema" not in data and "G" not in data:
        raise UserError(f"{path} holds no generator (no 'G_ema' or 'G' entry)")
    G_ema = _generator(data["G_ema"], path, "G_ema") if data.get("G_ema") is not None else None
    G = _generator(data["G"], path, "G") if data.get("G") is not None else None
    D = _discriminator(data["D"], path) if data.get("D") is not None else None
    if G_ema is None:
        G_ema = _generator(data["G"], path, "G")
    augment_p, augment_kwargs = _augment_from_pipe(data.get("augment_pipe"))
    dataset = dataset_facts(G_ema, data.get("training_set_kwargs"))
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


def dataset_facts(G, training_set_kwargs):
    """What the network says of the data it was trained on: resolution, channels, label size, and the dataset's
    path and name when the pickle recorded its training_set_kwargs."""
    facts = {"resolution": int(G.img_resolution), "channels": int(G.img_channels), "label_dim": int(G.c_dim)}
    if isinstance(training_set_kwargs, dict):
        tsk = to_plain(training_set_kwargs)
        if tsk.get("path") is not None:
            facts["path"] = str(tsk["path"])
            facts["name"] = Path(str(tsk["path"])).stem
    return facts
