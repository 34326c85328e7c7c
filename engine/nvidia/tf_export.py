"""Writing our networks as a TF-era NVIDIA pickle, the file NVIDIA's `legacy.load_network_pkl` converts on load.

The inverse of engine.nvidia.tf. The top object is the tuple (G, D, Gs) of `dnnlib.tflib.network.Network`
objects; each is written as that class name and its state, a dict:

    version          4 (the TF-era format version NVIDIA's loader requires at least)
    name             'G', 'D', 'Gs'; the components 'G_mapping', 'G_synthesis', 'Gs_mapping', 'Gs_synthesis'
    static_kwargs    the TF constructor arguments: only names NVIDIA's loader knows (it refuses any other), and
                     every one it reads given explicitly, since its defaults are not ours (D's mapping_lrmul 0.1)
    components       G and Gs: {'mapping': Network, 'synthesis': Network}; D: {}
    variables        [(TF name, float32 array in TF layout)]: conv [kh, kw, in, out] (up-sampling ones flipped),
                     dense [in, out], styles' mod_bias less 1, the const and the noise inputs with leading axes
    build_func_name  'G_main', 'G_mapping', 'G_synthesis_stylegan2', 'D_stylegan2' (what they are; never run)

An array is written as the call numpy.ndarray(shape, '<f4', bytes), which NumPy 1 and NumPy 2 both resolve (a
NumPy 2 pickle of an array names numpy._core, which NumPy 1 cannot import). The file names no other global: no
class or function of this program, nothing that NVIDIA's loader or our restricted reader would refuse.

A network file without G (an export holds G_ema alone) gets Gs's network in the G slot as well: the very same
object, so nothing is stored twice and a reader that sees G is Gs knows there was no separate G. One without D
needs `untrained_d`: NVIDIA's loader builds and fills a complete D, so a newly initialised discriminator is written,
its state marked `untrained: True`; engine.nvidia.tf reads such a D back as no D.
"""

import copyreg
import math
import pickle
import re

import numpy as np
import torch

from engine.errors import UserError
from engine.nets.discriminator import Discriminator
from engine.nets.layers import FullyConnectedLayer
from engine.nvidia.tf import UNTRAINED_KEY

NETWORK_GLOBAL = ("dnnlib.tflib.network", "Network")
TF_VERSION = 4
PROTOCOL = 3  # every global as a GLOBAL opcode 'module name'; bytes as bytes (protocol 2 would encode them as text)
UNTRAINED_D_SEED = 0

# The static kwargs NVIDIA's TF loader accepts (stylegan2-ada-pytorch's and stylegan3's legacy.py; stylegan3 also
# knows 'conditioning' and 'fused_modconv', which are therefore never written).
G_KNOWN_KWARGS = frozenset((
    "latent_size", "label_size", "dlatent_size", "resolution", "num_channels", "mapping_layers", "label_fmaps",
    "mapping_fmaps", "mapping_nonlinearity", "mapping_lrmul", "w_avg_beta", "fmap_base", "fmap_max", "num_fp16_res",
    "conv_clamp", "architecture", "resample_kernel", "use_noise", "nonlinearity", "truncation_psi",
    "truncation_cutoff", "style_mixing_prob", "structure"))
D_KNOWN_KWARGS = frozenset((
    "label_size", "resolution", "num_channels", "architecture", "fmap_base", "fmap_max", "num_fp16_res", "conv_clamp",
    "mapping_fmaps", "nonlinearity", "resample_kernel", "freeze_layers", "mapping_layers", "mapping_lrmul",
    "mbstd_group_size", "mbstd_num_features", "structure"))


# --------------------------------------------------------------------------------------------------------------
# Settings: our constructor arguments -> TF static kwargs, or a refusal naming what the format cannot hold

# Our constructors' defaults (engine/nets), for settings a network's init_kwargs leave out.
_G_SYNTHESIS_DEFAULTS = {"channel_base": 32768, "channel_max": 512, "num_fp16_res": 0, "conv_clamp": None,
                         "architecture": "skip", "resample_filter": [1, 3, 3, 1], "use_noise": True,
                         "activation": "lrelu"}
_G_MAPPING_DEFAULTS = {"num_layers": 8, "embed_features": None, "layer_features": None, "activation": "lrelu",
                       "lr_multiplier": 0.01, "w_avg_beta": 0.995}
_D_TOP_DEFAULTS = {"architecture": "resnet", "channel_base": 32768, "channel_max": 512, "num_fp16_res": 0,
                   "conv_clamp": None, "cmap_dim": None}
_D_BLOCK_DEFAULTS = {"activation": "lrelu", "resample_filter": [1, 3, 3, 1], "freeze_layers": 0}
_D_MAPPING_DEFAULTS = {"num_layers": 8, "embed_features": None, "layer_features": None, "activation": "lrelu",
                       "lr_multiplier": 0.01}
_D_EPILOGUE_DEFAULTS = {"mbstd_group_size": 4, "mbstd_num_channels": 1}
# Settings that choose how a network runs (memory layout, kernel choice), never what it computes.
_EXECUTION_ONLY = frozenset(("fp16_channels_last", "fused_modconv_default", "class_name"))


def _refuse(where, what):
    raise UserError(f"{where}: {what}, which NVIDIA's TF-era network pickle cannot hold; nothing was written "
                    "(the safetensors, torchscript and onnx exports of G_ema need no such setting)")


def _settings(given, defaults, where, group):
    """given (a dict of settings) completed with defaults; a setting outside `defaults` is refused by name."""
    given = {k: v for k, v in dict(given or {}).items() if k not in _EXECUTION_ONLY}
    for key, value in given.items():
        if key not in defaults:
            _refuse(where, f"{group} setting {key}={value!r} has no TF-era equivalent")
    return {**defaults, **given}


def _fmap_base(channel_base, where):
    # The TF format stores half of channel_base (fmap_base); NVIDIA's loader doubles it back.
    if int(channel_base) != channel_base or int(channel_base) % 2:
        _refuse(where, f"channel_base {channel_base} is odd (the format stores channel_base / 2 as fmap_base)")
    return int(channel_base) // 2


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def generator_static_kwargs(G, where="G"):
    """Our Generator -> its TF static kwargs, every one NVIDIA's loader reads given explicitly."""
    kw = dict(G.init_kwargs)
    mapping = kw.pop("mapping_kwargs", None)
    for key in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"):
        kw.pop(key, None)
    kernel_size = kw.pop("kernel_size", 3)
    if kernel_size != 3:
        _refuse(where, f"kernel_size {kernel_size} (TF-era synthesis layers are 3x3)")
    s = _settings(kw, _G_SYNTHESIS_DEFAULTS, where, "synthesis")
    m = _settings(mapping, _G_MAPPING_DEFAULTS, where, "mapping")
    if m["w_avg_beta"] is None:
        _refuse(where, "the mapping network tracks no w_avg (w_avg_beta None)")
    c_dim, w_dim = int(G.c_dim), int(G.w_dim)
    embed = (m["embed_features"] if m["embed_features"] is not None else w_dim) if c_dim > 0 else None
    return {
        "latent_size": int(G.z_dim), "label_size": c_dim, "dlatent_size": w_dim,
        "resolution": int(G.img_resolution), "num_channels": int(G.img_channels),
        "mapping_layers": int(m["num_layers"]), "label_fmaps": embed,
        "mapping_fmaps": int(m["layer_features"]) if m["layer_features"] is not None else w_dim,
        "mapping_nonlinearity": str(m["activation"]), "mapping_lrmul": float(m["lr_multiplier"]),
        "w_avg_beta": float(m["w_avg_beta"]),
        "fmap_base": _fmap_base(s["channel_base"], where), "fmap_max": int(s["channel_max"]),
        "num_fp16_res": int(s["num_fp16_res"]), "conv_clamp": _plain(s["conv_clamp"]),
        "architecture": str(s["architecture"]), "resample_kernel": _plain(list(s["resample_filter"])),
        "use_noise": bool(s["use_noise"]), "nonlinearity": str(s["activation"]),
    }


def discriminator_static_kwargs(D, where="D"):
    """Our Discriminator -> its TF static kwargs.

    NVIDIA's loader gives D's mapping network and epilogue the blocks' nonlinearity, and mapping_fmaps as the
    label embedding, the mapping layers' width and cmap_dim alike: a D built otherwise is refused.
    """
    kw = dict(D.init_kwargs)
    block = dict(kw.pop("block_kwargs", None) or {})
    mapping = kw.pop("mapping_kwargs", None)
    epilogue = dict(kw.pop("epilogue_kwargs", None) or {})
    for key in ("c_dim", "img_resolution", "img_channels"):
        kw.pop(key, None)
    for key in ("mbstd_group_size", "mbstd_num_channels"):  # our D accepts these among the block settings too
        if key in block:
            epilogue.setdefault(key, block.pop(key))
    top = _settings(kw, _D_TOP_DEFAULTS, where, "discriminator")
    b = _settings(block, _D_BLOCK_DEFAULTS, where, "block")
    m = _settings(mapping, _D_MAPPING_DEFAULTS, where, "mapping")
    act = str(b["activation"])
    e = _settings(epilogue, {**_D_EPILOGUE_DEFAULTS, "activation": act}, where, "epilogue")
    if e["activation"] != act:
        _refuse(where, f"the epilogue's activation {e['activation']!r} differs from the blocks' {act!r}")
    c_dim = int(D.c_dim)
    cmap = int(D.cmap_dim) if c_dim > 0 else None
    if c_dim > 0:
        if m["activation"] != act:
            _refuse(where, f"the label mapping's activation {m['activation']!r} differs from the blocks' {act!r}")
        embed = m["embed_features"] if m["embed_features"] is not None else cmap
        layer = m["layer_features"] if m["layer_features"] is not None else cmap
        if embed != cmap or (int(m["num_layers"]) > 1 and layer != cmap):
            _refuse(where, f"the label mapping's widths (embedding {embed}, layers {layer}) differ from cmap_dim "
                           f"{cmap} (the format has one width for all three)")
    group = e["mbstd_group_size"]
    return {
        "label_size": c_dim, "resolution": int(D.img_resolution), "num_channels": int(D.img_channels),
        "architecture": str(top["architecture"]), "fmap_base": _fmap_base(top["channel_base"], where),
        "fmap_max": int(top["channel_max"]), "num_fp16_res": int(top["num_fp16_res"]),
        "conv_clamp": _plain(top["conv_clamp"]), "mapping_fmaps": cmap, "nonlinearity": act,
        "resample_kernel": _plain(list(b["resample_filter"])), "freeze_layers": int(b["freeze_layers"] or 0),
        "mapping_layers": int(m["num_layers"]), "mapping_lrmul": float(m["lr_multiplier"]),
        "mbstd_group_size": int(group) if group is not None else None,
        "mbstd_num_features": int(e["mbstd_num_channels"]),
    }


# --------------------------------------------------------------------------------------------------------------
# Variables: our state dicts -> TF names and layouts


def _array(t):
    return t.detach().to("cpu", torch.float32).numpy()


def tf_conv(t, flip=False):
    """torch [out, in, kh, kw] -> TF [kh, kw, in, out]; flip: TF's up-sampling convolutions, spatially reversed."""
    v = _array(t).transpose(2, 3, 1, 0)
    return v[::-1, ::-1] if flip else v


def tf_dense(t):
    """torch [out, in] -> TF [in, out]."""
    return _array(t).T


_G_LAYER_NAMES = {"conv0": "Conv0_up", "conv1": "Conv1", "torgb": "ToRGB", "skip": "Skip"}


def generator_variable(name, t):
    """One tensor of our Generator -> (component '' | 'mapping' | 'synthesis', TF name, array), or None for the
    resample filters (TF networks derive them from resample_kernel). KeyError for a name outside the format."""
    if name.endswith(".resample_filter"):
        return None
    if name == "mapping.w_avg":
        return "", "dlatent_avg", _array(t)
    if m := re.fullmatch(r"mapping\.(?:fc(\d+)|(embed))\.(weight|bias)", name):
        layer = "LabelEmbed" if m[2] else f"Dense{int(m[1])}"
        return "mapping", f"{layer}/{m[3]}", tf_dense(t) if m[3] == "weight" else _array(t)
    if name == "synthesis.b4.const":
        return "synthesis", "4x4/Const/const", _array(t)[None]
    m = re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb|skip)\.(.+)", name)
    if not m:
        raise KeyError(name)
    r, layer, param = int(m[1]), m[2], m[3]
    if param == "noise_const":
        k = 2 * int(math.log2(r)) - (5 if layer == "conv0" else 4)
        return "synthesis", f"noise{k}", _array(t)[None, None]
    tf_layer = "Conv" if (r == 4 and layer == "conv1") else _G_LAYER_NAMES[layer]
    prefix = f"{r}x{r}/{tf_layer}"
    if param == "weight":
        return "synthesis", f"{prefix}/weight", tf_conv(t, flip=tf_layer in ("Conv0_up", "Skip"))
    if param in ("bias", "noise_strength"):
        return "synthesis", f"{prefix}/{param}", _array(t)
    if param == "affine.weight":
        return "synthesis", f"{prefix}/mod_weight", tf_dense(t)
    if param == "affine.bias":
        # TF adds 1 to the style at run time; ours keeps it in the bias.
        return "synthesis", f"{prefix}/mod_bias", _array(t) - np.float32(1)
    raise KeyError(name)


_D_LAYER_NAMES = {"fromrgb": "FromRGB", "conv0": "Conv0", "conv1": "Conv1_down", "skip": "Skip"}
_D_EPILOGUE_NAMES = {"conv": ("4x4/Conv", False), "fc": ("4x4/Dense0", True), "out": ("Output", True)}


def discriminator_variable(name, t):
    """One tensor of our Discriminator -> (TF name, array), or None for the resample filters."""
    if name.endswith(".resample_filter"):
        return None
    if m := re.fullmatch(r"b(\d+)\.(fromrgb|conv0|conv1|skip)\.(weight|bias)", name):
        r = int(m[1])
        tf_name = f"{r}x{r}/{_D_LAYER_NAMES[m[2]]}/{m[3]}"
        return tf_name, tf_conv(t) if m[3] == "weight" else _array(t)
    if m := re.fullmatch(r"b4\.(conv|fc|out)\.(weight|bias)", name):
        tf_layer, dense = _D_EPILOGUE_NAMES[m[1]]
        value = (tf_dense(t) if dense else tf_conv(t)) if m[2] == "weight" else _array(t)
        return f"{tf_layer}/{m[2]}", value
    if m := re.fullmatch(r"mapping\.(?:fc(\d+)|(embed))\.(weight|bias)", name):
        layer = "LabelEmbed" if m[2] else f"Mapping{int(m[1])}"
        return f"{layer}/{m[3]}", tf_dense(t) if m[3] == "weight" else _array(t)
    raise KeyError(name)


def _tf_entries(module, variable, where):
    """variable(name, tensor) of every tensor of `module` -> the entries that have one (None: a tensor TF-era
    networks do not store); a tensor without a TF-era name is refused."""
    for name, t in module.state_dict().items():
        try:
            entry = variable(name, t)
        except KeyError:
            _refuse(where, f"tensor {name} has no TF-era variable name")
        if entry is not None:
            yield entry


def generator_variables(G, where="G"):
    """Our Generator -> {'': own variables, 'mapping': {...}, 'synthesis': {...}} ({TF name: array})."""
    out = {"": {}, "mapping": {}, "synthesis": {}}
    for part, tf_name, array in _tf_entries(G, generator_variable, where):
        out[part][tf_name] = array
    return out


def discriminator_variables(D, where="D"):
    """Our Discriminator -> {TF name: array}."""
    return dict(_tf_entries(D, discriminator_variable, where))


# --------------------------------------------------------------------------------------------------------------
# The (G, D, Gs) networks


class TFNetworkRecord:
    """What the file writes as one `dnnlib.tflib.network.Network`: its state dict, nothing else."""

    __slots__ = ("state",)

    def __init__(self, state):
        self.state = state

    def __repr__(self):
        return f"<TFNetworkRecord {self.state.get('name')}>"


def _record(name, func, static, variables, components=None, **extra):
    return TFNetworkRecord({
        "version": TF_VERSION, "name": name, "static_kwargs": dict(static), "components": dict(components or {}),
        "build_func_name": func, "variables": [(k, v) for k, v in variables.items()], **extra,
    })


_MAPPING_KWARGS = ("latent_size", "label_size", "dlatent_size", "mapping_layers", "label_fmaps", "mapping_fmaps",
                   "mapping_nonlinearity", "mapping_lrmul")
_SYNTHESIS_KWARGS = ("dlatent_size", "resolution", "num_channels", "fmap_base", "fmap_max", "num_fp16_res",
                     "conv_clamp", "architecture", "resample_kernel", "use_noise", "nonlinearity")


def generator_record(G, name, where):
    """Our Generator -> the TF Network `name` ('G' or 'Gs') with its mapping and synthesis components."""
    static = generator_static_kwargs(G, where)
    variables = generator_variables(G, where)
    components = {
        # The components record the settings the top network passed to them; readers take the top network's.
        "mapping": _record(f"{name}_mapping", "G_mapping", {k: static[k] for k in _MAPPING_KWARGS},
                           variables["mapping"]),
        "synthesis": _record(f"{name}_synthesis", "G_synthesis_stylegan2",
                             {k: static[k] for k in _SYNTHESIS_KWARGS}, variables["synthesis"]),
    }
    return _record(name, "G_main", static, variables[""], components)


def discriminator_record(D, where, untrained=False):
    extra = {UNTRAINED_KEY: True} if untrained else {}
    return _record("D", "D_stylegan2", discriminator_static_kwargs(D, where), discriminator_variables(D, where),
                   **extra)


def untrained_discriminator(G):
    """A newly initialised discriminator for G's images and labels (what NVIDIA's trainer starts from when it is
    given no D), the same for every call: its weights come from a fixed seed."""
    kw = G.init_kwargs
    D = Discriminator(c_dim=int(G.c_dim), img_resolution=int(G.img_resolution), img_channels=int(G.img_channels),
                      channel_base=kw.get("channel_base", 32768), channel_max=kw.get("channel_max", 512))
    # The constructor's draws come from the global generator, which other threads may use meanwhile: the weights
    # are drawn again from a generator of our own, scaled as the constructor scales them (fully connected layers
    # by 1 / their learning-rate multiplier, kept as bias_gain); biases keep their constant initial values.
    gen = torch.Generator().manual_seed(UNTRAINED_D_SEED)
    with torch.no_grad():
        for name, weight in D.named_parameters():
            if name.endswith(".weight"):
                layer = D.get_submodule(name.rsplit(".", 1)[0])
                scale = 1 / layer.bias_gain if isinstance(layer, FullyConnectedLayer) else 1
                weight.copy_(torch.randn(weight.shape, generator=gen) * scale)
    return D.eval().requires_grad_(False)


def tf_networks(G_ema, G=None, D=None, untrained_d=False, where="the network"):
    """(G, D, Gs) records for a file holding G_ema and maybe G and D.

    No G: the G slot holds the Gs record itself. No D: refused unless untrained_d, then a newly initialised D
    marked untrained. Returns ((G, D, Gs), D written: the given one or the untrained one).
    """
    if D is None and not untrained_d:
        raise UserError(f"{where} holds no discriminator (D), and NVIDIA's TF-era pickle needs a complete one: export "
                        "a training snapshot of a run (network-snapshot-*.pt), or ask for a newly initialised D "
                        "(--untrained-d; in the dashboard 'write an untrained D'): images are unaffected, its scores "
                        "mean nothing")
    Gs_rec = generator_record(G_ema, "Gs", f"{where}, G_ema")
    G_rec = generator_record(G, "G", f"{where}, G") if G is not None else Gs_rec
    if D is None:
        D = untrained_discriminator(G_ema)
        D_rec = discriminator_record(D, f"{where}, untrained D", untrained=True)
    else:
        D_rec = discriminator_record(D, f"{where}, D")
    return (G_rec, D_rec, Gs_rec), D


# --------------------------------------------------------------------------------------------------------------
# The pickle


class _Writer(pickle._Pickler):
    """pickle's Python pickler, writing records as `dnnlib.tflib.network.Network` and arrays as numpy.ndarray calls.

    The pure-Python pickler lets save_global write a class name of another program without importing it: no
    module is ever added to sys.modules, so nothing outside this writer sees the name.
    """

    def reducer_override(self, obj):
        if type(obj) is TFNetworkRecord:
            # NEWOBJ of the class, then BUILD with the state: how a dnnlib Network was pickled in TF days
            return copyreg.__newobj__, (TFNetworkRecord,), obj.state
        if isinstance(obj, np.ndarray):
            a = np.asarray(obj, dtype="<f4", order="C")  # (ascontiguousarray would make a 0-d array 1-d)
            return np.ndarray, (tuple(int(n) for n in a.shape), "<f4", a.tobytes())
        if isinstance(obj, np.generic):
            raise pickle.PicklingError(f"numpy scalar {obj!r} in a network's settings")
        return NotImplemented

    def save_global(self, obj, name=None):
        if obj is TFNetworkRecord:
            module, qualname = NETWORK_GLOBAL
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
            self.memoize(obj)
            return
        if obj is not np.ndarray:
            raise pickle.PicklingError(f"{obj!r} has no place in a TF-era network pickle")
        super().save_global(obj, name)


def write_pickle(f, networks):
    """Write the (G, D, Gs) records to the binary file object f."""
    _Writer(f, protocol=PROTOCOL).dump(tuple(networks))


# --------------------------------------------------------------------------------------------------------------
# Reading a written file back as NVIDIA's loader reads it


def _get(static, key, default):
    # A setting that is present counts even when it is None, as in NVIDIA's loader (w_avg_beta aside).
    return static[key] if key in static else default


def loader_generator_kwargs(static):
    """TF static kwargs -> our Generator kwargs, with the defaults and rules of NVIDIA's loader (not ours: ours read
    the structure from the variables, NVIDIA's from these settings alone)."""
    unknown = sorted(set(static) - G_KNOWN_KWARGS)
    if unknown:
        raise ValueError(f"NVIDIA's loader refuses the generator setting {unknown[0]!r}")
    w_avg_beta = _get(static, "w_avg_beta", 0.995)
    return {
        "z_dim": _get(static, "latent_size", 512), "c_dim": _get(static, "label_size", 0),
        "w_dim": _get(static, "dlatent_size", 512), "img_resolution": _get(static, "resolution", 1024),
        "img_channels": _get(static, "num_channels", 3),
        "mapping_kwargs": {
            "num_layers": _get(static, "mapping_layers", 8), "embed_features": _get(static, "label_fmaps", None),
            "layer_features": _get(static, "mapping_fmaps", None),
            "activation": _get(static, "mapping_nonlinearity", "lrelu"),
            "lr_multiplier": _get(static, "mapping_lrmul", 0.01), "w_avg_beta": 1 if w_avg_beta is None else w_avg_beta,
        },
        "channel_base": _get(static, "fmap_base", 16384) * 2, "channel_max": _get(static, "fmap_max", 512),
        "num_fp16_res": _get(static, "num_fp16_res", 0), "conv_clamp": _get(static, "conv_clamp", None),
        "architecture": _get(static, "architecture", "skip"),
        "resample_filter": _get(static, "resample_kernel", [1, 3, 3, 1]),
        "use_noise": _get(static, "use_noise", True), "activation": _get(static, "nonlinearity", "lrelu"),
    }


def loader_discriminator_kwargs(static):
    """TF static kwargs -> our Discriminator kwargs, with the defaults and rules of NVIDIA's loader."""
    unknown = sorted(set(static) - D_KNOWN_KWARGS)
    if unknown:
        raise ValueError(f"NVIDIA's loader refuses the discriminator setting {unknown[0]!r}")
    act = _get(static, "nonlinearity", "lrelu")
    fmaps = _get(static, "mapping_fmaps", None)
    return {
        "c_dim": _get(static, "label_size", 0), "img_resolution": _get(static, "resolution", 1024),
        "img_channels": _get(static, "num_channels", 3), "architecture": _get(static, "architecture", "resnet"),
        "channel_base": _get(static, "fmap_base", 16384) * 2, "channel_max": _get(static, "fmap_max", 512),
        "num_fp16_res": _get(static, "num_fp16_res", 0), "conv_clamp": _get(static, "conv_clamp", None),
        "cmap_dim": fmaps,
        "block_kwargs": {"activation": act, "resample_filter": _get(static, "resample_kernel", [1, 3, 3, 1]),
                         "freeze_layers": _get(static, "freeze_layers", 0)},
        "mapping_kwargs": {"num_layers": _get(static, "mapping_layers", 0), "embed_features": fmaps,
                           "layer_features": fmaps, "activation": act,
                           "lr_multiplier": _get(static, "mapping_lrmul", 0.1)},
        "epilogue_kwargs": {"mbstd_group_size": _get(static, "mbstd_group_size", None),
                            "mbstd_num_channels": _get(static, "mbstd_num_features", 1), "activation": act},
    }


def read_as_nvidia_loader(path):
    """A written file -> {'G', 'D', 'G_ema'}: our networks built from each record's settings by NVIDIA's loader's
    rules and filled from its variables by the documented name table, as NVIDIA's loader would build its own.

    Every parameter and buffer must come from the file (the resample filters aside, as there), as NVIDIA's loader
    requires; a missing or extra variable is a ValueError.
    """
    from engine.nets.build import build_network
    from engine.nvidia.tf import discriminator_state, generator_state
    from engine.nvidia.unpickler import TFNetwork, read_pickle

    data = read_pickle(path)
    if not (isinstance(data, tuple) and len(data) == 3 and all(isinstance(x, TFNetwork) for x in data)):
        raise ValueError("the file is not a (G, D, Gs) tuple of TF networks")
    out = {}
    for key, net, kind in (("G", data[0], "G"), ("D", data[1], "D"), ("G_ema", data[2], "G")):
        if not isinstance(net.state.get("version"), int) or net.state["version"] < 4:
            raise ValueError(f"{key}: NVIDIA's loader needs version 4 or later")
        static = net.static_kwargs
        if kind == "G":
            kwargs = loader_generator_kwargs(static)
            state, _ = generator_state(net.all_variables(), kwargs["img_resolution"])
        else:
            kwargs = loader_discriminator_kwargs(static)
            state, _ = discriminator_state(net.all_variables(), kwargs["img_resolution"])
        try:
            out[key] = build_network(kind, kwargs, state, path, key, fill_missing=("resample_filter",)).eval()
        except UserError as e:
            raise ValueError(str(e)) from None
    return out
