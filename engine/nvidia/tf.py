"""Converting TensorFlow-era StyleGAN2 / StyleGAN2-ADA networks by variable name, without TensorFlow.

A TF pickle is a tuple (G, D, Gs) of dnnlib.tflib Networks (see engine.nvidia.unpickler.TFNetwork). Each variable is
renamed and reshaped into the PyTorch state_dict of our Generator / Discriminator (whose names are NVIDIA's):
TF convolution weights are [kh, kw, in, out] and become [out, in, kh, kw]; dense weights [in, out] become
[out, in]; TF's up-sampling convolutions (Conv0_up, G's Skip) are transposed convolutions whose kernel is
spatially flipped relative to ours; TF adds 1 to the style (mod_bias) at run time where ours keeps it in the bias.
"""

import math
import re

import numpy as np
import torch

from engine.errors import UserError
from engine.nets.build import build_network, finish_network
from engine.nvidia.pytorch import dataset_facts
from engine.nvidia.unpickler import TFNetwork

UNTRAINED_KEY = "untrained"  # in the state of a newly initialised D that engine.nvidia.tf_export wrote


def conv_weight(v, flip=False):
    """TF [kh, kw, in, out] -> torch [out, in, kh, kw] (flip: reverse both spatial axes first)."""
    v = np.asarray(v)
    if flip:
        v = v[::-1, ::-1]
    return v.transpose(3, 2, 0, 1)


def dense_weight(v):
    """TF [in, out] -> torch [out, in]."""
    return np.asarray(v).T


def _tensor(v):
    # np.array keeps 0-d arrays 0-d (noise_strength is a scalar); ascontiguousarray would not.
    return torch.from_numpy(np.array(v, dtype=np.float32, order="C", copy=True))


def _log2(value, what):
    r = int(value)
    if r < 4 or (r & (r - 1)) != 0:
        raise UserError(f"TF network has an unsupported {what} {value}")
    return int(math.log2(r))


_G_LAYERS = {"Conv": "conv1", "Conv0_up": "conv0", "Conv1": "conv1", "ToRGB": "torgb", "Skip": "skip"}
_FLIPPED_G_LAYERS = {"Conv0_up", "Skip"}


def _g_layer_param(layer_path, tf_layer, param, value):
    """(torch name, array) for one parameter of a synthesis layer."""
    if param == "weight":
        return f"{layer_path}.weight", conv_weight(value, flip=tf_layer in _FLIPPED_G_LAYERS)
    if param == "bias":
        return f"{layer_path}.bias", np.asarray(value)
    if param == "noise_strength":
        return f"{layer_path}.noise_strength", np.asarray(value)
    if param == "mod_weight":
        return f"{layer_path}.affine.weight", dense_weight(value)
    if param == "mod_bias":
        return f"{layer_path}.affine.bias", np.asarray(value) + 1
    raise KeyError(param)


def generator_state(variables, resolution):
    """{TF variable name: array} of G (or Gs) -> (torch state dict, facts {'architecture', ...})."""
    state = {}
    torgb_lod = False
    skip_layers = False
    res_log2 = _log2(resolution, "resolution")
    for name, value in variables.items():
        m = None
        if name == "dlatent_avg":
            state["mapping.w_avg"] = np.asarray(value)
        elif m := re.fullmatch(r"mapping/Dense(\d{1,4})/(weight|bias)", name):
            key = f"mapping.fc{int(m[1])}.{m[2]}"
            state[key] = dense_weight(value) if m[2] == "weight" else np.asarray(value)
        elif m := re.fullmatch(r"mapping/LabelEmbed/(weight|bias)", name):
            state[f"mapping.embed.{m[1]}"] = dense_weight(value) if m[1] == "weight" else np.asarray(value)
        elif name == "synthesis/4x4/Const/const":
            state["synthesis.b4.const"] = np.asarray(value)[0]
        elif m := re.fullmatch(r"synthesis/noise(\d{1,4})", name):
            k = int(m[1])
            if k == 0:
                path = "synthesis.b4.conv1"
            elif k % 2 == 1:
                path = f"synthesis.b{2 ** ((k + 5) // 2)}.conv0"
            else:
                path = f"synthesis.b{2 ** ((k + 4) // 2)}.conv1"
            state[f"{path}.noise_const"] = np.asarray(value)[0, 0]
        elif m := re.fullmatch(r"synthesis/(\d{1,4})x(\d{1,4})/(Conv|Conv0_up|Conv1|ToRGB|Skip)/"
                                r"(weight|bias|noise_strength|mod_weight|mod_bias)", name):
            at_4x4 = m[1] == "4"
            if m[1] != m[2] or (m[3] == "Conv" and not at_4x4) or (m[3] in ("Conv0_up", "Conv1", "Skip") and at_4x4):
                raise UserError(f"TF network variable {name} is not a StyleGAN2 generator variable")
            skip_layers |= m[3] == "Skip"
            key, arr = _g_layer_param(f"synthesis.b{int(m[1])}.{_G_LAYERS[m[3]]}", m[3], m[4], value)
            state[key] = arr
        elif m := re.fullmatch(r"synthesis/ToRGB_lod(\d{1,4})/(weight|bias|mod_weight|mod_bias)", name):
            torgb_lod = True
            r = 2 ** (res_log2 - int(m[1]))
            key, arr = _g_layer_param(f"synthesis.b{r}.torgb", "ToRGB", m[2], value)
            state[key] = arr
        elif re.fullmatch(r"mapping/LabelConcat/.*", name):
            raise UserError("TF network uses StyleGAN2's label concatenation (LabelConcat), which this importer "
                            "does not support; conditional StyleGAN2-ADA networks (LabelEmbed) are supported")
        elif "lod" == name.split("/")[-1] or name.endswith("/lod"):
            raise UserError("TF network is a progressive-growing StyleGAN (1) network; only StyleGAN2 and "
                            "StyleGAN2-ADA networks are supported")
        else:
            raise UserError(f"TF network variable {name!r} is not a StyleGAN2 generator variable")
    return {k: _tensor(v) for k, v in state.items()}, {"torgb_lod": torgb_lod, "skip_layers": skip_layers}


_D_LAYERS = {"FromRGB": "fromrgb", "Conv0": "conv0", "Conv1_down": "conv1", "Skip": "skip"}


def discriminator_state(variables, resolution):
    """{TF variable name: array} of D -> (torch state dict, facts {'fromrgb_lod', ...})."""
    state = {}
    fromrgb_lod = False
    res_log2 = _log2(resolution, "resolution")
    for name, value in variables.items():
        m = None
        if m := re.fullmatch(r"(\d{1,4})x(\d{1,4})/(FromRGB|Conv0|Conv1_down|Skip)/(weight|bias)", name):
            if m[1] != m[2]:
                raise UserError(f"TF network variable {name!r} is not a StyleGAN2 discriminator variable")
            key = f"b{int(m[1])}.{_D_LAYERS[m[3]]}.{m[4]}"
            state[key] = conv_weight(value) if m[4] == "weight" else np.asarray(value)
        elif m := re.fullmatch(r"4x4/Conv/(weight|bias)", name):
            state[f"b4.conv.{m[1]}"] = conv_weight(value) if m[1] == "weight" else np.asarray(value)
        elif m := re.fullmatch(r"4x4/Dense0/(weight|bias)", name):
            state[f"b4.fc.{m[1]}"] = dense_weight(value) if m[1] == "weight" else np.asarray(value)
        elif m := re.fullmatch(r"Output/(weight|bias)", name):
            state[f"b4.out.{m[1]}"] = dense_weight(value) if m[1] == "weight" else np.asarray(value)
        elif m := re.fullmatch(r"LabelEmbed/(weight|bias)", name):
            state[f"mapping.embed.{m[1]}"] = dense_weight(value) if m[1] == "weight" else np.asarray(value)
        elif m := re.fullmatch(r"Mapping(\d{1,4})/(weight|bias)", name):
            state[f"mapping.fc{int(m[1])}.{m[2]}"] = dense_weight(value) if m[2] == "weight" else np.asarray(value)
        elif m := re.fullmatch(r"FromRGB_lod(\d{1,4})/(weight|bias)", name):
            fromrgb_lod = True
            r = 2 ** (res_log2 - int(m[1]))
            state[f"b{r}.fromrgb.{m[2]}"] = conv_weight(value) if m[2] == "weight" else np.asarray(value)
        elif name.split("/")[-1] == "lod":
            raise UserError("TF network is a progressive-growing StyleGAN (1) network; only StyleGAN2 and "
                            "StyleGAN2-ADA networks are supported")
        else:
            raise UserError(f"TF network variable {name!r} is not a StyleGAN2 discriminator variable")
    return {k: _tensor(v) for k, v in state.items()}, {"fromrgb_lod": fromrgb_lod}


def _kw(kwargs, name, default):
    value = kwargs.get(name, default)
    return default if value is None and default is not None else value


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _filter(values):
    return [int(x) if float(x).is_integer() else float(x) for x in values]


def generator_kwargs(static_kwargs, state, facts):
    """TF G static kwargs (+ facts read from the variables) -> our Generator(**kwargs)."""
    kw = {k: _plain(v) for k, v in static_kwargs.items()}
    if int(_kw(kw, "fmap_min", 1)) != 1 or float(_kw(kw, "fmap_decay", 1.0)) != 1.0:
        raise UserError("TF generator uses fmap_min/fmap_decay settings that StyleGAN2-ADA PyTorch cannot express")
    resolution = int(_kw(kw, "resolution", 1024))
    z_dim = int(_kw(kw, "latent_size", 512))
    w_dim = int(_kw(kw, "dlatent_size", 512))
    c_dim = int(_kw(kw, "label_size", 0))
    fc_ids = sorted(int(k.split(".")[1][2:]) for k in state if re.fullmatch(r"mapping\.fc\d{1,4}\.weight", k))
    if not fc_ids:
        raise UserError("TF generator has no mapping network variables")
    # Structural facts are read from the weights themselves: static kwargs often omit defaults.
    num_layers = len(fc_ids)
    w_dim = int(state[f"mapping.fc{fc_ids[-1]}.weight"].shape[0])
    layer_features = int(state["mapping.fc0.weight"].shape[0]) if num_layers > 1 else None
    embed_features = int(state["mapping.embed.weight"].shape[0]) if "mapping.embed.weight" in state else None
    img_channels = None
    for k, v in state.items():
        if k.endswith("torgb.weight"):
            img_channels = int(v.shape[0])
    img_channels = img_channels or int(_kw(kw, "num_channels", 3))
    architecture = str(_kw(kw, "architecture", "skip"))
    if facts["torgb_lod"]:
        architecture = "orig"
    elif facts["skip_layers"]:
        architecture = "resnet"
    mapping_kwargs = {
        "num_layers": num_layers,
        "activation": str(_kw(kw, "mapping_nonlinearity", "lrelu")),
        "lr_multiplier": float(_kw(kw, "mapping_lrmul", 0.01)),
        "w_avg_beta": float(_kw(kw, "w_avg_beta", 0.995)),
    }
    if layer_features is not None:
        mapping_kwargs["layer_features"] = layer_features
    if embed_features is not None:
        mapping_kwargs["embed_features"] = embed_features
    kwargs = {
        "z_dim": z_dim,
        "c_dim": c_dim,
        "w_dim": w_dim,
        "img_resolution": resolution,
        "img_channels": img_channels,
        "mapping_kwargs": mapping_kwargs,
        "channel_base": int(_kw(kw, "fmap_base", 16 << 10)) * 2,
        "channel_max": int(_kw(kw, "fmap_max", 512)),
        "num_fp16_res": int(_kw(kw, "num_fp16_res", 0)),
        "conv_clamp": kw.get("conv_clamp"),
        "architecture": architecture,
        "resample_filter": _filter(_kw(kw, "resample_kernel", [1, 3, 3, 1])),
        "use_noise": bool(_kw(kw, "use_noise", True)),
        "activation": str(_kw(kw, "nonlinearity", "lrelu")),
    }
    return kwargs


def discriminator_kwargs(static_kwargs, state, facts):
    """TF D static kwargs (+ facts read from the variables) -> our Discriminator(**kwargs)."""
    kw = {k: _plain(v) for k, v in static_kwargs.items()}
    if int(_kw(kw, "fmap_min", 1)) != 1 or float(_kw(kw, "fmap_decay", 1.0)) != 1.0:
        raise UserError("TF discriminator uses fmap_min/fmap_decay settings that StyleGAN2-ADA PyTorch cannot express")
    c_dim = int(_kw(kw, "label_size", 0))
    img_channels = None
    for k, v in state.items():
        if k.endswith("fromrgb.weight"):
            img_channels = int(v.shape[1])
    architecture = str(_kw(kw, "architecture", "resnet"))
    if facts["fromrgb_lod"]:
        architecture = "orig"
    elif any(k.endswith(".skip.weight") for k in state):
        architecture = "resnet"
    cmap_dim = None
    if c_dim > 0:
        cmap_dim = int(state["b4.out.weight"].shape[0])
    map_ids = [k for k in state if re.fullmatch(r"mapping\.fc\d{1,4}\.weight", k)]
    # The label mapping runs with the blocks' nonlinearity, as NVIDIA's converter builds it.
    mapping_kwargs = {"num_layers": len(map_ids), "lr_multiplier": float(_kw(kw, "mapping_lrmul", 0.1)),
                      "activation": str(_kw(kw, "nonlinearity", "lrelu"))}
    if "mapping.embed.weight" in state:
        mapping_kwargs["embed_features"] = int(state["mapping.embed.weight"].shape[0])
    if map_ids:
        mapping_kwargs["layer_features"] = int(state["mapping.fc0.weight"].shape[0])
    block_kwargs = {"activation": str(_kw(kw, "nonlinearity", "lrelu")),
                    "resample_filter": _filter(_kw(kw, "resample_kernel", [1, 3, 3, 1]))}
    if kw.get("freeze_layers"):
        block_kwargs["freeze_layers"] = int(kw["freeze_layers"])
    # An explicit None is the whole batch as one group (written by engine.nvidia.tf_export); absent is TF's 4.
    group = kw.get("mbstd_group_size", 4)
    epilogue_kwargs = {
        "mbstd_group_size": int(group) if group is not None else None,
        "mbstd_num_channels": int(_kw(kw, "mbstd_num_features", 1)),
        "activation": str(_kw(kw, "nonlinearity", "lrelu")),
    }
    return {
        "c_dim": c_dim,
        "img_resolution": int(_kw(kw, "resolution", 1024)),
        "img_channels": img_channels or int(_kw(kw, "num_channels", 3)),
        "architecture": architecture,
        "channel_base": int(_kw(kw, "fmap_base", 16 << 10)) * 2,
        "channel_max": int(_kw(kw, "fmap_max", 512)),
        "num_fp16_res": int(_kw(kw, "num_fp16_res", 0)),
        "conv_clamp": kw.get("conv_clamp"),
        "cmap_dim": cmap_dim,
        "block_kwargs": block_kwargs,
        "mapping_kwargs": mapping_kwargs,
        "epilogue_kwargs": epilogue_kwargs,
    }


def convert_generator(net):
    """TFNetwork G or Gs -> (Generator kwargs, state dict)."""
    static = dict(net.static_kwargs)
    for comp in net.components.values():
        # Components record the full keyword set the top network passed down; the top one's wins.
        for k, v in getattr(comp, "static_kwargs", {}).items():
            static.setdefault(k, v)
    if "resolution" not in static:
        raise UserError(f"TF generator {net.name!r} does not record its resolution")
    state, facts = generator_state(net.all_variables(), static["resolution"])
    return generator_kwargs(static, state, facts), state


def convert_discriminator(net):
    """TFNetwork D -> (Discriminator kwargs, state dict)."""
    static = dict(net.static_kwargs)
    if "resolution" not in static:
        raise UserError(f"TF discriminator {net.name!r} does not record its resolution")
    state, facts = discriminator_state(net.all_variables(), static["resolution"])
    return discriminator_kwargs(static, state, facts), state


# --------------------------------------------------------------------------------------------------------------
# The whole file


def is_tf_pickle(data):
    """Whether the unpickled `data` is the (G, D, Gs) tuple of a TF-era pickle."""
    return isinstance(data, tuple) and len(data) == 3 and any(isinstance(x, TFNetwork) for x in data)


def load(data, path, device):
    """The (G, D, Gs) tuple of a TF-era pickle -> load_network's dict (source 'nvidia-tf'), Gs as G_ema."""
    G_tf, D_tf, Gs_tf = data
    for name, net in (("G", G_tf), ("D", D_tf), ("Gs", Gs_tf)):
        if not isinstance(net, TFNetwork):
            raise UserError(f"{path}: the {name} entry of the TF pickle is not a network")
    # Files of engine.nvidia.tf_export for a network without G or D: the G entry is the Gs network itself, the D
    # entry is marked untrained; both are read as absent.
    absent = {"G": G_tf is Gs_tf, "D": D_tf.state.get(UNTRAINED_KEY) is True, "Gs": False}
    out = []
    for net, kind, what in ((G_tf, "G", "G"), (D_tf, "D", "D"), (Gs_tf, "G", "Gs")):
        if absent[what]:
            out.append(None)
            continue
        if kind == "G":
            kwargs, state = convert_generator(net)
        else:
            kwargs, state = convert_discriminator(net)
        out.append(build_network(kind, kwargs, state, path, what, fill_missing=("resample_filter",)))
    G, D, G_ema = out
    return {
        "G": finish_network(G, device, False),
        "D": finish_network(D, device, False),
        "G_ema": finish_network(G_ema, device, True),
        "augment_p": None,
        "augment_kwargs": None,
        "progress": None,
        "dataset": dataset_facts(G_ema, None),
        "source": "nvidia-tf",
        "snapshot": None,
    }
