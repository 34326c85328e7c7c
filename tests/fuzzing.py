"""Seeded mutation of the files users bring, and the child process that feeds them to the program's doors.

Used by tests/test_fuzz.py (no tests here). A case is a class and an index; the index seeds everything about it, so

    python tests/fuzzing.py replay CLASS INDEX [FOLDER]

writes that exact case into FOLDER and runs its door with the full traceback shown.

Classes and their doors:
    pt           our .pt snapshots and exports            engine.load_network
    nvidia       NVIDIA's PyTorch pickles                 engine.load_network
    tf           TF-era pickles                           engine.load_network
    safetensors  safetensors exports (+ their .json)      engine.load_network
    dataset      prepared datasets (zip or folder)        ImageDataset (every sample), dataset.summary, preview_grid
    latents      projected_w.npz, directions, library     latents.load_w, directions.load, list_latents + load_latent
    uploads      the dashboard's upload handlers          Generate's network upload, Data's prepare,
                                                          Explore's projection

Each case starts from a valid tiny seed of its class (8 px, 1-2 channels) and stacks one to three mutations: bit
flips, byte runs overwritten, inserted, deleted or duplicated, truncation, boundary integers written anywhere,
zip records swapped, duplicated, dropped, renamed or inflated, zip header fields (sizes, offsets, counts) set to
boundary values, pickle opcodes replaced, deleted or swapped, pickle length fields and memo indices set huge,
pickle globals swapped for other (allowed or forbidden) ones, npy headers declaring other shapes and dtypes, JSON
values replaced by hostile ones, and, on the objects before they are written, settings, tensors and arrays
swapped, dropped or replaced with other types, shapes, dtypes and huge numbers.

The contract per case (checked in the child, reported as one JSON line per case):
    - the door returns something usable (a network runs G_ema and D, a dataset gives every sample, a latent
      renders), or raises UserError whose message is one line that names the file (the dashboard: a gr.Error made
      from a UserError; one its catch-all made from any other exception is a failure);
    - within DEADLINE seconds (an alarm in the child; the parent kills a child stuck in native code);
    - within the child's address-space limit (RLIMIT_AS: what the loaded program uses plus MEMORY_BUDGET_MB), and
      no message about memory: a declared size is never simply allocated;
    - every file of the case's folder keeps its bytes, mode and time, and no file appears beside them.
"""

import copy
import hashlib
import io
import json
import os
import pickletools
import queue
import random
import re
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

DEADLINE = 10.0  # seconds per case; real cases take milliseconds
MEMORY_BUDGET_MB = 1024  # address space a case may add to what the program uses once loaded
CASE_RSS_MB = 100  # resident memory one case may add to the highest any case before it reached
CLASSES = ("pt", "nvidia", "tf", "safetensors", "dataset", "latents", "uploads")

# --------------------------------------------------------------------------------------------------------------
# Mutations

INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               10 ** 9, 10 ** 12, 1 << 40, (1 << 63) - 1, (1 << 64) - 1]

# Globals a crafted pickle may name instead of the ones in the file: forbidden ones (must be refused) and allowed
# ones in the wrong place (must not confuse the reader).
GLOBALS = [("os", "system"), ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"),
           ("subprocess", "Popen"), ("torch", "load"), ("numpy", "ones"), ("torch", "zeros"), ("builtins", "bytearray"),
           ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "slice"),
           ("builtins", "object"), ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
           ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter"), ("torch", "FloatStorage"),
           ("torch", "HalfStorage"), ("torch", "float16"), ("torch", "Size"), ("torch.storage", "_load_from_bytes"),
           ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
           ("numpy", "ndarray"), ("numpy.core.numeric", "_frombuffer"), ("copyreg", "_reconstructor"),
           ("_codecs", "encode"), ("torch.nn.modules.container", "ModuleList"), ("dnnlib.util", "EasyDict"),
           ("dnnlib.tflib.network", "Network"), ("torch_utils.persistence", "_reconstruct_persistent_obj")]

ODD_NAMES = ["../evil.png", "/abs/x.png", "C:\\x.png", "", "dir/", "a" * 300 + ".png", "x\u00fc\u4e2d.png",
             "dataset.json", "00000/img00000000.png", ".hidden.png", "__MACOSX/x.png", "a/../../b.png", " .png"]

_ZIP_FIELDS = [  # (signature, [(offset, width)]) of the local header, central directory entry, end records
    (b"PK\x03\x04", [(6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]),
    (b"PK\x01\x02", [(8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (34, 2), (42, 4)]),
    (b"PK\x05\x06", [(4, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]),
    (b"PK\x06\x06", [(24, 8), (32, 8), (40, 8), (48, 8)]),
    (b"PK\x06\x07", [(8, 8)]),
]


def _int_bytes(value, width, order="little"):
    return (value % (1 << (8 * width))).to_bytes(width, order)


def _read_zip(data):
    """[[name, bytes, compress_type]] of a zip, or None when it cannot be read."""
    try:
        with warnings.catch_warnings(), zipfile.ZipFile(io.BytesIO(data)) as zf:
            warnings.simplefilter("ignore")
            return [[i.filename, zf.read(i), i.compress_type] for i in zf.infolist()]
    except Exception:
        return None


def _write_zip(entries):
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # duplicate names are the point
        for name, data, ctype in entries:
            info = zipfile.ZipInfo(name or "_", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = ctype
            zf.writestr(info, data)
    return buf.getvalue()


class Mutator:
    """Seeded mutations of bytes and of objects; every choice comes from `rng`."""

    def __init__(self, rng):
        self.rng = rng

    # -- bytes ---------------------------------------------------------------------------------------------------

    def flip_bits(self, d):
        b = bytearray(d)
        for _ in range(self.rng.randint(1, 8)):
            b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
        return bytes(b)

    def _filler(self, n):
        kind = self.rng.randrange(4)
        if kind == 0:
            return bytes(n)
        if kind == 1:
            return b"\xff" * n
        if kind == 2:
            return bytes([self.rng.randrange(256)]) * n
        return self.rng.randbytes(n)

    def overwrite_run(self, d):
        i, n = self.rng.randrange(len(d)), self.rng.choice([1, 2, 4, 8, 16, 64, 256])
        return d[:i] + self._filler(n) + d[i + n:]

    def truncate(self, d):
        return d[:self.rng.randrange(len(d))]

    def insert_run(self, d):
        i = self.rng.randrange(len(d) + 1)
        return d[:i] + self._filler(self.rng.choice([1, 4, 16, 100])) + d[i:]

    def delete_run(self, d):
        i = self.rng.randrange(len(d))
        return d[:i] + d[i + self.rng.choice([1, 2, 4, 16, 64, 512]):]

    def duplicate_chunk(self, d):
        a = self.rng.randrange(len(d))
        chunk = d[a:a + self.rng.choice([4, 16, 64, 512])]
        i = self.rng.randrange(len(d) + 1)
        return d[:i] + chunk + d[i:]

    def boundary_int(self, d):
        width = self.rng.choice([1, 2, 4, 8])
        i = self.rng.randrange(max(1, len(d) - width + 1))
        value = _int_bytes(self.rng.choice(INTERESTING), width, self.rng.choice(["little", "big"]))
        return d[:i] + value + d[i + width:]

    def byte_op(self, d):
        if not d:
            return self.rng.choice([b"", b"\x00", b"PK\x03\x04", b"\x80\x02.", b"{}", self.rng.randbytes(64)])
        op = self.rng.choice([self.flip_bits, self.flip_bits, self.overwrite_run, self.truncate, self.insert_run,
                              self.delete_run, self.duplicate_chunk, self.boundary_int, self.boundary_int])
        return op(d)

    # -- zip archives --------------------------------------------------------------------------------------------

    def zip_field(self, d):
        spots = []
        for sig, fields in _ZIP_FIELDS:
            for m in re.finditer(re.escape(sig), d):
                spots.extend((m.start() + off, width) for off, width in fields)
        if not spots:
            return self.byte_op(d)
        pos, width = self.rng.choice(spots)
        value = self.rng.choice(INTERESTING + [self.rng.randrange(1 << (8 * width))])
        return d[:pos] + _int_bytes(value, width) + d[pos + width:]

    def zip_records(self, d, depth=0):
        entries = _read_zip(d)
        if not entries:
            return self.byte_op(d)
        n = len(entries)
        op = self.rng.randrange(10)
        i, j = self.rng.randrange(n), self.rng.randrange(n)
        if op == 0:  # swap the data of two records
            entries[i][1], entries[j][1] = entries[j][1], entries[i][1]
        elif op == 1:  # swap two records' places
            entries[i], entries[j] = entries[j], entries[i]
        elif op == 2:  # the same name twice, with other data
            entries.insert(self.rng.randrange(n + 1), [entries[i][0], entries[j][1], entries[j][2]])
        elif op == 3 and n > 1:
            del entries[i]
        elif op == 4:
            entries[i][0] = self.rng.choice(ODD_NAMES + [entries[j][0]])
        elif op == 5:  # a record that inflates far beyond its size
            entries[i][1] = bytes(self.rng.choice([1, 4, 16]) << 20)
            entries[i][2] = zipfile.ZIP_DEFLATED
        elif op == 6:
            entries[i][2] = zipfile.ZIP_DEFLATED
        elif op == 7:  # not the archive but one of its records
            return entries[i][1]
        else:
            entries[i][1] = self.mutate_bytes(entries[i][1], depth + 1)
        return _write_zip(entries)

    # -- pickles -------------------------------------------------------------------------------------------------

    def pickle_op(self, d, depth=0):
        try:
            ops = [(op, arg, pos) for op, arg, pos in pickletools.genops(d)]
        except Exception:
            return self.byte_op(d)
        if not ops:
            return self.byte_op(d)
        ends = [pos for _, _, pos in ops[1:]] + [ops[-1][2] + 1]
        k = self.rng.randrange(len(ops))
        op, arg, pos = ops[k]
        end = ends[k]
        choice = self.rng.randrange(8)
        if choice == 0:  # another opcode in its place
            code = self.rng.choice(pickletools.opcodes).code.encode("latin-1")
            return d[:pos] + code + d[pos + 1:]
        if choice == 1:  # a length, memo index or number set to a boundary value
            sized = [(o, p) for o, _, p in ops if o.arg is not None and o.arg.n in (1, 2, 4, 8, -2, -3, -4, -5)]
            if sized:
                o, p = self.rng.choice(sized)
                width = {-2: 1, -3: 4, -4: 4, -5: 8}.get(o.arg.n, o.arg.n)
                return d[:p + 1] + _int_bytes(self.rng.choice(INTERESTING), width) + d[p + 1 + width:]
        if choice == 2:  # another global
            spots = [(i, o) for i, (o, _, _) in enumerate(ops) if o.name in ("GLOBAL", "STACK_GLOBAL", "INST")]
            if spots:
                i, o = self.rng.choice(spots)
                module, name = self.rng.choice(GLOBALS)
                p, e = ops[i][2], ends[i]
                text = f"{module}\n{name}\n".encode()
                if o.name == "STACK_GLOBAL":  # drop the two names it would take, name one of ours instead
                    return d[:p] + b"00c" + text + d[e:]
                return d[:p] + o.code.encode("latin-1") + text + d[e:]
        if choice == 3:  # an opcode left out
            return d[:pos] + d[end:]
        if choice == 4:  # an opcode twice
            return d[:end] + d[pos:end] + d[end:]
        if choice == 5 and k + 1 < len(ops):  # two neighbours swapped
            return d[:pos] + d[end:ends[k + 1]] + d[pos:end] + d[ends[k + 1]:]
        if choice == 6:  # bytes inside the pickle (NVIDIA's storages are torch.save archives) mutated in place
            payloads = [(o, a, p, ends[i]) for i, (o, a, p) in enumerate(ops)
                        if o.name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8") and a]
            if payloads:
                o, a, p, e = self.rng.choice(payloads)
                new = self.mutate_bytes(bytes(a), depth + 1)
                return d[:p] + b"B" + len(new).to_bytes(4, "little") + new + d[e:]
        return self.byte_op(d)

    # -- numpy .npy records --------------------------------------------------------------------------------------

    def npy_header(self, d):
        if not d.startswith(b"\x93NUMPY") or len(d) < 10:
            return self.byte_op(d)
        major = d[6]
        hlen_size = 2 if major == 1 else 4
        hlen = int.from_bytes(d[8:8 + hlen_size], "little")
        start = 8 + hlen_size
        body = d[start + hlen:]
        shape = self.rng.choice(["(10**12,)", "(1, 18, 10**9)", "(0,)", "()", "(-1, 4)", "(1, 2, 4)", "(7, 7, 7, 7)",
                                 "(2**62, 2**62)", "(1, 1, 1)", "(1, 2, 3)"]).replace("10**12", str(10 ** 12)) \
            .replace("10**9", str(10 ** 9)).replace("2**62", str(1 << 62))
        descr = self.rng.choice(["'<f4'", "'<f8'", "'>f4'", "'<f2'", "'|u1'", "'<i8'", "'|b1'", "'<c8'", "'<U8'",
                                 "'|S4'", "'|O'", "'|V16'", "'<M8[s]'", "[('a', '<f4')]", "'<f16'", "'xx'"])
        order = self.rng.choice(["False", "True", "1", "None"])
        which = self.rng.randrange(4)
        header = d[start:start + hlen].decode("latin-1")
        if which == 0:
            header = re.sub(r"'shape': \([^)]*\)", f"'shape': {shape}", header)
        elif which == 1:
            header = re.sub(r"'descr': '[^']*'", f"'descr': {descr}", header)
        elif which == 2:
            header = re.sub(r"'fortran_order': \w+", f"'fortran_order': {order}", header)
        else:
            header = self.rng.choice(["{}", "[1, 2]", "{'descr': '<f4'}", "'x' * 10", "{" * 50, "__import__('os')"])
        raw = (header + " " * ((64 - (start + len(header) + 1) % 64) % 64) + "\n").encode("latin-1")
        return d[:6] + bytes([major, d[7]]) + len(raw).to_bytes(hlen_size, "little") + raw + body

    # -- JSON ----------------------------------------------------------------------------------------------------

    def json_op(self, d):
        try:
            doc = json.loads(d)
        except Exception:
            return self.byte_op(d)
        deep = self.rng.random() < 0.08
        doc = self.mutate_tree(doc, json_only=True, marker="__DEEP__" if deep else None)
        text = json.dumps(doc)
        if deep:  # nesting deeper than any parser's recursion limit
            n = self.rng.choice([200, 5000, 100_000])
            text = text.replace('"__DEEP__"', "[" * n + "]" * n, 1)
        return text.encode()

    # -- any bytes: format-aware when the format is recognised ------------------------------------------------------

    def mutate_bytes(self, d, depth=0):
        r = self.rng.random()
        if depth < 2 and d[:4] == b"PK\x03\x04" and r < 0.6:
            return self.zip_records(d, depth) if r < 0.4 else self.zip_field(d)
        if depth < 3 and d[:1] == b"\x80" and r < 0.7:
            return self.pickle_op(d, depth)
        if d[:6] == b"\x93NUMPY" and r < 0.5:
            return self.npy_header(d)
        if d[:1] in (b"{", b"[") and r < 0.6:
            return self.json_op(d)
        return self.byte_op(d)

    # -- objects before they are written ----------------------------------------------------------------------------

    def hostile(self, like, json_only=False):
        """A value to put where `like` was: of another type, shape, dtype or size, or absurd."""
        rng = self.rng
        plain = [None, True, False, -1, 0, 1, 3, 10 ** 12, -(10 ** 12), 1 << 63, 1 << 70, 1.5, -0.0, 1e308,
                 float("nan"), float("inf"), "", "x" * 300, "skip", "orig", "../../etc/passwd", [], {}, [0] * 100,
                 [1, 3, 3, 1], [[[[1]]]], {"a": 1}, {"": None}]
        if isinstance(like, bool):
            plain += [not like]
        elif isinstance(like, int):
            plain += [like + 1, like - 1, like * 1000, -like, str(like), float(like)]
        elif isinstance(like, str):
            plain += [like + "x", like.upper(), like * 50, 5]
        elif isinstance(like, (list, tuple)) and like:
            plain += [list(like)[:-1], list(like) * 2, list(like)[::-1]]
        if json_only:
            return rng.choice(plain)
        import numpy as np
        import torch

        if isinstance(like, torch.Tensor):
            shape = list(like.shape)
            alt = []
            if shape:
                s = list(shape)
                s[rng.randrange(len(s))] += rng.choice([1, -1 if min(shape) > 0 else 1, 999])
                alt.append(torch.zeros(s))
                alt.append(torch.zeros(shape[::-1]))
                alt.append(torch.zeros(1).expand(*[10 ** 4] * len(shape)))  # a huge view of one value
            alt += [like.to(torch.float16), like.to(torch.float64), like.to(torch.int64), like.to(torch.bool),
                    like.to(torch.complex64), like.to(torch.uint8), torch.full_like(like, float("nan")),
                    torch.full_like(like, float("inf")), torch.zeros(()), torch.zeros(0), like.flatten(),
                    like.unsqueeze(0), torch.zeros(1).expand(10 ** 8), like.clone().t() if like.ndim == 2 else like]
            return rng.choice(alt + plain[:8])
        if isinstance(like, np.ndarray):
            shape = list(like.shape)
            alt = [np.zeros(0, np.float32), np.zeros((), np.float32), like.reshape(-1), like[None],
                   np.array(["text"]), np.zeros(shape[::-1], np.float32), np.array([b"xx"]),
                   np.zeros((2, 2), dtype=[("a", "<f4"), ("b", "<i4")])]
            if like.dtype.kind in "fiub":
                alt += [like.astype(np.float64), like.astype(np.float16), like.astype(np.int64),
                        like.astype(np.complex64), like.astype(np.bool_), np.full_like(like, np.nan, np.float32)]
            if shape:
                s = list(shape)
                s[rng.randrange(len(s))] += 1
                alt.append(np.zeros(s, np.float32))
            return rng.choice(alt + plain[:8])
        return rng.choice(plain + [torch.zeros(3), np.zeros(3, np.float32), (1, 2), b"\x00" * 16, {1, 2},
                                   torch.zeros(2, 2).expand(10 ** 4, 2, 2)])

    def mutate_tree(self, root, json_only=False, marker=None):
        """A copy of `root` (nested dicts, lists, tuples; NVIDIA stand-ins) with one node changed."""
        root = deep_copy(root)
        paths = []
        _walk(root, (), paths)
        if not paths:
            return self.hostile(root, json_only)
        path = self.rng.choice(paths)
        parent = _get(root, path[:-1])
        key = path[-1]
        value = _child(parent, key)
        op = self.rng.randrange(10)
        if marker is not None:
            new = marker
        elif op <= 4:
            new = self.hostile(value, json_only)
        elif op == 5:  # another node's value here
            new = deep_copy(_get(root, self.rng.choice(paths)))
        elif op == 6 and isinstance(_container(parent), dict):  # the entry gone
            _container(parent).pop(key, None)
            return root
        elif op == 7 and isinstance(_container(parent), dict):  # renamed
            c = _container(parent)
            c[self.rng.choice(["", "x" * 300, "G_ema", "weight", "kwargs", key + "_"]) if isinstance(key, str)
              else str(key)] = c.pop(key)
            return root
        elif op == 8 and isinstance(_container(parent), list) and _container(parent):
            del _container(parent)[key]
            return root
        else:
            new = self.hostile(value, json_only)
        return _set(root, path, new)


def deep_copy(obj):
    """copy.deepcopy that also copies the writer-side stand-ins of nvidia_fixtures (which pickle as calls)."""
    if isinstance(obj, dict):
        return type(obj)((k, deep_copy(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [deep_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(deep_copy(v) for v in obj)
    for attr in ("meta", "_state"):
        if isinstance(getattr(obj, attr, None), dict):
            new = object.__new__(type(obj))
            setattr(new, attr, deep_copy(getattr(obj, attr)))
            return new
    return copy.deepcopy(obj)


def _container(obj):
    """The mutable mapping/sequence holding the children of obj (stand-ins keep theirs in an attribute)."""
    for attr in ("meta", "_state"):
        if hasattr(obj, attr) and isinstance(getattr(obj, attr), dict) and not isinstance(obj, (dict, list, tuple)):
            return getattr(obj, attr)
    return obj


def _child(obj, key):
    return _container(obj)[key]


def _walk(obj, prefix, out, depth=0):
    c = _container(obj)
    if depth > 12:
        return
    if isinstance(c, dict):
        items = list(c.items())
    elif isinstance(c, (list, tuple)):
        items = list(enumerate(c))
    else:
        return
    for k, v in items:
        out.append(prefix + (k,))
        _walk(v, prefix + (k,), out, depth + 1)


def _get(root, path):
    for k in path:
        root = _child(root, k)
    return root


def _set(node, path, value):
    """`node` with the value at `path` replaced -> the node (a new one where it is a tuple)."""
    if not path:
        return value
    c = _container(node)
    k = path[0]
    new_child = _set(c[k], path[1:], value)
    if isinstance(c, tuple):
        items = list(c)
        items[k] = new_child
        return tuple(items)
    c[k] = new_child
    return node


# --------------------------------------------------------------------------------------------------------------
# Seeds: valid tiny files of each class


def tiny_networks():
    """(G, D, G_cond): an 8 px grey generator, its discriminator and a conditional 8 px RGB generator."""
    import torch

    from engine.nets import Discriminator, Generator

    torch.manual_seed(0)
    G = Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=1, mapping_kwargs={"num_layers": 1},
                  channel_base=16, channel_max=2).eval()
    D = Discriminator(c_dim=0, img_resolution=8, img_channels=1, channel_base=16, channel_max=2).eval()
    Gc = Generator(z_dim=4, c_dim=2, w_dim=4, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 2},
                   channel_base=16, channel_max=2).eval()
    return G, D, Gc


class Seed:
    """One valid file (or folder) of a class: `tree` is the object written by `write(tree, folder) -> path`."""

    def __init__(self, name, tree, write, door_kind=None):
        self.name, self.tree, self.write, self.door_kind = name, tree, write, door_kind

    def files(self, folder):
        """Write the seed into `folder` -> the path the door is given."""
        return self.write(self.tree, folder)


def _write_torch(name):
    def write(tree, folder):
        import torch

        p = Path(folder) / name
        torch.save(tree, p)
        return p
    return write


def _write_pickle(name, protocol):
    def write(tree, folder):
        import pickle

        from nvidia_fixtures import _nvidia_module_names

        p = Path(folder) / name
        with _nvidia_module_names(), open(p, "wb") as f:
            pickle.dump(tree, f, protocol=protocol)
        return p
    return write


def _write_torch_nvidia(name):
    def write(tree, folder):
        import torch

        from nvidia_fixtures import _nvidia_module_names

        p = Path(folder) / name
        with _nvidia_module_names():
            torch.save(tree, p)
        return p
    return write


def _write_safetensors(name, sidecar):
    def write(tree, folder):
        from safetensors.torch import save_file

        from engine.export import METADATA_KEY

        p = Path(folder) / name
        meta = {METADATA_KEY: json.dumps(tree["info"])} if tree.get("in_header", True) else None
        save_file(tree["state"], str(p), metadata=meta)
        if sidecar:
            p.with_suffix(".json").write_text(json.dumps(dict(tree["info"], weights=p.name)))
        return p
    return write


def network_seeds(cls):
    import torch

    from engine.checkpoint import FORMAT, VERSION, pack_network
    from nvidia_fixtures import nvidia_pytorch_snapshot, tf_discriminator_static_kwargs, tf_discriminator_variables, \
        tf_generator_network, _tf_network

    G, D, Gc = tiny_networks()
    if cls == "pt":
        full = {"format": FORMAT, "version": VERSION, "G": pack_network(G), "D": pack_network(D),
                "G_ema": pack_network(G), "augment": {"p": 0.2, "kwargs": {"xflip": 1, "rotate90": 1}},
                "progress": {"cur_nimg": 4000, "tick": 2, "batch_idx": 7, "pl_mean": torch.zeros([])},
                "options": {"cfg": "tiny", "batch": 4, "gamma": 0.5}, "dataset": {"resolution": 8, "channels": 1,
                                                                                   "label_dim": 0, "name": "blobs"}}
        export = {"format": FORMAT, "version": VERSION, "G_ema": pack_network(Gc, dtype=torch.float16)}
        return [Seed("snapshot", full, _write_torch("network-snapshot-000004.pt")),
                Seed("export", export, _write_torch("export.pt"))]
    if cls == "nvidia":
        ada = nvidia_pytorch_snapshot(G=G, D=D, G_ema=G, augment_p=0.25,
                                      training_set_kwargs={"path": "/data/blobs.zip", "resolution": 8})
        sg3 = nvidia_pytorch_snapshot(G_ema=Gc, flavor="stylegan3")
        return [Seed("ada", ada, _write_pickle("network-snapshot-000100.pkl", 4)),
                Seed("stylegan3-p2", sg3, _write_pickle("sg3.pkl", 2)),
                Seed("torch-save", nvidia_pytorch_snapshot(G_ema=G), _write_torch_nvidia("nvidia-saved.pt"))]
    if cls == "tf":
        def tf_tree(Gx, Dx):
            return (tf_generator_network(Gx, "G"),
                    _tf_network("D", "D_stylegan2", tf_discriminator_static_kwargs(Dx), tf_discriminator_variables(Dx)),
                    tf_generator_network(Gx, "Gs"))
        return [Seed("tf-p3", tf_tree(G, D), _write_pickle("stylegan2-tf.pkl", 3)),
                Seed("tf-p2", tf_tree(G, D), _write_pickle("stylegan2-tf-p2.pkl", 2))]
    if cls == "safetensors":
        from engine import export

        def tree(Gx):
            state = {k: v.detach().contiguous().clone() for k, v in Gx.state_dict().items()}
            return {"state": state, "info": export.safetensors_description(Gx, None, {"resolution": 8})}
        return [Seed("with-json", tree(G), _write_safetensors("net.safetensors", True), "weights"),
                Seed("lone", tree(Gc), _write_safetensors("lone.safetensors", False), "weights"),
                Seed("json", tree(G), _write_safetensors("net.safetensors", True), "sidecar")]
    raise ValueError(cls)


def _png(rng_seed, size, mode="RGB"):
    import numpy as np
    from PIL import Image

    rs = np.random.RandomState(rng_seed)
    arr = rs.randint(0, 255, (size[1], size[0], 3 if mode == "RGB" else 1), dtype=np.uint8)
    im = Image.fromarray(arr if mode == "RGB" else arr[:, :, 0])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(rng_seed, size):
    import numpy as np
    from PIL import Image

    arr = np.random.RandomState(rng_seed).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _dataset_members(labels, mode="RGB", n=5):
    members = [[f"00000/img{i:08d}.png", _png(i, (8, 8), mode), zipfile.ZIP_STORED] for i in range(n)]
    if labels == "int":
        doc = {"labels": [[m[0], i % 3] for i, m in enumerate(members)], "class_names": ["a", "b", "c"]}
    elif labels == "float":
        doc = {"labels": [[m[0], [0.5 * i, -1.0]] for i, m in enumerate(members)]}
    else:
        doc = {"labels": None}
    members.append(["dataset.json", json.dumps(doc).encode(), zipfile.ZIP_STORED])
    return members


def _write_zip_tree(name):
    def write(tree, folder):
        p = Path(folder) / name
        p.write_bytes(_write_zip(tree))
        return p
    return write


def _write_folder_tree(name):
    def write(tree, folder):
        root = Path(folder) / name
        root.mkdir()
        for member, data, _ in tree:
            parts = member.split("/")
            if not member or member.endswith("/") or ".." in parts or member.startswith("/") or \
                    max(len(x.encode()) for x in parts) > 255:
                continue
            p = root / member
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return root
    return write


def dataset_seeds():
    return [Seed("zip-int-labels", _dataset_members("int"), _write_zip_tree("blobs.zip")),
            Seed("zip-float-labels-grey", _dataset_members("float", "L"), _write_zip_tree("grey.zip")),
            Seed("folder-int-labels", _dataset_members("int", n=3), _write_folder_tree("blobs"))]


def _npz_members(arrays, compressed=False):
    import numpy as np

    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return _read_zip(buf.getvalue())


def latent_seeds(G):
    import numpy as np
    import torch

    from engine import latents

    with torch.no_grad():
        ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1)), None).numpy()
    ident = json.dumps(latents.network_identity(G))
    ours = _npz_members({"w": ws, "network": np.array(ident)})
    nvidia = _npz_members({"w": ws[:1]}, compressed=True)
    dirs = _npz_members({"directions": np.eye(4, dtype=np.float32)[:3], "values": np.arange(3, dtype=np.float32),
                         "scales": np.ones(3, np.float32), "method": np.array("sefa"),
                         "layers": np.arange(G.num_ws, dtype=np.int64), "network": np.array(ident)})
    lib = {}
    for i, name in enumerate(["smile", "frown"]):
        lib[f"{name}.npz"] = _write_zip(_npz_members({"w": ws[i:i + 1], "network": np.array(ident)}))
        lib[f"{name}.png"] = _png(i, (8, 8), "L")
        lib[f"{name}.json"] = json.dumps({"name": name, "kind": "seed", "network": json.loads(ident),
                                          "created": f"2024-01-0{i + 1}T00:00:00", "seed": i}).encode()
    return [Seed("projected_w", ours, _write_zip_tree("projected_w.npz"), "w"),
            Seed("nvidia-w", nvidia, _write_zip_tree("nvidia_w.npz"), "w"),
            Seed("directions", dirs, _write_zip_tree("dirs.npz"), "dirs"),
            Seed("library", lib, _write_library, "library")]


def _write_library(tree, folder):
    root = Path(folder) / "latents"
    root.mkdir()
    for name, data in tree.items():
        if name and "/" not in name and name not in (".", "..") and len(name.encode()) < 256:
            (root / name).write_bytes(data)
    return root


# --------------------------------------------------------------------------------------------------------------
# Cases: a seed and the mutations the case's index chooses


def _mutate_npz_tree(m, members):
    """An npz's records with one record's array (not its bytes) changed, or its JSON identity."""
    import numpy as np

    i = m.rng.randrange(len(members))
    name, data, ctype = members[i]
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:
        members[i][1] = m.mutate_bytes(data)
        return members
    if arr.dtype.kind == "U" and arr.ndim == 0 and m.rng.random() < 0.7:
        try:
            new = np.array(json.dumps(m.mutate_tree(json.loads(str(arr)), json_only=True)))
        except ValueError:
            new = np.array("{" * 5000)
    else:
        new = m.hostile(arr)
        if not isinstance(new, np.ndarray):
            new = np.array(new if not isinstance(new, (dict, set)) else str(new))
    buf = io.BytesIO()
    try:
        np.save(buf, new, allow_pickle=False)
    except Exception:
        np.save(buf, np.array("unsaveable"), allow_pickle=False)
    members[i][1] = buf.getvalue()
    return members


def make_case(cls, index, seeds, folder):
    """Write case `index` of `cls` into `folder` (which is empty) -> (path given to the door, seed, description)."""
    import torch

    rng = random.Random(f"{cls}/{index}")
    m = Mutator(rng)
    seed = seeds[rng.randrange(len(seeds))]
    steps = []
    tree = seed.tree
    if cls in ("pt", "nvidia", "tf", "safetensors") and rng.random() < 0.4:
        if cls == "safetensors":
            tree = dict(tree)
            part = rng.choice(["state", "info", "info", "in_header"])
            if part == "in_header":
                tree["in_header"] = False
            else:
                tree[part] = m.mutate_tree(tree[part], json_only=part == "info")
                if part == "state":  # safetensors stores plain contiguous tensors only
                    tree["state"] = {str(k)[:200] or "_": v.contiguous().clone()
                                     if isinstance(v, torch.Tensor) and v.numel() < 10 ** 6 else torch.zeros(2)
                                     for k, v in tree["state"].items()}
            steps.append(f"tree:{part}")
        else:
            tree = m.mutate_tree(tree)
            steps.append("tree")
    elif cls in ("dataset", "latents") and seed.name != "library" and rng.random() < 0.4:
        tree = deep_copy(tree)
        json_members = [e for e in tree if e[0].endswith(".json")]
        if cls == "dataset" and json_members and rng.random() < 0.6:
            e = json_members[0]
            e[1] = m.json_op(e[1])
            steps.append("dataset.json")
        elif cls == "latents":
            tree = _mutate_npz_tree(m, tree)
            steps.append("npz array")
        else:
            e = rng.choice(tree)
            e[1] = m.mutate_bytes(e[1])
            steps.append(f"member {e[0]}")
    elif seed.name == "library":
        tree = dict(tree)
        name = rng.choice(sorted(tree))
        r = rng.random()
        if r < 0.1:
            del tree[name]
        elif r < 0.2:
            tree[rng.choice(["../x.json", "x" * 200 + ".json", ".json", "-bad name.json", "smile.npz.json"])] = \
                tree[name]
        elif name.endswith(".npz") and r < 0.6:
            members = _mutate_npz_tree(m, _read_zip(tree[name]))
            tree[name] = _write_zip(members)
        else:
            tree[name] = m.mutate_bytes(tree[name])
        steps.append(f"library {name}")
    path = seed.write(tree, folder)
    if cls == "dataset" and path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if files and rng.random() < 0.7:
            f = rng.choice(files)
            f.write_bytes(m.mutate_bytes(f.read_bytes()))
            steps.append(f"file {f.name}")
    elif path.is_file() and (not steps or rng.random() < 0.3):
        data = path.read_bytes()
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data = m.mutate_bytes(data)
        path.write_bytes(data)
        steps.append("bytes")
    if seed.door_kind == "sidecar":
        path = path.with_suffix(".json")
        if rng.random() < 0.5 and path.exists():
            path.write_bytes(m.mutate_bytes(path.read_bytes()))
            steps.append("sidecar bytes")
    return path, seed, "+".join(steps)


# --------------------------------------------------------------------------------------------------------------
# The doors


class Unusable(Exception):
    """A door returned, but what it returned does not work."""


def door_network(path, seed, ctx):
    import torch

    from engine import load_network

    net = load_network(path)
    G = net["G_ema"]
    with torch.no_grad():
        z = torch.randn(2, G.z_dim)
        c = torch.zeros(2, G.c_dim)
        if G.c_dim:
            c[:, 0] = 1
        img = G(z, c, truncation_psi=0.7, noise_mode="const")
        if tuple(img.shape) != (2, G.img_channels, G.img_resolution, G.img_resolution):
            raise Unusable(f"G_ema made images of shape {list(img.shape)}")
        D = net["D"]
        if D is not None:
            c = torch.zeros(2, D.c_dim)
            if D.c_dim:
                c[:, 0] = 1
            scores = D(torch.zeros(2, D.img_channels, D.img_resolution, D.img_resolution), c)
            if tuple(scores.shape) != (2, 1):
                raise Unusable(f"D gave scores of shape {list(scores.shape)}")
    return f"loaded {net['source']}"


def door_dataset(path, seed, ctx):
    import numpy as np

    from engine.data.dataset import ImageDataset
    from engine.data.dataset import preview_grid, summary

    ds = ImageDataset(path, use_labels=True, xflip=True)
    try:
        for i in range(len(ds)):
            img, label = ds[i]
            if img.dtype != np.uint8 or list(img.shape) != ds.image_shape or list(label.shape) != ds.label_shape:
                raise Unusable(f"sample {i}: image {img.dtype} {list(img.shape)}, label {list(label.shape)}")
    finally:
        ds.close()
    info = summary(path)
    preview_grid(path, rows=2, cols=2)
    return f"dataset of {info['count']}"


def door_latents(path, seed, ctx):
    import torch

    from engine import directions, latents

    G = ctx["G"]
    if seed.door_kind == "w":
        ws = latents.load_w(path, G)
        with torch.no_grad():
            G.synthesis(ws[:1], noise_mode="const")
        return f"{ws.shape[0]} latents"
    if seed.door_kind == "dirs":
        d = directions.load(path, G)
        ws = G.mapping(torch.zeros(1, G.z_dim), None)
        for k in range(d["directions"].shape[0]):
            directions.edit(ws, d["directions"][k], 1.0, d["layers"], d["scales"][k])
        return f"{d['directions'].shape[0]} directions"
    entries = latents.list_latents(path, G)
    for e in entries:
        ws = latents.load_latent(path, e["name"], G)
        with torch.no_grad():
            G.synthesis(ws, noise_mode="const")
    return f"{len(entries)} saved latents"


DOORS = {"pt": door_network, "nvidia": door_network, "tf": door_network, "safetensors": door_network,
         "dataset": door_dataset, "latents": door_latents}


# --------------------------------------------------------------------------------------------------------------
# The dashboard's uploads (a child of its own: building the dashboard takes seconds)


def upload_seeds():
    """Files a visitor uploads: network files, a zip of pictures for Data, loose pictures, a picture to project."""
    pictures = [[f"pics/{i}.png", _png(10 + i, (12 + i, 10 + 2 * i)), zipfile.ZIP_STORED] for i in range(3)]
    pictures += [["pics/photo.jpg", _jpeg(5, (20, 16)), zipfile.ZIP_STORED]]
    out = []
    for s in network_seeds("pt")[1:] + network_seeds("nvidia")[:1]:
        out.append(Seed("network-" + s.name, s.tree, s.write, "network"))
    out.append(Seed("zip-of-pictures", pictures, _write_zip_tree("pictures.zip"), "prepare"))
    out.append(Seed("loose-pictures", pictures, _write_folder_tree("loose"), "prepare-loose"))
    out.append(Seed("picture", [["target.png", _png(3, (20, 14)), 0]], _write_folder_tree("picture"), "project"))
    return out


def door_upload(path, seed, ctx):
    fns = ctx["fns"]
    kind = seed.door_kind
    if kind == "network":
        fns["upload_network"](str(path))
        return "network upload accepted"
    if kind in ("prepare", "prepare-loose"):
        files = [str(path)] if kind == "prepare" else [str(p) for p in sorted(path.rglob("*")) if p.is_file()]
        fns["prepare"](ctx["SRC_UPLOAD"], files, "", "fuzz", 8, None, "center-crop", "RGB", ctx["LABELS_AUTO"],
                       False)
        return "prepared"
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
    if not files:
        files = [path / "gone.png"]
    for _ in fns["explore_project"](ctx["tiny_label"], str(files[0]), 1, "w", "pixel", 0, "const"):
        pass
    return "projected"


def _upload_case(index, seeds, folder):
    """Uploads: the seed's files mutated, and named as a visitor may name them."""
    rng = random.Random(f"uploads/{index}")
    m = Mutator(rng)
    seed = seeds[rng.randrange(len(seeds))]
    tree = seed.tree
    steps = []
    if seed.door_kind != "network" and isinstance(tree, list) and rng.random() < 0.5:
        tree = deep_copy(tree)
        e = rng.choice(tree)
        e[1] = m.mutate_bytes(e[1])
        steps.append(f"member {e[0]}")
    path = seed.write(tree, folder)
    if path.is_file() and (not steps or rng.random() < 0.3):
        path.write_bytes(m.mutate_bytes(path.read_bytes()))
        steps.append("bytes")
    if path.is_file() and rng.random() < 0.3:  # a visitor's own file name
        name = rng.choice(["../../x.pt", "net work (1).pt", "\u00fcber.PKL", "a" * 200 + ".pt", ".pt", "x.pt.pkl",
                           "x.zip", "x", "-x.pt", "x.pkl\n"])
        target = path.with_name(name.replace("/", "_").replace("\n", "_")[:200])
        path.rename(target)
        path = target
        steps.append(f"named {target.name!r}")
    return path, seed, "+".join(steps) or "seed"


# --------------------------------------------------------------------------------------------------------------
# The child: runs cases, one JSON line each


class DeadlineExceeded(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` of the program swallows it."""


def _state(folder):
    """{relative path: (size, sha1, mode, mtime_ns)} of everything under folder."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        try:
            st = p.lstat()
        except OSError:
            continue
        digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "dir"
        out[str(p.relative_to(folder))] = (st.st_size, digest, st.st_mode, st.st_mtime_ns)
    return out


_MEMORY_WORDS = re.compile(r"can't allocate|cannot allocate|out of memory|MemoryError|bad_alloc|"
                           r"DefaultCPUAllocator", re.I)


def _names_the_file(msg, path, folder):
    p = Path(path)
    candidates = {str(p), p.name, str(p.parent), str(folder)}
    return any(c and c in msg for c in candidates)


def _fail(why):
    return "FAIL", why


def run_case(cls, index, seeds, ctx, folder, door):
    """-> dict(status 'ok' | 'refused' | 'FAIL', why, s, desc)."""
    import resource
    import signal
    import traceback

    from engine.errors import UserError

    folder = Path(folder)
    try:
        if cls == "uploads":
            path, seed, desc = _upload_case(index, seeds, folder)
        else:
            path, seed, desc = make_case(cls, index, seeds, folder)
    except Exception as e:  # a fault of this file, not of the program: reported, and the run goes on
        return {"cls": cls, "i": index, "status": "FAIL", "why": f"making the case failed: {e!r}"[:700], "s": 0}
    hooks = ctx.get("hooks", {}).get(cls, {})
    before = _state(folder)
    hooks.get("before_case", lambda: None)()
    fired = []

    def alarm(signum, frame):
        fired.append(True)
        raise DeadlineExceeded(f"over {DEADLINE:g} s")

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    old = signal.signal(signal.SIGALRM, alarm)
    outer = signal.setitimer(signal.ITIMER_REAL, DEADLINE)  # a caller's own alarm (pytest-timeout) comes back after
    t0 = time.perf_counter()
    try:
        status, why = "ok", door(path, seed, ctx)
    except DeadlineExceeded as e:
        status, why = _fail(f"deadline: {e}")
    except UserError as e:
        status, why = "refused", str(e)
    except MemoryError:
        status, why = _fail("MemoryError (an allocation the file did not pay for)")
    except Unusable as e:
        status, why = _fail(f"returned something unusable: {e}")
    except Exception as e:
        status, why = hooks.get("classify", _classify_other)(e, path)
        if status == "FAIL":
            tb = traceback.extract_tb(e.__traceback__)
            where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb)
                          if str(ROOT) in f.filename and "/tests/" not in f.filename), "?")
            why = f"{type(e).__name__} at {where}: {str(e)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer[0] - (time.perf_counter() - t0), 0.001), outer[1])
    seconds = time.perf_counter() - t0
    rise_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    if rise_mb > CASE_RSS_MB and status != "FAIL":
        status, why = _fail(f"raised the peak memory by {rise_mb:.0f} MB ({status}: {why[:300]})")
    if fired and status != "FAIL":  # the program caught the alarm and carried on
        status, why = _fail(f"deadline: over {DEADLINE:g} s (the alarm was swallowed: {why[:200]})")
    if status == "refused":
        if "\n" in why or len(why) > 1500:
            status, why = _fail(f"message is not one line: {why[:600]!r}")
        elif not _names_the_file(why, path, folder) and not hooks.get("names_optional"):
            status, why = _fail(f"message does not name the file: {why[:400]}")
    if status != "FAIL" and _MEMORY_WORDS.search(why or ""):
        status, why = _fail(f"ran out of memory: {why[:400]}")
    extra = hooks.get("after_case", lambda s: None)(status)
    if extra and status != "FAIL":
        status, why = _fail(extra)
    after = _state(folder)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if status != "FAIL":
            status, why = _fail(f"the case's files changed: {changed[:5]}")
    return {"cls": cls, "i": index, "status": status, "why": (why or "")[:700], "s": round(seconds, 4),
            "seed": seed.name, "desc": desc, "mb": round(max(rise_mb, 0), 1)}


def _classify_other(e, path):
    return "FAIL", ""


def _vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _limit_memory():
    import resource

    limit = _vm_size() + MEMORY_BUDGET_MB * 2 ** 20
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def build_context(classes, work):
    """Seeds of every class in `classes`, the tiny generator latents are read against and, for uploads, the
    dashboard built on a workdir under `work` with hooks that check and restore that workdir around each case."""
    ctx = {"seeds": {}, "hooks": {}}
    G = None
    if "latents" in classes:
        G = tiny_networks()[0]
        ctx["G"] = G
    for cls in classes:
        if cls in ("pt", "nvidia", "tf", "safetensors"):
            ctx["seeds"][cls] = network_seeds(cls)
        elif cls == "dataset":
            ctx["seeds"][cls] = dataset_seeds()
        elif cls == "latents":
            ctx["seeds"][cls] = latent_seeds(G)
        elif cls == "uploads":
            ui = _ui_context(work)
            ctx["hooks"].update(ui.pop("hooks"))
            ctx["seeds"][cls] = ui.pop("seeds_uploads")
            ctx.update(ui)
    return ctx


def _ui_context(work):
    import logging

    import app as studio_app
    from ui import data_tab, networks
    from ui.common import Studio

    import torch

    from engine.checkpoint import pack_network, save_snapshot
    from engine.nets import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 1},
                  channel_base=16, channel_max=2).eval()

    net_dir = Path(work) / "studio" / "uploads" / "networks"
    net_dir.mkdir(parents=True)
    save_snapshot(net_dir / "tiny.pt", {"format": "stylegan-studio", "version": 1, "G_ema": pack_network(G)})
    studio = Studio(Path(work) / "studio", shared=False, max_upload_mb=5)
    demo = studio_app.build_app(studio)
    fns = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name}

    logged = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.exc_info:
                logged.append(f"{record.exc_info[0].__name__}: {str(record.exc_info[1])[:300]}")

    logging.getLogger("studio").addHandler(Catch())
    import gradio as gr

    def classify(e, path):
        if isinstance(e, gr.Error):
            msg = str(e.message if hasattr(e, "message") else e)
            if logged:  # the handler's catch-all: a failure of the program shown as one line
                return "FAIL", f"unexpected {logged[-1]} (shown as: {msg[:200]})"
            return "refused", msg
        return "FAIL", ""

    def workdir_state():
        return {k: v for k, v in _state(studio.workdir).items() if not k.startswith("outputs")}

    baseline = {}

    def before_case():
        logged.clear()
        baseline["state"] = workdir_state()

    def after_case(status):
        now = workdir_state()
        extra = sorted(set(now) - set(baseline["state"]))
        gone = sorted(set(baseline["state"]) - set(now))
        # An accepted upload is kept (the network, the prepared dataset): put the workdir back for the next case.
        if status == "ok":
            for k in extra:
                p = studio.workdir / k
                if p.is_file():
                    p.unlink()
            for k in sorted(extra, reverse=True):
                p = studio.workdir / k
                if p.is_dir():
                    p.rmdir()
            networks._cache.clear()
            return "files of the workdir were removed: " + ", ".join(gone[:3]) if gone else None
        # A refused prepare leaves its report beside where the dataset would be: it says what was skipped and why.
        extra = [k for k in extra if not (k.startswith("datasets/") and k.endswith(".report.json"))]
        for k in set(now) - set(baseline["state"]):
            if k not in extra:
                (studio.workdir / k).unlink()
        if extra or gone:
            import shutil

            for k in extra:
                shutil.rmtree(studio.workdir / k, ignore_errors=True)
                (studio.workdir / k).unlink(missing_ok=True)
            return f"a refused upload left the workdir changed: new {extra[:3]}, gone {gone[:3]}"
        return None

    # Messages of the dashboard name the upload as the visitor named it, or not at all (a shared dashboard
    # hides server paths).
    hooks = {"classify": classify, "before_case": before_case, "after_case": after_case, "names_optional": True}
    return {"fns": fns, "studio": studio, "SRC_UPLOAD": data_tab.SRC_UPLOAD,
            "LABELS_AUTO": "Automatic (the source's own, if any)", "tiny_label": "uploaded / tiny.pt",
            "hooks": {"uploads": hooks}, "seeds_uploads": upload_seeds()}


def child_main(spec):
    """spec: {'work': folder, 'cases': [[class, first index, count], ...]}; one JSON line per case on stdout."""
    import resource
    import shutil

    sys.path[:0] = [str(ROOT), str(TESTS)]
    os.environ.setdefault("STUDIO_TEST", "1")
    os.environ.setdefault("STUDIO_DETECTOR", "offline")
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    classes = [c for c, _, _ in spec["cases"]]
    work = Path(spec["work"])
    ctx = build_context(classes, work)
    # One clean case of each class first, so that what the program keeps once loaded is in the baseline.
    for cls, _, _ in spec["cases"]:
        folder = work / f"warm-{cls}"
        folder.mkdir()
        for seed in ctx["seeds"][cls]:
            sub = folder / seed.name
            sub.mkdir()
            path = seed.files(sub)
            if seed.door_kind == "sidecar":
                path = path.with_suffix(".json")
            if cls == "uploads":
                ctx["hooks"][cls]["before_case"]()
                try:
                    door_upload(path, seed, ctx)
                finally:
                    ctx["hooks"][cls]["after_case"]("ok")
            else:
                DOORS[cls](path, seed, ctx)
    if spec.get("limit_memory", True):
        _limit_memory()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    setup_cpu = usage.ru_utime + usage.ru_stime
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for cls, first, count in spec["cases"]:
        door = door_upload if cls == "uploads" else DOORS[cls]
        for index in range(first, first + count):
            folder = work / f"{cls}-case"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            print(json.dumps({"start": index, "cls": cls}), flush=True)
            print(f"case {cls} {index}", file=sys.stderr, flush=True)  # places what the program prints
            result = run_case(cls, index, ctx["seeds"][cls], ctx, folder, door)
            print(json.dumps(result), flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rise = (usage.ru_maxrss - base_rss) / 1024
    print(json.dumps({"done": True, "peak_rise_mb": round(rise, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                      "setup_cpu_s": round(setup_cpu, 1)}), flush=True)


# --------------------------------------------------------------------------------------------------------------
# The parent side


def run_child(cases, work, hang_after=DEADLINE * 3 + 30, limit_memory=True):
    """Run `cases` ([[class, first, count]]) in a child -> (results, summary).

    results: one dict per case; a case the child never finished (it hung in native code, or the child died) is a
    FAIL. summary: {'peak_rise_mb', 'seconds', 'stderr'}.
    """
    spec = {"work": str(work), "cases": cases, "limit_memory": limit_memory}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__)), "run", json.dumps(spec)], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="0"))
    lines = queue.Queue()
    err = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    results, summary, current = [], {}, None
    setup_allowance = 120  # imports, seeds, building the dashboard
    while True:
        try:
            line = lines.get(timeout=setup_allowance if current is None and not results else hang_after)
        except queue.Empty:
            proc.kill()
            if current is not None:
                results.append({"cls": current["cls"], "i": current["start"], "status": "FAIL",
                                "why": f"hung: no answer within {hang_after:g} s (killed)", "s": hang_after})
            break
        if line is None:
            break
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "start" in msg:
            current = msg
        elif "done" in msg:
            summary.update(msg)
        else:
            results.append(msg)
            current = None
    proc.wait(timeout=60)
    if current is not None and not any(r["i"] == current["start"] and r["cls"] == current["cls"] for r in results):
        results.append({"cls": current["cls"], "i": current["start"], "status": "FAIL",
                        "why": f"the child died (exit {proc.returncode}): {''.join(err)[-500:]}", "s": 0})
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["returncode"] = proc.returncode
    summary["stderr"] = "".join(err)[-3000:]
    return results, summary


def replay(cls, index, folder=None):
    """Write case `index` of `cls` into `folder` and run its door in this process, tracebacks and all."""
    import tempfile

    sys.path[:0] = [str(ROOT), str(TESTS)]
    folder = Path(folder or tempfile.mkdtemp(prefix=f"fuzz-{cls}-{index}-"))
    work = folder / "work"
    work.mkdir(parents=True, exist_ok=True)
    ctx = build_context([cls], work)
    case = folder / "case"
    case.mkdir(exist_ok=True)
    if cls == "uploads":
        path, seed, desc = _upload_case(index, ctx["seeds"][cls], case)
        door = door_upload
    else:
        path, seed, desc = make_case(cls, index, ctx["seeds"][cls], case)
        door = DOORS[cls]
    print(f"case {cls} {index}: seed {seed.name}, {desc}: {path}")
    _limit_memory()  # as in the child, so that an allocation the file did not pay for fails here too
    print(door(path, seed, ctx))


if __name__ == "__main__":
    if sys.argv[1] == "run":
        child_main(json.loads(sys.argv[2]))
    elif sys.argv[1] == "replay":
        replay(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        raise SystemExit(__doc__)
