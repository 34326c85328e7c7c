"""export --format nvidia-pkl: our networks as NVIDIA's TF-era (G, D, Gs) pickle, on tiny networks.

NVIDIA's code is not used here: the file is read back by our own TF-era import (engine.load_network), by the rules
NVIDIA's loader builds its networks with (engine.nvidia.tf_export.read_as_nvidia_loader), and by a plain unpickler
that maps the one class name to a dict, as NVIDIA's loader does; its opcodes are inspected for every global it names.
"""

import io
import os
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.__main__ import main
from engine.checkpoint import FORMAT, VERSION, load_network, pack_network, save_snapshot
from engine.errors import UserError
from engine.export import export
from engine.nets import Discriminator, Generator
from engine.nvidia import tf_export
from engine.nvidia.unpickler import read_pickle

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5  # float32 reorderings; the style bias is stored less 1 and read back plus 1


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("STUDIO_OPS", "ref")


def randomised(net, seed):
    """Every tensor made to matter: zero ones (biases, noise strengths, w_avg) random, the others (weights at the
    scale their learning-rate multiplier gives them, styles' bias around 1) varied."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if "resample_filter" in name:
                continue
            noise = torch.randn(t.shape, generator=gen)
            if t.abs().max() == 0:
                t.copy_(noise * 0.3 + 0.05)
            else:
                t.mul_(1 + 0.2 * noise)
    return net.eval()


def tiny_nets(c_dim=0, channels=3, res=16, g_arch="skip", d_arch="resnet", g_extra=None, d_extra=None, seed=0):
    g_kw = dict(z_dim=8, c_dim=c_dim, w_dim=10, img_resolution=res, img_channels=channels, channel_base=128,
                channel_max=16, architecture=g_arch, mapping_kwargs=dict(num_layers=2))
    g_kw.update(g_extra or {})
    # D's label mapping left at our defaults (8 layers, lr 0.01), as the trainer builds it
    d_kw = dict(c_dim=c_dim, img_resolution=res, img_channels=channels, channel_base=128, channel_max=16,
                architecture=d_arch, epilogue_kwargs=dict(mbstd_group_size=2))
    d_kw.update(d_extra or {})
    return (randomised(Generator(**g_kw), seed), randomised(Discriminator(**d_kw), seed + 1),
            randomised(Generator(**g_kw), seed + 2))


def save(path, G=None, D=None, G_ema=None):
    data = {"format": FORMAT, "version": VERSION, "G_ema": pack_network(G_ema)}
    if G is not None:
        data["G"] = pack_network(G)
    if D is not None:
        data["D"] = pack_network(D)
    save_snapshot(path, data)
    return path


def same_images(G_ref, G_new, tol=TOL):
    z = torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, G_ref.z_dim) for s in range(4)])).float()
    c = torch.zeros([4, G_ref.c_dim])
    if G_ref.c_dim:
        c[torch.arange(4), torch.arange(4) % G_ref.c_dim] = 1
    for psi, cutoff in ((1, None), (0.7, None), (0.5, 2)):
        with torch.no_grad():
            a = G_ref(z, c, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const")
            b = G_new(z, c, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const")
        assert a.abs().max() > 1e-2  # not a degenerate comparison
        assert (a - b).abs().max().item() < tol


def same_scores(D_ref, D_new, tol=TOL):
    img = torch.randn([4, D_ref.img_channels, D_ref.img_resolution, D_ref.img_resolution],
                      generator=torch.Generator().manual_seed(7))
    c = torch.zeros([4, D_ref.c_dim])
    if D_ref.c_dim:
        c[torch.arange(4), torch.arange(4) % D_ref.c_dim] = 1
    with torch.no_grad():
        a, b = D_ref(img, c), D_new(img, c)
    assert a.shape == (4, 1) and a.abs().max() > 1e-3
    assert (a - b).abs().max().item() < tol * max(1.0, a.abs().max().item())


def quiet(*_):
    pass


# --------------------------------------------------------------------------------------------------------------
# Round trips


CASES = [  # c_dim, channels, resolution, G architecture, D architecture
    (0, 3, 16, "skip", "resnet"),
    (3, 1, 8, "skip", "resnet"),
    (2, 3, 32, "orig", "orig"),
    (4, 4, 16, "resnet", "skip"),
]


@pytest.mark.parametrize("c_dim,channels,res,g_arch,d_arch", CASES)
def test_export_reads_back_identical(tmp_path, c_dim, channels, res, g_arch, d_arch):
    G, D, G_ema = tiny_nets(c_dim, channels, res, g_arch, d_arch)
    out = tmp_path / "net.pkl"
    result = export(save(tmp_path / "net.pt", G, D, G_ema), "nvidia-pkl", out, log=quiet)
    assert result["paths"] == [out] and result["notes"] == []
    assert result["max_abs_diff"] < TOL and result["d_max_abs_diff"] < TOL
    loaded = load_network(out)
    assert loaded["source"] == "nvidia-tf"
    assert loaded["G_ema"].init_kwargs["architecture"] == g_arch and loaded["D"].init_kwargs["architecture"] == d_arch
    same_images(G_ema, loaded["G_ema"])
    same_images(G, loaded["G"])
    same_scores(D, loaded["D"])
    nvidia = tf_export.read_as_nvidia_loader(out)  # the networks NVIDIA's loader builds from the settings
    same_images(G_ema, nvidia["G_ema"])
    same_images(G, nvidia["G"])
    same_scores(D, nvidia["D"])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_settings_beyond_the_presets_survive(tmp_path):
    """Mapping depth/width/lr, whole-batch minibatch std, no noise, another filter and activation, frozen layers."""
    G, D, G_ema = tiny_nets(2, 3, 16, g_extra=dict(
        use_noise=False, activation="elu", resample_filter=[1, 2, 1],
        mapping_kwargs=dict(num_layers=3, layer_features=12, lr_multiplier=0.1, activation="linear")), d_extra=dict(
        block_kwargs=dict(activation="elu", resample_filter=[1, 2, 1], freeze_layers=2),
        epilogue_kwargs=dict(mbstd_group_size=None, mbstd_num_channels=2),
        mapping_kwargs=dict(num_layers=2, lr_multiplier=0.5, activation="elu")))
    out = tmp_path / "net.pkl"
    export(save(tmp_path / "net.pt", G, D, G_ema), "nvidia-pkl", out, log=quiet)
    for view in (load_network(out), tf_export.read_as_nvidia_loader(out)):
        same_images(G_ema, view["G_ema"])
        same_images(G, view["G"])
        same_scores(D, view["D"])
        assert view["D"].b4.mbstd.group_size is None
    static = read_pickle(out)[1].static_kwargs
    assert static["mbstd_group_size"] is None and static["mapping_lrmul"] == 0.5 and static["freeze_layers"] == 2


def test_every_preset_exports(tmp_path):
    """The settings every --cfg gives (fp16 ones as on a GPU), conditional, with NVIDIA's preset networks' widths
    cut down: each exports and reads back by NVIDIA's loader's rules."""
    from engine.train.options import TrainOptions
    from engine.train.presets import PRESETS, resolve

    for i, name in enumerate(PRESETS):
        opts = TrainOptions(cfg=name, cond=True, cbase=64, cmax=8, z_dim=8, w_dim=8)
        cfg = resolve(opts, {"resolution": 8, "channels": 3, "label_dim": 3, "name": "x", "path": "x.zip"}, 1,
                      "cuda" if i % 2 else "cpu")
        G = randomised(Generator(**cfg.G_kwargs), i)
        D = randomised(Discriminator(**cfg.D_kwargs), i + 100)
        out = tmp_path / f"{name}.pkl"
        export(save(tmp_path / f"{name}.pt", G, D, G), "nvidia-pkl", out, log=quiet)
        nvidia = tf_export.read_as_nvidia_loader(out)
        same_images(G, nvidia["G_ema"])
        same_scores(D, nvidia["D"])
        assert read_pickle(out)[1].static_kwargs["mapping_layers"] == D.mapping.num_layers


def test_nvidias_pytorch_pickles_export_too(tmp_path):
    """Any network the program reads: here a stylegan3 --cfg=stylegan2 snapshot (its settings carry stylegan3's
    fused_modconv_default, which only chooses a kernel)."""
    from nvidia_fixtures import write_nvidia_pytorch_pkl

    G, D, G_ema = tiny_nets(3, 3, 8)
    src = write_nvidia_pytorch_pkl(tmp_path / "network-snapshot-000100.pkl", G=G, D=D, G_ema=G_ema,
                                   flavor="stylegan3")
    out = tmp_path / "tf-era.pkl"
    export(src, "nvidia-pkl", out, log=quiet)
    loaded = load_network(out)
    same_images(G_ema, loaded["G_ema"])
    same_images(G, loaded["G"])
    same_scores(D, loaded["D"])


def test_network_without_g_or_d(tmp_path, capsys):
    _, _, G_ema = tiny_nets(3, 3, 8)
    src = save(tmp_path / "export.pt", G_ema=G_ema)
    out = tmp_path / "g.pkl"
    with pytest.raises(UserError, match=r"export\.pt holds no discriminator \(D\).*--untrained-d"):
        export(src, "nvidia-pkl", out, log=quiet)
    assert not out.exists()
    export(src, "nvidia-pkl", out, untrained_d=True)
    printed = capsys.readouterr().out
    assert "note: the network holds no training generator (G)" in printed and "newly initialised" in printed
    G_tf, D_tf, Gs_tf = read_pickle(out)
    assert G_tf is Gs_tf  # stored once; a reader that sees G is Gs knows there was no G
    assert D_tf.state["untrained"] is True and "untrained" not in Gs_tf.state
    loaded = load_network(out)
    assert loaded["G"] is None and loaded["D"] is None  # read back as the network was: G_ema alone
    same_images(G_ema, loaded["G_ema"])
    nvidia = tf_export.read_as_nvidia_loader(out)  # NVIDIA's loader gets a complete G and D
    same_images(G_ema, nvidia["G"])
    same_scores(tf_export.untrained_discriminator(G_ema), nvidia["D"])
    again = tmp_path / "again.pkl"
    export(src, "nvidia-pkl", again, untrained_d=True, log=quiet)
    assert again.read_bytes() == out.read_bytes()  # the untrained D comes from a fixed seed


# --------------------------------------------------------------------------------------------------------------
# The file itself


def test_pickle_names_only_the_network_class_and_ndarray(tmp_path):
    G, D, G_ema = tiny_nets(2, 3, 8)
    out = tmp_path / "net.pkl"
    export(save(tmp_path / "net.pt", G, D, G_ema), "nvidia-pkl", out, log=quiet)
    data = out.read_bytes()
    globals_, opcodes = set(), set()
    for op, arg, _ in pickletools.genops(data):
        opcodes.add(op.name)
        if op.name == "GLOBAL":
            globals_.add(arg)
    assert globals_ == {"dnnlib.tflib.network Network", "numpy ndarray"}
    assert not opcodes & {"STACK_GLOBAL", "INST", "OBJ", "PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4"}
    assert b"numpy._core" not in data and b"numpy.core" not in data  # NumPy 1 and 2 both resolve numpy.ndarray

    for net, known in zip(read_pickle(out), (tf_export.G_KNOWN_KWARGS, tf_export.D_KNOWN_KWARGS,
                                              tf_export.G_KNOWN_KWARGS)):
        assert net.state["version"] >= 4 and net.name in ("G", "D", "Gs")
        assert set(net.static_kwargs) <= known
        assert all(v.dtype == np.float32 for v in net.all_variables().values())
    G_tf = read_pickle(out)[0]
    assert set(G_tf.components) == {"mapping", "synthesis"}
    names = G_tf.all_variables()
    assert names["synthesis/4x4/Const/const"].shape == (1, 16, 4, 4)
    assert names["synthesis/8x8/Conv0_up/weight"].shape == (3, 3, 16, 16)  # TF's [kh, kw, in, out]
    assert names["synthesis/noise1"].shape == (1, 1, 8, 8) and names["synthesis/4x4/Conv/noise_strength"].shape == ()
    np.testing.assert_array_equal(names["synthesis/4x4/Conv/mod_bias"] + 1,
                                  G.state_dict()["synthesis.b4.conv1.affine.bias"].numpy())


class _NetworkStub(dict):
    """What NVIDIA's loader turns the one class name into: a dict whose state arrives as attributes."""


class _PlainUnpickler(pickle.Unpickler):
    """The standard unpickler (it imports what the file names), with only the network class mapped."""

    def find_class(self, module, name):
        if (module, name) == ("dnnlib.tflib.network", "Network"):
            return _NetworkStub
        if module.startswith("numpy._core"):  # NumPy 1 has no numpy._core: a file naming it would not load there
            raise pickle.UnpicklingError(f"{module}.{name} does not exist in NumPy 1")
        return super().find_class(module, name)


def test_a_plain_unpickler_reads_it_as_nvidias_loader_does(tmp_path):
    G, D, G_ema = tiny_nets(0, 3, 8)
    out = tmp_path / "net.pkl"
    export(save(tmp_path / "net.pt", G, D, G_ema), "nvidia-pkl", out, log=quiet)
    G_tf, D_tf, Gs_tf = _PlainUnpickler(io.BytesIO(out.read_bytes())).load()
    for net in (G_tf, D_tf, Gs_tf):
        assert isinstance(net, _NetworkStub) and net.version == 4
    assert isinstance(Gs_tf.components["mapping"], _NetworkStub)
    variables = dict(Gs_tf.components["mapping"].variables)
    np.testing.assert_array_equal(variables["Dense0/weight"], G_ema.state_dict()["mapping.fc0.weight"].numpy().T)
    np.testing.assert_array_equal(dict(D_tf.variables)["Output/weight"], D.state_dict()["b4.out.weight"].numpy().T)


# --------------------------------------------------------------------------------------------------------------
# What the format cannot hold, and bad input


@pytest.mark.parametrize("g_extra,d_extra,words", [
    (dict(channel_base=129), {}, ["G_ema", "channel_base 129 is odd"]),
    (dict(mapping_kwargs=dict(num_layers=2, w_avg_beta=None)), {}, ["w_avg"]),
    ({}, dict(epilogue_kwargs=dict(activation="elu")), ["D", "epilogue's activation 'elu'"]),
    ({}, dict(mapping_kwargs=dict(embed_features=6)), ["D", "label mapping's widths"]),
])
def test_what_the_format_cannot_hold_is_refused(tmp_path, g_extra, d_extra, words):
    G, D, G_ema = tiny_nets(2, 3, 8, g_extra=g_extra, d_extra=d_extra)
    out = tmp_path / "net.pkl"
    with pytest.raises(UserError) as e:
        export(save(tmp_path / "net.pt", G, D, G_ema), "nvidia-pkl", out, log=quiet)
    message = str(e.value)
    assert "\n" not in message and "cannot hold" in message and "net.pt" in message
    for w in words:
        assert w in message
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_command_line_errors_are_one_line(tmp_path, capsys):
    G, D, G_ema = tiny_nets(0, 3, 8)
    net = save(tmp_path / "net.pt", G, D, G_ema)

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
        return err

    assert "missing.pt does not exist" in run("export", "--network", tmp_path / "missing.pt", "--format",
                                              "nvidia-pkl", "--out", tmp_path / "x.pkl")
    assert "named *.pkl" in run("export", "--network", net, "--format", "nvidia-pkl", "--out", tmp_path / "x.pt")
    assert "--untrained-d is for --format nvidia-pkl" in run("export", "--network", net, "--format", "torchscript",
                                                             "--out", tmp_path / "x.ts", "--untrained-d")
    (tmp_path / "x.pkl").write_bytes(b"old")
    assert "already exists" in run("export", "--network", net, "--format", "nvidia-pkl", "--out", tmp_path / "x.pkl")
    assert (tmp_path / "x.pkl").read_bytes() == b"old"
    assert main(["export", "--network", str(net), "--format", "nvidia-pkl", "--out", str(tmp_path / "x.pkl"),
                 "--overwrite"]) == 0
    assert "max abs difference" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    G, D, G_ema = tiny_nets(3, 3, 16)
    net = save(tmp_path / "net.pt", G, D, G_ema)
    env = dict(os.environ, STUDIO_OPS="ref", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("STUDIO_DEBUG", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    r = cli("export", "--network", net, "--format", "nvidia-pkl", "--out", tmp_path / "net.pkl")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "3 classes" in r.stdout and "max abs difference" in r.stdout
    r = cli("generate", "--network", tmp_path / "net.pkl", "--seeds", "0-1", "--class", "1", "--outdir",
            tmp_path / "a")
    assert r.returncode == 0, r.stderr
    r = cli("generate", "--network", net, "--seeds", "0-1", "--class", "1", "--outdir", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    from PIL import Image

    for name in ("seed0000.png", "seed0001.png"):
        a = np.asarray(Image.open(tmp_path / "a" / name), dtype=int)
        b = np.asarray(Image.open(tmp_path / "b" / name), dtype=int)
        assert np.abs(a - b).max() <= 1
    save(tmp_path / "g_ema.pt", G_ema=G_ema)
    r = cli("export", "--network", tmp_path / "g_ema.pt", "--format", "nvidia-pkl", "--out", tmp_path / "g.pkl")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "no discriminator" in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "g.pkl").exists()


# --------------------------------------------------------------------------------------------------------------
# The dashboard's export panel


def test_dashboard_export_panel(tmp_path):
    from ui import model_tools
    from ui.common import Studio
    from ui.networks import network_choices

    G, D, G_ema = tiny_nets(0, 3, 8)
    studio = Studio(tmp_path / "studio", demo_network=tmp_path / "no-demo.pt")
    run = studio.runs_dir / "00000-blobs-tiny"
    run.mkdir(parents=True)
    save(run / "network-snapshot-000004.pt", G, D, G_ema)
    save(studio.uploads_dir / "networks" / "only-g-ema.pt", G_ema=G_ema)
    labels = list(network_choices(studio))
    snapshot = next(x for x in labels if x.startswith("run 00000"))
    files, report = model_tools.export_network(studio, snapshot, "nvidia-pkl")
    assert [Path(f).name for f in files] == ["00000-kimg000004.pkl"]
    assert str(studio.outputs_dir) in files[0]
    assert "NVIDIA's TF-era pickle" in report and "max abs difference" in report and "D scores" in report
    assert str(tmp_path) not in report
    same_scores(D, load_network(files[0])["D"])
    with pytest.raises(UserError, match="no discriminator"):
        model_tools.export_network(studio, "uploaded / only-g-ema.pt", "nvidia-pkl")
    files, report = model_tools.export_network(studio, "uploaded / only-g-ema.pt", "nvidia-pkl", untrained_d=True)
    assert "newly initialised" in report and str(tmp_path) not in report
    assert load_network(files[0])["D"] is None
    # The tick only concerns the NVIDIA pickle; the other formats hold no D and ignore it
    files, _ = model_tools.export_network(studio, "uploaded / only-g-ema.pt", "safetensors", untrained_d=True)
    assert files[0].endswith(".safetensors")
