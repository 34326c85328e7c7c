"""Writers of network pickles with the structure of NVIDIA's files, made from our own networks.

Used by the import tests and by the trainer's transfer-learning tests:

    write_nvidia_pytorch_pkl(path, G=G, D=D, G_ema=G_ema, flavor='ada' | 'stylegan3', augment_p=0.2)
    write_nvidia_tf_pkl(path, G, D, Gs)

The PyTorch writer reproduces what `pickle.dump` of NVIDIA's snapshot dict produces: every network is a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with the module's __dict__ as meta['state'],
constructor arguments as `dnnlib.util.EasyDict`, tensors through torch's own reducers. The TF writer applies the
inverse of the documented variable table (NVIDIA_FORMATS.md) to our state dicts and pickles
`dnnlib.tflib.network.Network` objects. The `dnnlib` / `torch_utils` modules exist only while a file is written.
"""

import collections
import contextlib
import math
import pickle
import sys
import types

import numpy as np
import torch

HARMLESS_SRC = "# network source code would be here; readers must never execute it\n"


# --------------------------------------------------------------------------------------------------------------
# Temporary modules that make pickle write NVIDIA's global names


class EasyDict(dict):
    """Dict with attribute access, pickled as dnnlib.util.EasyDict."""


class Network:
    """Pickled as dnnlib.tflib.network.Network with its state dict."""

    def __init__(self, state):
        self._state = state

    def __getstate__(self):
        return self._state


def _reconstruct_persistent_obj(meta):  # never called here: only its name is written
    raise RuntimeError("writer-side placeholder")


class _Persistent:
    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,))


@contextlib.contextmanager
def _nvidia_module_names():
    created = {}

    def module(name, **attrs):
        m = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(m, k, v)
            v.__module__ = name
        created[name] = m
        return m

    tu = types.ModuleType("torch_utils")
    created["torch_utils"] = tu
    tu.persistence = module("torch_utils.persistence", _reconstruct_persistent_obj=_reconstruct_persistent_obj)
    dn = types.ModuleType("dnnlib")
    created["dnnlib"] = dn
    dn.util = module("dnnlib.util", EasyDict=EasyDict)
    tf = types.ModuleType("dnnlib.tflib")
    created["dnnlib.tflib"] = tf
    dn.tflib = tf
    tf.network = module("dnnlib.tflib.network", Network=Network)
    saved = {name: sys.modules.get(name) for name in created}
    sys.modules.update(created)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def _easy(value):
    if isinstance(value, dict):
        return EasyDict({k: _easy(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_easy(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------------------
# PyTorch pickles


def _plain_attr(value):
    return value is None or isinstance(value, (bool, int, float, str)) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value))


def _persistent_module(module, module_src, init_kwargs=None):
    state = {
        "training": module.training,
        "_parameters": collections.OrderedDict(module._parameters),
        "_buffers": collections.OrderedDict(module._buffers),
        "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict(
            (name, _persistent_module(child, module_src) if child is not None else None)
            for name, child in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": _easy(init_kwargs or {}),
    }
    for name, value in vars(module).items():
        if not name.startswith("_") and name not in ("training", "init_kwargs") and _plain_attr(value):
            state[name] = value
    meta = {"type": "class", "version": 6, "module_src": module_src, "class_name": type(module).__name__,
            "state": state}
    return _Persistent(meta)


_G_BASE = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")


def nvidia_generator_kwargs(G, flavor):
    """NVIDIA's constructor kwargs for our G: ADA nests synthesis options, stylegan3 passes them flat."""
    kw = dict(G.init_kwargs)
    base = {k: kw.pop(k) for k in _G_BASE}
    mapping = dict(kw.pop("mapping_kwargs", None) or {})
    if flavor == "ada":
        return dict(base, mapping_kwargs=mapping, synthesis_kwargs=kw)
    if flavor == "stylegan3":
        # stylegan3's train.py records this inference-time switch; it does not change results.
        return dict(base, mapping_kwargs=mapping, fused_modconv_default="inference_only", **kw)
    raise ValueError(f"unknown flavor {flavor!r}")


def nvidia_pytorch_snapshot(G=None, D=None, G_ema=None, flavor="ada", augment_p=None, training_set_kwargs=None,
                            module_src=HARMLESS_SRC):
    """The snapshot dict NVIDIA's training loop pickles, with our networks in its persistent form."""
    data = {}
    if G is not None:
        data["G"] = _persistent_module(G, module_src, nvidia_generator_kwargs(G, flavor))
    if D is not None:
        data["D"] = _persistent_module(D, module_src, dict(D.init_kwargs))
    if G_ema is not None:
        data["G_ema"] = _persistent_module(G_ema, module_src, nvidia_generator_kwargs(G_ema, flavor))
    if augment_p is not None:
        pipe = torch.nn.Module()
        pipe.register_buffer("p", torch.tensor(float(augment_p)))
        pipe_kwargs = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1,
                           contrast=1, lumaflip=1, hue=1, saturation=1)
        p = _persistent_module(pipe, module_src, pipe_kwargs)
        p.meta["class_name"] = "AugmentPipe"
        data["augment_pipe"] = p
    else:
        data["augment_pipe"] = None
    data["training_set_kwargs"] = _easy(dict(training_set_kwargs)) if training_set_kwargs is not None else None
    return data


def write_nvidia_pytorch_pkl(path, G=None, D=None, G_ema=None, flavor="ada", augment_p=None,
                             training_set_kwargs=None, module_src=HARMLESS_SRC, protocol=4):
    """Write an NVIDIA-structured snapshot pickle (stylegan2-ada-pytorch: flavor 'ada'; stylegan3
    --cfg=stylegan2: flavor 'stylegan3'). Networks are pickled as they are (move them to the CPU first)."""
    data = nvidia_pytorch_snapshot(G=G, D=D, G_ema=G_ema, flavor=flavor, augment_p=augment_p,
                                   training_set_kwargs=training_set_kwargs, module_src=module_src)
    with _nvidia_module_names(), open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


# --------------------------------------------------------------------------------------------------------------
# TF-era pickles: the inverse of the variable table


def _tf_conv(w, flip=False):
    """torch [out, in, kh, kw] -> TF [kh, kw, in, out]."""
    v = w.detach().cpu().numpy().transpose(2, 3, 1, 0)
    if flip:
        v = v[::-1, ::-1]
    return np.ascontiguousarray(v, dtype=np.float32)


def _tf_dense(w):
    return np.ascontiguousarray(w.detach().cpu().numpy().T, dtype=np.float32)


def _np(t):
    return np.array(t.detach().cpu().numpy(), dtype=np.float32, order="C", copy=True)


def _tf_layer_params(prefix, layer, state, flip):
    """Variables of one torch layer (prefix 'synthesis.b8.conv0') under TF names {'weight', 'mod_bias', ...}."""
    out = {}
    for name, value in state.items():
        if not name.startswith(prefix + "."):
            continue
        param = name[len(prefix) + 1:]
        if param == "weight":
            out[f"{layer}/weight"] = _tf_conv(value, flip)
        elif param == "bias":
            out[f"{layer}/bias"] = _np(value)
        elif param == "noise_strength":
            out[f"{layer}/noise_strength"] = _np(value)
        elif param == "affine.weight":
            out[f"{layer}/mod_weight"] = _tf_dense(value)
        elif param == "affine.bias":
            out[f"{layer}/mod_bias"] = _np(value) - 1
    return out


def tf_generator_variables(G):
    """Our G -> ({own variables}, {'mapping': {...}, 'synthesis': {...}}) with TF names and layouts."""
    state = G.state_dict()
    arch = G.init_kwargs.get("architecture", "skip")
    res_log2 = int(math.log2(G.img_resolution))
    own = {"dlatent_avg": _np(state["mapping.w_avg"])}
    mapping = {}
    for name, value in state.items():
        if name.startswith("mapping.fc") or name.startswith("mapping.embed"):
            layer, param = name.split(".")[1:]
            tf_layer = "LabelEmbed" if layer == "embed" else f"Dense{layer[2:]}"
            mapping[f"{tf_layer}/{param}"] = _tf_dense(value) if param == "weight" else _np(value)
    synthesis = {"4x4/Const/const": _np(state["synthesis.b4.const"])[None]}
    for r_log2 in range(2, res_log2 + 1):
        r = 2 ** r_log2
        b = f"synthesis.b{r}"
        if r == 4:
            synthesis.update(_tf_layer_params(f"{b}.conv1", "4x4/Conv", state, False))
            synthesis["noise0"] = _np(state[f"{b}.conv1.noise_const"])[None, None]
        else:
            synthesis.update(_tf_layer_params(f"{b}.conv0", f"{r}x{r}/Conv0_up", state, True))
            synthesis.update(_tf_layer_params(f"{b}.conv1", f"{r}x{r}/Conv1", state, False))
            synthesis[f"noise{2 * r_log2 - 5}"] = _np(state[f"{b}.conv0.noise_const"])[None, None]
            synthesis[f"noise{2 * r_log2 - 4}"] = _np(state[f"{b}.conv1.noise_const"])[None, None]
            if f"{b}.skip.weight" in state:
                synthesis[f"{r}x{r}/Skip/weight"] = _tf_conv(state[f"{b}.skip.weight"], flip=True)
        if f"{b}.torgb.weight" in state:
            tf_layer = f"ToRGB_lod{res_log2 - r_log2}" if arch == "orig" else f"{r}x{r}/ToRGB"
            synthesis.update(_tf_layer_params(f"{b}.torgb", tf_layer, state, False))
    return own, {"mapping": mapping, "synthesis": synthesis}


def tf_discriminator_variables(D):
    """Our D -> {TF variable name: array}."""
    state = D.state_dict()
    arch = D.init_kwargs.get("architecture", "resnet")
    res_log2 = int(math.log2(D.img_resolution))
    names = {"fromrgb": "FromRGB", "conv0": "Conv0", "conv1": "Conv1_down", "skip": "Skip"}
    out = {}
    for name, value in state.items():
        parts = name.split(".")
        if parts[-1] == "resample_filter":
            continue
        if parts[0] == "mapping":
            tf_layer = "LabelEmbed" if parts[1] == "embed" else f"Mapping{parts[1][2:]}"
            out[f"{tf_layer}/{parts[2]}"] = _tf_dense(value) if parts[2] == "weight" else _np(value)
            continue
        r = int(parts[0][1:])
        layer, param = parts[1], parts[2]
        if r == 4 and layer in ("conv", "fc", "out"):
            tf_layer = {"conv": "4x4/Conv", "fc": "4x4/Dense0", "out": "Output"}[layer]
            dense = layer != "conv"
        elif layer == "fromrgb" and arch == "orig":
            tf_layer, dense = f"FromRGB_lod{res_log2 - int(math.log2(r))}", False
        else:
            tf_layer, dense = f"{r}x{r}/{names[layer]}", False
        if param == "weight":
            out[f"{tf_layer}/weight"] = _tf_dense(value) if dense else _tf_conv(value)
        else:
            out[f"{tf_layer}/bias"] = _np(value)
    return out


def tf_generator_static_kwargs(G):
    kw = G.init_kwargs
    mk = dict(kw.get("mapping_kwargs") or {})
    static = dict(
        latent_size=G.z_dim, label_size=G.c_dim, dlatent_size=G.w_dim, resolution=G.img_resolution,
        num_channels=G.img_channels, mapping_layers=mk.get("num_layers", 8), mapping_lrmul=mk.get("lr_multiplier", 0.01),
        w_avg_beta=mk.get("w_avg_beta", 0.995), fmap_base=kw.get("channel_base", 32768) // 2,
        fmap_max=kw.get("channel_max", 512), num_fp16_res=kw.get("num_fp16_res", 0), conv_clamp=kw.get("conv_clamp"),
        architecture=kw.get("architecture", "skip"), resample_kernel=list(kw.get("resample_filter", [1, 3, 3, 1])),
        nonlinearity=kw.get("activation", "lrelu"), mapping_nonlinearity=mk.get("activation", "lrelu"),
        # Present in published files, ignored on import.
        truncation_psi=0.5, truncation_cutoff=None, style_mixing_prob=0.9, structure="auto")
    return static


def tf_discriminator_static_kwargs(D):
    kw = D.init_kwargs
    mk = dict(kw.get("mapping_kwargs") or {})
    ek = dict(kw.get("epilogue_kwargs") or {})
    bk = dict(kw.get("block_kwargs") or {})
    static = dict(
        label_size=D.c_dim, resolution=D.img_resolution, num_channels=D.img_channels,
        architecture=kw.get("architecture", "resnet"), fmap_base=kw.get("channel_base", 32768) // 2,
        fmap_max=kw.get("channel_max", 512), num_fp16_res=kw.get("num_fp16_res", 0), conv_clamp=kw.get("conv_clamp"),
        mapping_layers=mk.get("num_layers", 8), mapping_lrmul=mk.get("lr_multiplier", 0.01),
        mbstd_group_size=ek.get("mbstd_group_size", bk.get("mbstd_group_size", 4)),
        mbstd_num_features=ek.get("mbstd_num_channels", bk.get("mbstd_num_channels", 1)),
        nonlinearity=bk.get("activation", "lrelu"), resample_kernel=[1, 3, 3, 1], structure="auto")
    if kw.get("cmap_dim") is not None:
        static["mapping_fmaps"] = kw["cmap_dim"]
    return static


_TF_SRC = "import tensorflow as tf  # build code would be here; readers must never execute it\n"


def _tf_network(name, func, static, variables, components=None, version=4):
    return Network({
        "version": version, "name": name, "static_kwargs": static, "components": components or {},
        "build_module_src": _TF_SRC, "build_func_name": func, "variables": list(variables.items()),
    })


def tf_generator_network(G, name="G"):
    own, comps = tf_generator_variables(G)
    static = tf_generator_static_kwargs(G)
    components = {
        "mapping": _tf_network(f"{name}_mapping", "G_mapping", dict(static), comps["mapping"]),
        "synthesis": _tf_network(f"{name}_synthesis", "G_synthesis_stylegan2", dict(static), comps["synthesis"]),
    }
    return _tf_network(name, "G_main", static, own, components)


def write_nvidia_tf_pkl(path, G, D, Gs, protocol=3):
    """Write a TF-era (G, D, Gs) pickle of dnnlib.tflib Networks holding our networks' weights."""
    G_net = tf_generator_network(G, "G")
    Gs_net = tf_generator_network(Gs, "Gs")
    D_net = _tf_network("D", "D_stylegan2", tf_discriminator_static_kwargs(D), tf_discriminator_variables(D))
    with _nvidia_module_names(), open(path, "wb") as f:
        pickle.dump((G_net, D_net, Gs_net), f, protocol=protocol)
    return path
