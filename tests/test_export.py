"""engine.export and `python -m engine export` (safetensors / TorchScript / ONNX), on tiny networks (the NVIDIA pickle:
test_export_nvidia.py)."""

import json

import numpy as np
import pytest
import torch

from engine.__main__ import main
from engine.checkpoint import FORMAT, VERSION, load_network, pack_network, save_snapshot
from engine.errors import UserError
from engine.nets import Generator


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("STUDIO_OPS", "ref")


def tiny_G(c_dim=0, res=16, seed=0, channel_base=128):
    torch.manual_seed(seed)
    G = Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=res, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), channel_base=channel_base, channel_max=16)
    with torch.no_grad():
        # Non-zero w_avg and noise strengths, so that truncation and the constant noise matter in every check.
        for t in list(G.parameters()) + [b for n, b in G.named_buffers() if "resample_filter" not in n]:
            t.copy_(torch.randn_like(t) * 0.3)
    return G.eval().requires_grad_(False)


def save_G(G, path):
    save_snapshot(path, {"format": FORMAT, "version": VERSION, "G_ema": pack_network(G)})
    return path


def inputs(G, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([n, G.z_dim], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(n) % max(G.c_dim, 1), max(G.c_dim, 1)).float()
    return z, (c if G.c_dim else None)


def reference(G, z, c, psi):
    with torch.no_grad():
        return G(z, c, truncation_psi=psi, noise_mode="const").numpy()


# --------------------------------------------------------------------------------------------------------------
# export


def test_safetensors_pair_loads_back_identical(tmp_path, capsys):
    G = tiny_G(c_dim=3)
    net = save_G(G, tmp_path / "net.pt")
    out = tmp_path / "out" / "g.safetensors"
    assert main(["export", "--network", str(net), "--format", "safetensors", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference 0 " in printed
    info = json.loads((tmp_path / "out" / "g.json").read_text())
    assert info["format"] == "stylegan-studio-safetensors" and info["weights"] == "g.safetensors"
    assert info["kwargs"] == G.init_kwargs
    z, c = inputs(G, 4)
    want = reference(G, z, c, 0.6)
    for path in (out, tmp_path / "out" / "g.json"):
        loaded = load_network(path)
        assert loaded["source"] == "safetensors" and loaded["D"] is None
        np.testing.assert_array_equal(reference(loaded["G_ema"], z, c, 0.6), want)
    # An export is a network like any other: it exports again.
    assert main(["export", "--network", str(out), "--format", "torchscript", "--out", str(tmp_path / "g.ts")]) == 0
    assert "max abs difference 0 " in capsys.readouterr().out
    # The weights alone still load: the description is also in the file's header.
    (tmp_path / "out" / "g.json").unlink()
    np.testing.assert_array_equal(reference(load_network(out)["G_ema"], z, c, 0.6), want)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_torchscript_matches_network_at_other_batch_sizes(tmp_path, capsys):
    G = tiny_G(c_dim=2)
    net = save_G(G, tmp_path / "net.pt")
    out = tmp_path / "g.torchscript.pt"
    assert main(["export", "--network", str(net), "--format", "torchscript", "--out", str(out)]) == 0
    assert "checked: max abs difference" in capsys.readouterr().out
    module = torch.jit.load(str(out))
    for n, psi in ((1, 1.0), (5, 0.5)):
        z, c = inputs(G, n, seed=n)
        got = module(z, c, torch.tensor(psi)).numpy()
        assert got.shape == (n, 3, 16, 16)
        assert np.abs(got - reference(G, z, c, psi)).max() < 1e-4


def _onnx_session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_onnx_conditional_runs_in_onnxruntime(tmp_path, capsys):
    pytest.importorskip("onnxscript")
    G = tiny_G(c_dim=3, res=8, channel_base=64)
    net = save_G(G, tmp_path / "net.pt")
    out = tmp_path / "g.onnx"
    assert main(["export", "--network", str(net), "--format", "onnx", "--out", str(out)]) == 0
    assert "checked: max abs difference" in capsys.readouterr().out
    session = _onnx_session(out)
    names = {i.name: i.shape for i in session.get_inputs()}
    assert list(names) == ["z", "c", "psi"]
    assert names["psi"] == [] and names["z"][1] == 8 and names["c"][1] == 3
    assert [o.name for o in session.get_outputs()] == ["img"]
    for n, psi in ((1, 1.0), (4, 0.3)):
        z, c = inputs(G, n, seed=10 + n)
        got = session.run(None, {"z": z.numpy(), "c": c.numpy(), "psi": np.array(psi, dtype=np.float32)})[0]
        assert got.shape == (n, 3, 8, 8)
        assert np.abs(got - reference(G, z, c, psi)).max() < 1e-4


@pytest.mark.slow
def test_onnx_unconditional_has_no_c_input(tmp_path):
    pytest.importorskip("onnxscript")
    G = tiny_G(c_dim=0, res=8, channel_base=64)
    out = tmp_path / "g.onnx"
    from engine.export import export

    result = export(save_G(G, tmp_path / "net.pt"), "onnx", out, log=lambda *_: None)
    assert result["max_abs_diff"] < 1e-4
    session = _onnx_session(out)
    assert [i.name for i in session.get_inputs()] == ["z", "psi"]
    z, _ = inputs(G, 2)
    got = session.run(None, {"z": z.numpy(), "psi": np.array(0.8, dtype=np.float32)})[0]
    assert np.abs(got - reference(G, z, None, 0.8)).max() < 1e-4


def test_command_lists_every_format():
    from engine import export
    from engine.commands import export as command

    assert command.FORMATS == export.FORMATS


def test_export_refuses_to_overwrite_and_bad_names(tmp_path, capsys):
    net = save_G(tiny_G(res=8, channel_base=64), tmp_path / "net.pt")
    out = tmp_path / "g.safetensors"
    (tmp_path / "g.json").write_text("mine")
    assert main(["export", "--network", str(net), "--format", "safetensors", "--out", str(out)]) == 2
    assert "g.json already exists" in capsys.readouterr().err
    assert (tmp_path / "g.json").read_text() == "mine" and not out.exists()
    assert main(["export", "--network", str(net), "--format", "safetensors", "--out", str(tmp_path / "g.bin")]) == 2
    assert "*.safetensors" in capsys.readouterr().err
    assert main(["export", "--network", str(net), "--format", "torchscript", "--out", str(net), "--overwrite"]) == 2
    assert "is the network being exported" in capsys.readouterr().err
    assert main(["export", "--network", str(tmp_path / "none.pt"), "--format", "onnx", "--out",
                 str(tmp_path / "x.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_that_disagrees_is_not_kept(tmp_path, monkeypatch):
    from engine import export as ex

    net = save_G(tiny_G(res=8, channel_base=64), tmp_path / "net.pt")
    out = tmp_path / "g.pt"
    real_run = ex.run_export
    monkeypatch.setattr(ex, "run_export", lambda fmt, path, inputs: real_run(fmt, path, inputs) + 0.01)
    with pytest.raises(UserError, match="differs from the network by 0.01"):
        ex.export(net, "torchscript", out, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pt"]


def test_damaged_safetensors_is_a_user_error(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_network(bad)


# --------------------------------------------------------------------------------------------------------------
# blend and average
