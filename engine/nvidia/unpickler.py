"""Reading NVIDIA's network pickles without running anything they embed.

NVIDIA's snapshot pickles carry the Python source of their networks and rebuild each network by executing that
source. A pickle can ask the loader to call any importable function, so a plain `pickle.load` of a downloaded file
is arbitrary code execution. This module unpickles through an allow-list instead: the few globals that real
network files use are mapped to inert stand-ins or to side-effect-free rebuild functions, and every other global
is refused before anything is called.

What comes out:
    PersistentObject  - one of NVIDIA's persistent networks (class_name + the module's __dict__ as `state`)
    ModuleStandIn     - a plain torch.nn module inside such a network (class name + state)
    TFNetwork         - a dnnlib.tflib Network of the TensorFlow era (static kwargs, components, variables)
    torch tensors, numpy arrays, dicts, lists and plain values
"""

import _compat_pickle
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import torch

from engine.errors import UserError
from engine.nets.build import check_tensor_data

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafeGlobalError(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list; `name` is 'module.qualname'."""

    def __init__(self, name):
        super().__init__(f"refused global {name}")
        self.name = name


# --------------------------------------------------------------------------------------------------------------
# Stand-ins


class PersistentObject:
    """An object NVIDIA's `torch_utils.persistence` pickled together with its source code.

    Only the data is kept: `class_name`, `version` and `state` (the module's `__dict__`). `module_src` is stored as
    text so that callers can recognise the architecture; it is never compiled or executed.
    """

    def __init__(self, meta):
        if not isinstance(meta, dict):
            raise pickle.UnpicklingError("persistent object without a metadata dict")
        if meta.get("type", "class") != "class":
            raise pickle.UnpicklingError(f"unsupported persistent object type {meta.get('type')!r}")
        name = meta.get("class_name", "")
        # str() of an arbitrary unpickled object can cost time and memory without bound: names must be text.
        if not isinstance(name, str) or len(name) > 256:
            raise pickle.UnpicklingError("persistent object whose class name is not a short string")
        self.class_name = name
        self.version = meta.get("version")
        self.module_src = meta.get("module_src") if isinstance(meta.get("module_src"), str) else ""
        state = meta.get("state")
        self.state = dict(state) if isinstance(state, dict) else {}

    def __repr__(self):
        return f"<PersistentObject {self.class_name}>"


class ModuleStandIn:
    """A plain torch.nn module (e.g. ModuleList) nested in a network; its class is never instantiated."""

    class_name = "Module"

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            merged = dict(state[0] or {})
            merged.update(state[1])
            state = merged
        self.state = dict(state) if isinstance(state, dict) else {}

    def __repr__(self):
        return f"<ModuleStandIn {self.class_name}>"


def _module_stand_in(name):
    return type(name, (ModuleStandIn,), {"class_name": name})


def _text(value):
    # Names are text in every real file; str() of another unpickled object could be made arbitrarily expensive.
    return value[:256] if isinstance(value, str) else f"<{type(value).__name__}>"


# The deepest module nesting a real network has is 4-5 levels; far more is a crafted file.
MAX_MODULE_DEPTH = 64


class ModuleGraphError(ValueError):
    """The module tree of a network file is cyclic or absurdly deep (the message completes 'the file ...')."""


class TFNetwork:
    """A `dnnlib.tflib.network.Network` of the TensorFlow era: only its recorded state is kept.

    The state holds `build_module_src` (TensorFlow code, never run), `static_kwargs`, `components` and `variables`
    ([(name, np.ndarray)]).
    """

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("TensorFlow network without a state dict")
        self.state = dict(state)

    @property
    def name(self):
        return _text(self.state.get("name", ""))

    @property
    def static_kwargs(self):
        return dict(self.state.get("static_kwargs") or {})

    @property
    def components(self):
        comps = self.state.get("components") or {}
        return dict(comps)

    @property
    def build_func_name(self):
        return _text(self.state.get("build_func_name", ""))

    @property
    def variables(self):
        return list(self.state.get("variables") or [])

    def all_variables(self):
        """{name: np.ndarray} of this network and its components, component names prefixed with 'name/'."""
        out = {}
        on_path = set()

        def visit(prefix, net):
            if id(net) in on_path or len(on_path) >= MAX_MODULE_DEPTH:
                raise ModuleGraphError(f"its TF network {_text(net.name)!r} contains itself or is nested more "
                                       f"than {MAX_MODULE_DEPTH} levels deep")
            on_path.add(id(net))
            for entry in net.variables:
                if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)
                        and isinstance(entry[1], np.ndarray)):
                    raise ValueError("its TF network has a variable that is not a (name, array) pair")
                out[prefix + entry[0]] = entry[1]
            for comp_name, comp in net.components.items():
                if isinstance(comp, TFNetwork):
                    visit(prefix + _text(comp_name) + "/", comp)
            on_path.discard(id(net))

        visit("", self)
        return out

    def __repr__(self):
        return f"<TFNetwork {self.name}>"


# --------------------------------------------------------------------------------------------------------------
# Side-effect-free replacements for the callables real files use


def _reconstruct_persistent_obj(meta):
    return PersistentObject(meta)


# torch.save writes its archives uncompressed; a compressed record may shrink a little, never by more than this.
MAX_ZIP_EXPANSION = 16


def check_zip_expansion(source, what):
    """Refuse a zip archive whose records would inflate to more than MAX_ZIP_EXPANSION x its own size.

    source: a path or a seekable binary file object (left at its start). Sizes are read from the central
    directory before anything is inflated; the zip reader then checks each record against its recorded size.
    Raises ValueError naming `what`.
    """
    if hasattr(source, "seek"):
        source.seek(0, io.SEEK_END)
        size = source.tell()
        source.seek(0)
    else:
        size = os.path.getsize(source)
    try:
        with zipfile.ZipFile(source) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise ValueError(f"{what} is a damaged zip archive ({first_line(e)})") from None
    finally:
        if hasattr(source, "seek"):
            source.seek(0)
    total = 0
    for info in infos:
        # zipfile asks the file for a whole record in one read of its declared size.
        if info.compress_size > size:
            raise ValueError(f"{what}: record {_text(info.filename)!r} claims {info.compress_size:,} bytes in an "
                             f"archive of {size:,}")
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_ZIP_EXPANSION * max(info.compress_size, 1):
            raise ValueError(f"{what}: record {_text(info.filename)!r} would inflate from {info.compress_size:,} to "
                             f"{info.file_size:,} bytes")
        total += info.file_size
    limit = MAX_ZIP_EXPANSION * size + (1 << 20)
    if total > limit:
        raise ValueError(f"{what} would inflate from {size:,} to {total:,} bytes (more than {MAX_ZIP_EXPANSION}x)")


def _load_from_bytes(b):
    if not isinstance(b, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload is not bytes")
    payload = io.BytesIO(bytes(b))
    if bytes(b[:4]) == b"PK\x03\x04":
        check_zip_expansion(payload, "a storage inside the file")
    # The payload is itself a torch.save archive; torch's weights-only loader keeps the restriction intact.
    try:
        storage = torch.load(payload, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises assertions, key and type errors as well as its own for a damaged archive
        raise pickle.UnpicklingError(f"a storage inside the file cannot be read ({type(e).__name__}: "
                                     f"{first_line(e)})") from None
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("storage payload did not hold a storage")
    return storage


def _check_storage(storage):
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")


def _ints(values):
    return tuple(int(v) for v in values)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    _check_storage(storage)
    return torch._utils._rebuild_tensor_v2(
        storage, int(storage_offset), _ints(size), _ints(stride), bool(requires_grad), collections.OrderedDict()
    )


def _rebuild_tensor(storage, storage_offset, size, stride):
    _check_storage(storage)
    return torch._utils._rebuild_tensor(storage, int(storage_offset), _ints(size), _ints(stride))


def _rebuild_parameter(data, requires_grad, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter rebuilt from something that is not a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks=None, state=None):
    # Extra Python attributes on a parameter are not needed to run the network.
    return _rebuild_parameter(data, requires_grad)


def _numpy_ndarray(shape, dtype=float, buffer=None, offset=0, strides=None, order=None):
    """numpy.ndarray(shape, dtype, buffer) as TF-era exports write arrays: only over a bytes buffer that holds the
    whole array (numpy.ndarray(shape) alone would allocate whatever size the file declares)."""
    if not isinstance(buffer, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy array without its data")
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    dtype = np.dtype(dtype)
    if dtype.hasobject or len(shape) > 32 or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"numpy array of shape {list(shape)[:8]} and type {dtype}")
    count = 1
    for n in shape:
        count *= n
    if strides is not None or offset != 0 or count * dtype.itemsize != len(buffer):
        raise pickle.UnpicklingError(f"numpy array of shape {list(shape)[:8]} whose data is {len(buffer)} bytes")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order or "C")


def _numpy_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray and subtype is not _numpy_ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays are accepted")
    # numpy pickles an array as an empty one plus __setstate__ with the data: the shape here is always tiny.
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if len(shape) > 32 or not all(isinstance(n, int) and 0 <= n <= 64 for n in shape):
        raise pickle.UnpicklingError(f"numpy array placeholder of shape {list(shape)[:8]}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("only numeric numpy scalars are accepted")
    if not isinstance(data, (bytes, bytearray)):  # bytes(N) of a number would allocate N bytes
        raise pickle.UnpicklingError("numpy scalar whose data is not bytes")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _copyreg_reconstructor(cls, base, state):
    # Protocol 0/1 files rebuild instances this way; only our stand-ins may be created.
    if not (isinstance(cls, type) and issubclass(cls, (TFNetwork, ModuleStandIn))) or base is not object:
        raise UnsafeGlobalError("copyreg._reconstructor")
    return cls.__new__(cls)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol 2 writes bytes as latin-1 text; no other codec has a business in a network file. Only text is
    # encoded: str() of another object could be made to cost any amount of time and memory.
    if not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise UnsafeGlobalError(f"_codecs.encode({_text(encoding)!r})")
    if not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode of a {type(obj).__name__}, not of text")
    return obj.encode("latin-1")


def _bytearray(source=b"", encoding=None, errors=None):
    # bytearray(N) would allocate N zero bytes from a few bytes of file: only copies of data in the file are made.
    if isinstance(source, str):
        if encoding is None or _text(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError("bytearray from text in an encoding other than latin-1")
        return bytearray(source, "latin-1")
    if isinstance(source, (bytes, bytearray)) and encoding is None:
        return bytearray(source)
    raise pickle.UnpicklingError(f"bytearray from a {type(source).__name__}, not from bytes in the file")


_NUMPY_SCALAR = {"scalar": _numpy_scalar, "_reconstruct": _numpy_reconstruct}

_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): dict,
    ("dnnlib", "EasyDict"): dict,
    ("dnnlib.tflib.network", "Network"): TFNetwork,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "Size"): torch.Size,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): _numpy_ndarray,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "object"): object,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
}


def resolve_global(module, name):
    """The object a pickle may use for global `module.name`, or raise UnsafeGlobalError."""
    module = str(module)
    name = str(name)
    # Python 2 era names (protocol < 3, as torch.save writes them), mapped as pickle itself would.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    key = (module, name)
    if key in _ALLOWED:
        return _ALLOWED[key]
    if module == "torch" and "." not in name:
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            return value
        if name.endswith("Storage") and hasattr(torch.serialization, "StorageType"):
            try:
                return torch.serialization.StorageType(name)
            except (KeyError, AttributeError):
                pass
    if module.startswith("torch.nn.modules.") and name.isidentifier() and name[:1].isupper() and "." not in name:
        return _module_stand_in(name)
    raise UnsafeGlobalError(f"{module}.{name}")


class _BoundedReader:
    """A binary file whose reads never ask for more than what is left in it.

    A length field of 2**63 in a pickle makes the reader ask the file for that many bytes, and the file allocates
    its buffer before it finds out how few there are. Reads go straight through, so the position stays the
    caller's (torch reads on after the pickle in its legacy format).
    """

    def __init__(self, f):
        self._f = f
        pos = f.tell()
        f.seek(0, io.SEEK_END)
        self._size = f.tell()
        f.seek(pos)

    def left(self):
        return max(0, self._size - self._f.tell())

    def read(self, n=-1):
        if n is None or n < 0:
            return self._f.read()
        if n > 1 << 16:  # a small read cannot allocate much; only large ones need the look at what is left
            n = min(n, self.left())
        return self._f.read(n)

    def readinto(self, b):
        return self._f.readinto(b)

    def readline(self, size=-1):
        return self._f.readline(size)


class RestrictedUnpickler(pickle._Unpickler):
    """pickle's unpickler that resolves globals only through the allow-list above.

    Built on the pure-Python unpickler, whose memo is a dict: the C one grows an array to the largest memo index
    a file names, so that 9 bytes (one PUT with index 2**25) allocate 512 MB. Its reads are bounded by what the
    file holds (_BoundedReader).
    """

    # No persistent_load here: a plain pickle with persistent ids is refused by pickle itself, and torch.load
    # assigns its own for its archive formats.

    def __init__(self, file, **kwargs):
        self._bounded = _BoundedReader(file)
        super().__init__(self._bounded, **kwargs)

    def find_class(self, module, name):
        return resolve_global(module, name)

    def _load_bytearray8(self):
        # bytearray(N) is allocated before it is filled: N must be there to be read.
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._bounded.left():
            raise pickle.UnpicklingError(f"a byte array of {n:,} bytes in a file with {self._bounded.left():,} left")
        b = bytearray(n)
        self.readinto(b)
        self.append(b)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


class _RestrictedPickleModule:
    """The `pickle_module` torch.load expects, for torch.save archives that hold NVIDIA objects."""

    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(f, **kwargs):
        return RestrictedUnpickler(f, **kwargs).load()


def _torch_load_restricted(path):
    # torch supplies persistent_load for its archive formats (zip and the legacy one with torch.FloatStorage
    # ids); every global still goes through RestrictedUnpickler.find_class.
    return torch.load(path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False)


def read_pickle(path):
    """Unpickle `path` through the allow-list -> the top object.

    Plain pickles (NVIDIA's .pkl) are read directly; torch.save archives (zip or legacy) go through torch.load with
    the same restriction. Raises UnsafeGlobalError for a disallowed global and the usual pickle/IO errors for a
    damaged file.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):
        check_zip_expansion(path, "the archive")
        return _torch_load_restricted(path)
    with open(path, "rb") as f:
        obj = RestrictedUnpickler(f).load()
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load_restricted(path)
    return obj


def refuse_message(path, name):
    return (
        f"refusing to load {path}: the file asks to run the Python global '{name}', which has no place in a "
        "network file (nothing in it was run)"
    )


def read_pickle_or_user_error(path):
    """read_pickle with every failure turned into one UserError line naming the file."""
    try:
        return read_pickle(path)
    except UnsafeGlobalError as e:
        raise UserError(refuse_message(path, e.name)) from None
    except (UserError, RecursionError):  # RecursionError: load_network's own message
        raise
    except Exception as e:  # a crafted stream makes the unpickler and torch raise nearly anything
        # torch wraps errors raised inside find_class; look for ours in the chain.
        cause = e
        while cause is not None:
            if isinstance(cause, UnsafeGlobalError):
                raise UserError(refuse_message(path, cause.name)) from None
            cause = cause.__cause__ or cause.__context__
        raise UserError(f"{path} is not a network file that can be read ({type(e).__name__}: "
                        f"{first_line(e)})") from None


def first_line(e):
    """The first line of an exception's message, at most 300 characters (torch's run to paragraphs)."""
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else ""


# --------------------------------------------------------------------------------------------------------------
# Walking stand-in module trees


def module_state(obj):
    """The __dict__ of a stand-in module (PersistentObject or ModuleStandIn), {} for anything else."""
    if isinstance(obj, (PersistentObject, ModuleStandIn)):
        return obj.state
    return {}


def class_name(obj):
    return getattr(obj, "class_name", type(obj).__name__)


def iter_modules(obj, prefix="", _on_path=None):
    """Yield (dotted name, stand-in) for `obj` and every module below it, parents first.

    Raises ModuleGraphError for a module that contains itself or nesting deeper than MAX_MODULE_DEPTH.
    """
    on_path = set() if _on_path is None else _on_path
    if id(obj) in on_path:
        raise ModuleGraphError(f"its module {prefix or '(top)'} contains itself")
    if len(on_path) >= MAX_MODULE_DEPTH:
        raise ModuleGraphError(f"its modules are nested more than {MAX_MODULE_DEPTH} levels deep")
    yield prefix, obj
    children = _entry(module_state(obj), "_modules", {})
    if not isinstance(children, dict):
        raise ModuleGraphError(f"module {prefix or '(top)'} lists its children in a {type(children).__name__}")
    on_path.add(id(obj))
    for name, child in children.items():
        if child is None:
            continue
        yield from iter_modules(child, f"{prefix}.{_text(name)}" if prefix else _text(name), on_path)
    on_path.discard(id(obj))


def _entry(state, key, default):
    # `state.get(key) or default` would ask a tensor found there for its truth value.
    value = state.get(key)
    return default if value is None else value


def flat_state_dict(obj):
    """{dotted name: tensor} of all parameters and persistent buffers, as nn.Module.state_dict() names them."""
    out = collections.OrderedDict()
    for prefix, mod in iter_modules(obj):
        state = module_state(mod)
        non_persistent = _entry(state, "_non_persistent_buffers_set", set())
        if not isinstance(non_persistent, (set, frozenset, list, tuple)):
            raise ValueError(f"module {prefix or '(top)'} lists its non-persistent buffers in a "
                             f"{type(non_persistent).__name__}")
        for kind in ("_parameters", "_buffers"):
            tensors = _entry(state, kind, {})
            if not isinstance(tensors, dict):
                raise ValueError(f"module {prefix or '(top)'} keeps its {kind[1:]} in a {type(tensors).__name__}")
            for name, value in tensors.items():
                if value is None or (kind == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f"network tensor {prefix}.{_text(name)} is not a tensor")
                full = f"{prefix}.{_text(name)}" if prefix else _text(name)
                check_tensor_data(value, full)
                out[full] = value.detach()
    return out


def init_arguments(obj):
    """(args tuple, kwargs dict) the persistent object was constructed with, EasyDicts as plain dicts."""
    state = module_state(obj)
    args = _entry(state, "_init_args", ())
    kwargs = _entry(state, "_init_kwargs", {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise ValueError(f"its {_text(class_name(obj))} records its constructor arguments as a "
                         f"{type(args).__name__} and a {type(kwargs).__name__}")
    return tuple(args), to_plain(dict(kwargs))


# Settings are a few dozen values; a pickle can share one list many times over so that copying it explodes.
MAX_PLAIN_NODES = 100_000
MAX_PLAIN_DEPTH = 32


def to_plain(value, _budget=None, _depth=0):
    """Nested dicts/lists/tuples/numpy scalars -> plain Python values (dicts, lists, numbers, strings, None).

    Raises ValueError past MAX_PLAIN_NODES values or MAX_PLAIN_DEPTH levels (shared or cyclic references).
    """
    budget = [MAX_PLAIN_NODES] if _budget is None else _budget
    budget[0] -= 1
    if budget[0] < 0 or _depth > MAX_PLAIN_DEPTH:
        raise ValueError("settings that are nested too deeply or hold too many values (shared or cyclic "
                         "references)")
    if isinstance(value, dict):
        return {_text(k) if not isinstance(k, (int, float)) else str(k): to_plain(v, budget, _depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, budget, _depth + 1) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.size > 1024 or value.dtype.hasobject:
            raise ValueError(f"a setting is an array of {value.size} {value.dtype} values")
        return value.tolist()
    return value
