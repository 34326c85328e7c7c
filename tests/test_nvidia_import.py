"""Importing NVIDIA's pickles (stylegan2-ada-pytorch, stylegan3 --cfg=stylegan2, TF era) without running them.

The pickles are written by tests/nvidia_fixtures.py with the documented structure of NVIDIA's files, from our
randomly initialised networks; loading must give back the same images and D logits.
"""

import io
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch

from engine.checkpoint import load_network
from engine.errors import UserError
from engine.generate import generate_images
from engine.nets import Discriminator, Generator
from engine.nvidia.unpickler import RestrictedUnpickler, UnsafeGlobalError
from nvidia_fixtures import _nvidia_module_names, nvidia_pytorch_snapshot, write_nvidia_pytorch_pkl, \
    write_nvidia_tf_pkl


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    # These tests are about files and generation; the compiled kernels have their own tests, and a first-use
    # kernel build would only add minutes here.
    monkeypatch.setenv("STUDIO_OPS", "ref")


SEEDS = [0, 1, 2, 3]


def randomised_nets(c_dim, channels, g_arch="skip", d_arch="resnet", res=16, seed=1):
    torch.manual_seed(seed)
    G = Generator(z_dim=12, c_dim=c_dim, w_dim=10, img_resolution=res, img_channels=channels,
                  mapping_kwargs=dict(num_layers=2, lr_multiplier=1.0), channel_base=128, channel_max=16,
                  architecture=g_arch)
    D = Discriminator(c_dim=c_dim, img_resolution=res, img_channels=channels, channel_base=128, channel_max=16,
                      architecture=d_arch, epilogue_kwargs=dict(mbstd_group_size=2))
    with torch.no_grad():
        for net in (G, D):
            for t in list(net.parameters()) + [b for n, b in net.named_buffers() if "resample_filter" not in n]:
                t.copy_(torch.randn_like(t) * 0.3 + 0.05)
    G_ema = Generator(**G.init_kwargs)
    G_ema.load_state_dict(G.state_dict())
    with torch.no_grad():
        for p in G_ema.parameters():
            p.mul_(0.9)
    return G.eval(), D.eval(), G_ema.eval()


def class_idx_for(G):
    return 1 if G.c_dim else None


def assert_same_images(G_ref, G_loaded):
    """Seeds 0-3 (NVIDIA's seed -> z rule), psi 1 and 0.7, noise const: float images within 1e-4."""
    z = torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, G_ref.z_dim) for s in SEEDS])).float()
    c = torch.zeros(len(SEEDS), G_ref.c_dim)
    if G_ref.c_dim:
        c[:, 1] = 1
    for psi in (1, 0.7):
        with torch.no_grad():
            fa = G_ref(z, c, truncation_psi=psi, noise_mode="const")
            fb = G_loaded(z, c, truncation_psi=psi, noise_mode="const")
        assert fa.shape == (len(SEEDS), G_ref.img_channels, G_ref.img_resolution, G_ref.img_resolution)
        assert fa.abs().max().item() > 1e-3  # not a degenerate all-zero comparison
        assert (fa - fb).abs().max().item() < 1e-4


def assert_same_logits(D_ref, D_loaded, c_dim, channels, res=16):
    torch.manual_seed(5)
    img = torch.randn(4, channels, res, res)
    c = torch.nn.functional.one_hot(torch.arange(4) % max(c_dim, 1), max(c_dim, 1)).float()[:, :c_dim]
    with torch.no_grad():
        a = D_ref(img, c)
        b = D_loaded(img, c)
    assert a.shape == (4, 1)
    assert (a - b).abs().max().item() < 1e-4


CASES = [  # c_dim, channels, G architecture, D architecture
    (0, 3, "skip", "resnet"),
    (4, 1, "skip", "resnet"),
    (0, 4, "orig", "orig"),
    (3, 3, "resnet", "skip"),
]


@pytest.mark.parametrize("flavor", ["ada", "stylegan3"])
@pytest.mark.parametrize("c_dim,channels,g_arch,d_arch", CASES)
def test_pytorch_pickle_reproduces_images_and_logits(tmp_path, flavor, c_dim, channels, g_arch, d_arch):
    G, D, G_ema = randomised_nets(c_dim, channels, g_arch, d_arch)
    path = write_nvidia_pytorch_pkl(tmp_path / "network-snapshot-000100.pkl", G=G, D=D, G_ema=G_ema,
                                    flavor=flavor, augment_p=0.25,
                                    training_set_kwargs={"path": "/data/faces.zip", "use_labels": bool(c_dim)})
    out = load_network(path)
    assert out["source"] == "nvidia-pytorch"
    assert out["G_ema"].init_kwargs["img_channels"] == channels
    assert out["G_ema"].c_dim == c_dim
    assert_same_images(G_ema, out["G_ema"])
    assert_same_images(G, out["G"])
    assert_same_logits(D, out["D"], c_dim, channels)
    assert out["augment_p"] == pytest.approx(0.25)
    assert out["augment_kwargs"]["xflip"] == 1
    assert out["dataset"]["path"] == "/data/faces.zip" and out["dataset"]["name"] == "faces"
    assert not any(p.requires_grad for p in out["G_ema"].parameters())


def test_pickle_with_only_g_ema(tmp_path):
    _, _, G_ema = randomised_nets(0, 3)
    path = write_nvidia_pytorch_pkl(tmp_path / "ffhq.pkl", G_ema=G_ema)
    out = load_network(path)
    assert out["G"] is None and out["D"] is None and out["augment_p"] is None
    assert_same_images(G_ema, out["G_ema"])
    # The generation path gives NVIDIA's uint8 pictures from the imported network.
    a = generate_images(G_ema, SEEDS, psi=0.7)
    b = generate_images(out["G_ema"], SEEDS, psi=0.7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("c_dim,channels,g_arch,d_arch,protocol", [case + (3,) for case in CASES] + [
    (0, 3, "skip", "resnet", 2), (2, 3, "skip", "resnet", 4)])
def test_tf_pickle_reproduces_images_and_logits(tmp_path, c_dim, channels, g_arch, d_arch, protocol):
    G, D, Gs = randomised_nets(c_dim, channels, g_arch, d_arch)
    path = write_nvidia_tf_pkl(tmp_path / "stylegan2-tf.pkl", G, D, Gs, protocol=protocol)
    out = load_network(path)
    assert out["source"] == "nvidia-tf"
    assert out["G_ema"].init_kwargs["architecture"] == g_arch
    assert out["D"].init_kwargs["architecture"] == d_arch
    assert_same_images(Gs, out["G_ema"])
    assert_same_images(G, out["G"])
    assert_same_logits(D, out["D"], c_dim, channels)


def test_tf_variable_layout_is_nvidias(tmp_path):
    """The written TF variables have TF's layouts, so the test above really exercises the conversion."""
    from nvidia_fixtures import tf_discriminator_variables, tf_generator_variables

    G, D, _ = randomised_nets(0, 3)
    own, comps = tf_generator_variables(G)
    syn = comps["synthesis"]
    assert syn["4x4/Const/const"].shape == (1, 16, 4, 4)
    assert syn["noise0"].shape == (1, 1, 4, 4) and syn["noise3"].shape == (1, 1, 16, 16)
    w = G.synthesis.b8.conv0.weight.detach().numpy()  # [out, in, kh, kw]
    assert syn["8x8/Conv0_up/weight"].shape == (3, 3, w.shape[1], w.shape[0])
    assert np.array_equal(syn["8x8/Conv0_up/weight"][0, 0], w[:, :, 2, 2].T)  # flipped
    assert np.allclose(syn["8x8/Conv1/mod_bias"] + 1, G.synthesis.b8.conv1.affine.bias.detach().numpy())
    assert comps["mapping"]["Dense0/weight"].shape == (12, 10)
    assert own["dlatent_avg"].shape == (10,)
    dv = tf_discriminator_variables(D)
    assert "16x16/FromRGB/weight" in dv and "Output/weight" in dv and "4x4/Dense0/weight" in dv


# ---------------------------------------------------------------------------------------------------------------
# Refusing code


def _marker_payload(marker):
    return f"touch {marker}"


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("make", [
    lambda m: (os.system, (_marker_payload(m),)),
    lambda m: (subprocess.Popen, (["touch", str(m)],)),
    lambda m: (eval, (f"open({str(m)!r}, 'w').close()",)),
    lambda m: (exec, (f"open({str(m)!r}, 'w').close()",)),
])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, make):
    marker = tmp_path / "pwned"
    func, args = make(marker)
    # The payload is hidden inside an otherwise well-formed NVIDIA snapshot.
    _, _, G_ema = randomised_nets(0, 3)
    data = nvidia_pytorch_snapshot(G_ema=G_ema)
    data["training_set_kwargs"] = {"path": _Evil(func, *args)}
    path = tmp_path / "evil.pkl"
    with _nvidia_module_names(), open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    # The payload is live: a plain pickle.loads of the same construction does run it.
    probe_marker = tmp_path / "probe-ran"
    probe_func, probe_args = make(probe_marker)
    result = pickle.loads(pickle.dumps(_Evil(probe_func, *probe_args)))
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert probe_marker.exists()
    with pytest.raises(UserError) as e:
        load_network(path)
    msg = str(e.value)
    assert "refusing" in msg and "nothing in it was run" in msg
    assert f"{func.__module__}.{func.__qualname__}".replace("builtins.", "") in msg.replace("builtins.", "")
    assert not marker.exists()


@pytest.mark.parametrize("raw,name", [
    (b"cos\nsystem\n(S'touch MARK'\ntR.", "os.system"),
    (b"cposix\nsystem\n(S'touch MARK'\ntR.", "posix.system"),
    (b"c__builtin__\neval\n(S'open(\"MARK\",\"w\")'\ntR.", "builtins.eval"),
    (b"csubprocess\nPopen\n((S'touch'\nS'MARK'\nltR.", "subprocess.Popen"),
    (b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'__subclasses__'\ntR.", "builtins.getattr"),
])
def test_hand_written_payloads_are_refused(tmp_path, raw, name):
    marker = tmp_path / "MARK"
    path = tmp_path / "evil.pkl"
    path.write_bytes(raw.replace(b"MARK", str(marker).encode()))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(UserError, match=name.replace(".", r"\.")):
            load_network(path)
    finally:
        os.chdir(cwd)
    assert not marker.exists()


def test_payload_inside_a_storage_is_refused(tmp_path):
    """Storage bytes are a nested pickle: they are opened with torch's weights-only loader, never plainly."""
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2)

    class Storage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (inner,))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Storage()}, protocol=4))
    with pytest.raises(UserError):
        load_network(path)
    assert not marker.exists()


def test_embedded_source_code_is_never_executed(tmp_path):
    marker = tmp_path / "source-ran"
    src = f"open({str(marker)!r}, 'w').close()\nraise SystemExit('executed')\n"
    _, _, G_ema = randomised_nets(0, 3)
    path = write_nvidia_pytorch_pkl(tmp_path / "net.pkl", G_ema=G_ema, module_src=src)
    out = load_network(path)
    assert not marker.exists()
    assert_same_images(G_ema, out["G_ema"])


def test_restricted_unpickler_reports_the_global():
    with pytest.raises(UnsafeGlobalError) as e:
        RestrictedUnpickler(io.BytesIO(b"cos\nsystem\n(S'true'\ntR.")).load()
    assert e.value.name == "os.system"


def test_torch_save_archives_holding_nvidia_objects(tmp_path):
    """Files re-saved with torch.save (zip or legacy format) still go through the allow-list."""
    _, _, G_ema = randomised_nets(2, 3)
    data = nvidia_pytorch_snapshot(G_ema=G_ema)
    for zip_format in (True, False):
        path = tmp_path / f"resaved-{zip_format}.pt"
        with _nvidia_module_names():
            torch.save(data, path, _use_new_zipfile_serialization=zip_format)
        out = load_network(path)
        assert out["source"] == "nvidia-pytorch"
        assert_same_images(G_ema, out["G_ema"])
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"G_ema": _Evil(os.system, f"touch {marker}")}, evil)
    with pytest.raises(UserError, match="os.system|posix.system"):
        load_network(evil)
    assert not marker.exists()


def test_stylegan3_networks_are_refused_clearly(tmp_path):
    _, _, G_ema = randomised_nets(0, 3)
    data = nvidia_pytorch_snapshot(G_ema=G_ema, flavor="stylegan3")
    synthesis = data["G_ema"].meta["state"]["_modules"]["synthesis"]
    inp = nvidia_pytorch_snapshot(G_ema=G_ema)["G_ema"]  # any persistent object will do as the input layer
    inp.meta["class_name"] = "SynthesisInput"
    synthesis.meta["state"]["_modules"]["input"] = inp
    path = tmp_path / "stylegan3-t.pkl"
    with _nvidia_module_names(), open(path, "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(UserError, match="StyleGAN3"):
        load_network(path)


def test_unrecognised_tf_variables_are_refused(tmp_path):
    from nvidia_fixtures import Network, _tf_network, tf_discriminator_static_kwargs, \
        tf_discriminator_variables, tf_generator_network

    G, D, _ = randomised_nets(0, 3)
    Gs = tf_generator_network(G, "Gs")
    Gs._state["components"]["synthesis"]._state["variables"].append(
        ("16x16/Conv1/lod_weight", np.zeros(3, np.float32)))
    D_net = _tf_network("D", "D_stylegan2", tf_discriminator_static_kwargs(D), tf_discriminator_variables(D))
    path = tmp_path / "odd.pkl"
    with _nvidia_module_names(), open(path, "wb") as f:
        pickle.dump((tf_generator_network(G), D_net, Gs), f)
    with pytest.raises(UserError, match="16x16/Conv1/lod_weight"):
        load_network(path)
    assert isinstance(Gs, Network)
