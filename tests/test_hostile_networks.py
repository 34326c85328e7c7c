"""Crafted network files of a few bytes must not allocate gigabytes, run for long or overflow the stack.

Every hostile file is loaded in one child process whose peak resident memory is compared with its peak before
the loads: a single unbounded allocation (bytearray(N), str() of a shared structure, an inflating zip record, a
network built from settings the file cannot back) would raise it by gigabytes.
"""

import _codecs
import io
import json
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_network, save_snapshot
from engine.errors import UserError
from engine.nets.build import _check_against_file, network_layout
from nvidia_fixtures import _nvidia_module_names, nvidia_pytorch_snapshot

ROOT = Path(__file__).resolve().parent.parent


def tiny_G():
    from engine.nets import Generator

    torch.manual_seed(0)
    return Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 2},
                     channel_base=64, channel_max=8).eval()


class _Call:
    """Pickles as a call of `func(*args)` (func must be importable by its name)."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _shared_list(levels, width=4):
    # Pickled with memo references this stays tiny; written out in full it has width**levels entries.
    x = [0] * width
    for _ in range(levels):
        x = [x] * width
    return x


def _studio(path, kwargs, state=None):
    save_snapshot(path, {"format": "stylegan-studio", "version": 1, "G_ema": {"kwargs": kwargs, "state": state or {}}})
    return path


def _nvidia_pkl(path, data):
    with _nvidia_module_names(), open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


def make_bytearray(d):
    # 2**31 as the argument of builtins.bytearray: 2 GB of zeros from a few bytes.
    p = d / "bytearray.pkl"
    p.write_bytes(b"\x80\x02cbuiltins\nbytearray\nq\x00\x8a\x05\x00\x00\x00\x80\x00\x85q\x01Rq\x02.")
    return p


def make_memo_index(d):
    # One PUT whose memo index is 2**26: a memo array grown to the index would take 1 GB.
    p = d / "memo.pkl"
    p.write_bytes(b"\x80\x02Nr" + (1 << 26).to_bytes(4, "little") + b".")
    return p


class _StorageMarker:
    pass


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        # torch's legacy format: ('storage', type, key, location, number of values, view); 2**30 floats claimed
        return ("storage", torch.FloatStorage, "0", "cpu", 1 << 30, None) if isinstance(obj, _StorageMarker) else None


def make_legacy_storage(d):
    # torch's pre-zip format with a storage that claims 4 GB and holds 16 bytes.
    buf = io.BytesIO()
    for x in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                             "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(x, buf, protocol=2)
    _LegacyPickler(buf, protocol=2).dump({"G_ema": _StorageMarker()})
    pickle.dump(["0"], buf, protocol=2)
    buf.write((4).to_bytes(8, "little") + bytes(16))
    p = d / "legacy.pt"
    p.write_bytes(buf.getvalue())
    return p


def make_codecs_encode(d):
    p = d / "codecs.pkl"
    p.write_bytes(pickle.dumps({"G_ema": _Call(_codecs.encode, (_shared_list(12), "latin1"))}, protocol=2))
    return p


def _multiarray():
    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:
        from numpy.core import multiarray
    return multiarray


def make_numpy_scalar(d):
    import numpy as np

    scalar = _multiarray().scalar
    p = d / "npscalar.pkl"
    p.write_bytes(pickle.dumps(_Call(scalar, (np.dtype("float32"), 1 << 33)), protocol=4))
    return p


def make_numpy_placeholder(d):
    import numpy as np

    _reconstruct = _multiarray()._reconstruct
    p = d / "npshape.pkl"
    p.write_bytes(pickle.dumps(_Call(_reconstruct, (np.ndarray, (1 << 20, 1 << 14), b"b")), protocol=4))
    return p


def make_numpy_unbacked(d):
    # numpy.ndarray(shape) with no data would allocate whatever the file declares: 1 TB here.
    import numpy as np

    p = d / "npunbacked.pkl"
    p.write_bytes(pickle.dumps(_Call(np.ndarray, ((1 << 20, 1 << 18),)), protocol=4))
    return p


def make_deflated_zip(d):
    # A torch.save archive with 64 MB of zeros, its records re-written deflated: about 70 KB on disk.
    plain = io.BytesIO()
    torch.save({"format": "stylegan-studio", "version": 1,
                "G_ema": {"kwargs": {}, "state": {"x": torch.zeros(16 << 20)}}}, plain)
    p = d / "deflated.pt"
    with zipfile.ZipFile(io.BytesIO(plain.getvalue())) as src, zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return p


def make_wide_settings(d):
    # Settings inside every limit, describing a 1024 px network with w_dim 4096, in a file of a few KB.
    return _studio(d / "wide.pt", dict(z_dim=512, c_dim=0, w_dim=4096, img_resolution=1024, img_channels=3,
                                       mapping_kwargs={"num_layers": 8}))


def make_w8192(d):
    return _studio(d / "w8192.pt", dict(z_dim=512, c_dim=0, w_dim=8192, img_resolution=256, img_channels=3))


def make_shared_settings(d):
    G = tiny_G()
    data = nvidia_pytorch_snapshot(G_ema=G)
    data["G_ema"].meta["state"]["_init_kwargs"]["synthesis_kwargs"]["resample_filter"] = _shared_list(14)
    return _nvidia_pkl(d / "shared-settings.pkl", data)


def make_cycle(d):
    G = tiny_G()
    data = nvidia_pytorch_snapshot(G_ema=G)
    loop = torch.nn.ModuleList()
    loop._modules["again"] = loop
    data["G_ema"].meta["state"]["_modules"]["loop"] = loop
    return _nvidia_pkl(d / "cycle.pkl", data)


def make_expanded(d):
    # Every tensor a stride-0 view of one value: shapes match, the data is not there.
    G = tiny_G()
    state = {k: torch.zeros(1).expand(v.shape) if v.ndim else v for k, v in G.state_dict().items()}
    return _studio(d / "expanded.pt", dict(G.init_kwargs), state)


CASES = {
    "bytearray": (make_bytearray, r"bytearray from a int"),
    "memo_index": (make_memo_index, r"is not a network file \(no generator found in it\)"),
    "legacy_storage": (make_legacy_storage, r"is not a network file that can be read \(RuntimeError: storage has "
                                            r"wrong byte size"),
    "codecs_encode": (make_codecs_encode, r"_codecs.encode of a list, not of text"),
    "numpy_scalar": (make_numpy_scalar, r"numpy scalar whose data is not bytes"),
    "numpy_placeholder": (make_numpy_placeholder, r"numpy array placeholder of shape"),
    "numpy_unbacked": (make_numpy_unbacked, r"numpy array without its data"),
    "deflated_zip": (make_deflated_zip, r"would inflate from [\d,]+ to [\d,]+ bytes"),
    "wide_settings": (make_wide_settings, r"describe a network of [\d,]+ values, more than this [\d,]+-byte file"),
    "w8192": (make_w8192, r"setting w_dim=8192 is outside 1\.\.4096"),
    "shared_settings": (make_shared_settings, r"nested too deeply or (hold|too) "),
    "cycle": (make_cycle, r"is not a network file that can be read: its module loop(\.again)? contains itself"),
    "expanded": (make_expanded, r"claims more values than its data holds|more than this [\d,]+-byte file"),
}

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    import torch
    from engine.checkpoint import load_network
    from engine.errors import UserError
    load_network  # imports done: measure from here
    torch.zeros(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {}
    for name, path in json.loads(sys.argv[2]).items():
        t = time.perf_counter()
        try:
            load_network(path)
            msg = "LOADED"
        except UserError as e:
            msg = "UserError: " + str(e)
        except BaseException as e:
            msg = "OTHER " + type(e).__name__ + ": " + str(e)[:300]
        out[name] = {"msg": msg, "seconds": time.perf_counter() - t}
    out["_peak_rise_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    files = {name: str(make(d)) for name, (make, _) in CASES.items()}
    for name, path in files.items():
        assert Path(path).stat().st_size < 200_000, (name, Path(path).stat().st_size)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), json.dumps(files)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), files


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_is_refused_in_one_line(outcomes, name):
    import re

    results, files = outcomes
    msg = results[name]["msg"]
    assert msg.startswith("UserError: "), msg
    assert "\n" not in msg and len(msg) < 600, msg
    assert files[name] in msg, msg  # names the file
    assert re.search(CASES[name][1], msg), msg
    assert results[name]["seconds"] < 20, results[name]


def test_hostile_files_allocate_no_more_than_a_few_megabytes(outcomes):
    results, _ = outcomes
    assert results["_peak_rise_mb"] < 100, results


# --------------------------------------------------------------------------------------------------------------
# The limits leave every real network loadable


def _sparse_file(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


REAL_NETWORKS = {
    # NVIDIA's config-f 1024 px (FFHQ, TF era and ADA): about 364 MB for G, D and Gs together.
    "config-f-1024": ("G", dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
                                mapping_kwargs={"num_layers": 8}, channel_base=32768, channel_max=512,
                                num_fp16_res=4, conv_clamp=256, architecture="skip"), 363_971_714),
    "config-f-1024-D": ("D", dict(c_dim=0, img_resolution=1024, img_channels=3, architecture="resnet",
                                  channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256,
                                  block_kwargs={}, mapping_kwargs={},
                                  epilogue_kwargs={"mbstd_group_size": 4}), 363_971_714),
    # Conditional ImageNet-style: 1000 classes at 512 px.
    "conditional-1000": ("G", dict(z_dim=512, c_dim=1000, w_dim=512, img_resolution=512, img_channels=3,
                                   mapping_kwargs={"num_layers": 8}, channel_base=32768, channel_max=512),
                         200_000_000),
    "conditional-1000-D": ("D", dict(c_dim=1000, img_resolution=512, img_channels=3, channel_base=32768,
                                     channel_max=512, mapping_kwargs={"num_layers": 8}), 200_000_000),
    # CIFAR-10 ADA: 32 px, 2 mapping layers, channel_base 16384.
    "cifar": ("G", dict(z_dim=512, c_dim=10, w_dim=512, img_resolution=32, img_channels=3,
                        mapping_kwargs={"num_layers": 2}, channel_base=16384, channel_max=512), 256_000_000),
}


@pytest.mark.parametrize("name", list(REAL_NETWORKS))
def test_real_network_shapes_pass_the_limits(tmp_path, name):
    kind, kwargs, file_size = REAL_NETWORKS[name]
    path = _sparse_file(tmp_path / "net.pkl", file_size)
    layout = network_layout(kind, kwargs, path, kind)  # raises UserError if a limit refused the settings
    assert sum(t.numel() for t in layout.values() if not t.is_meta) < 1000  # measured, not built
    values = sum(t.numel() for t in layout.values())
    assert values * 4 < file_size  # a float32 copy of it fits in the real file
    _check_against_file(layout, path, kind)
    with pytest.raises(UserError, match="more than this"):
        _check_against_file(layout, _sparse_file(tmp_path / "small.pkl", values // 2), kind)


def test_float16_export_of_a_network_still_loads(tmp_path):
    # 2 bytes per value is the densest real file: it must pass the one-byte-per-value bound.
    from engine.export import export_network

    G = tiny_G()
    src = _studio(tmp_path / "g.pt", dict(G.init_kwargs), {k: v.clone() for k, v in G.state_dict().items()})
    dst = export_network(src, tmp_path / "g16.pt", fp16=True)
    assert load_network(dst)["G_ema"].z_dim == 8
