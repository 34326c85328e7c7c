"""Our snapshot format: atomic writes, weights-only loading, bit-exact round trips, exports, bad files."""

import os
import pickle
import zipfile

import pytest
import torch

from engine.checkpoint import FORMAT, load_network, load_snapshot, pack_network, save_snapshot
from engine.export import export_network
from engine.errors import UserError
from engine.nets import Discriminator, Generator


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    # These tests are about files and generation; the compiled kernels have their own tests, and a first-use
    # kernel build would only add minutes here.
    monkeypatch.setenv("STUDIO_OPS", "ref")


def tiny_nets(c_dim=0, channels=3, res=16, seed=0):
    torch.manual_seed(seed)
    G = Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=res, img_channels=channels,
                  mapping_kwargs=dict(num_layers=2), channel_base=128, channel_max=16)
    D = Discriminator(c_dim=c_dim, img_resolution=res, img_channels=channels, channel_base=128, channel_max=16)
    with torch.no_grad():
        # Non-default values everywhere, so that a tensor lost on the way shows up.
        for net in (G, D):
            for t in list(net.parameters()) + [b for n, b in net.named_buffers() if "resample_filter" not in n]:
                t.copy_(torch.randn_like(t) * 0.2)
    G_ema = Generator(**G.init_kwargs)
    G_ema.load_state_dict(G.state_dict())
    with torch.no_grad():
        for p in G_ema.parameters():
            p.add_(0.01)
    return G, D, G_ema


def full_snapshot(G, D, G_ema):
    opt = torch.optim.Adam(G.parameters(), lr=0.002, betas=(0.0, 0.99))
    G(torch.randn(2, G.z_dim), torch.zeros(2, G.c_dim)).square().mean().backward()
    opt.step()
    return {
        "format": FORMAT, "version": 1,
        "G": pack_network(G), "D": pack_network(D), "G_ema": pack_network(G_ema),
        "augment": {"p": 0.125, "pipe": "bgc", "kwargs": {"xflip": 1, "rotate90": 1}},
        "progress": {"cur_nimg": 12345, "tick": 7, "batch_idx": 99, "pl_mean": 0.5},
        "optimizers": {"G": opt.state_dict()},
        "options": {"cfg": "tiny", "gamma": 1.0},
        "dataset": {"resolution": G.img_resolution, "channels": G.img_channels, "label_dim": G.c_dim,
                    "name": "toy", "path": "/data/toy.zip"},
        "rng": {"torch": torch.get_rng_state()},
    }


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_is_bit_exact(tmp_path):
    G, D, G_ema = tiny_nets(c_dim=3, channels=1)
    data = full_snapshot(G, D, G_ema)
    path = tmp_path / "network-snapshot-000012.pt"
    save_snapshot(path, data)
    # Plain data only: torch's own weights-only loader opens it.
    raw = torch.load(path, weights_only=True)
    assert raw["progress"] == data["progress"]
    assert raw["options"] == data["options"]
    assert torch.equal(raw["rng"]["torch"], data["rng"]["torch"])
    st_a = raw["optimizers"]["G"]["state"]
    st_b = data["optimizers"]["G"]["state"]
    assert all(torch.equal(st_a[k]["exp_avg"], st_b[k]["exp_avg"]) for k in st_b)

    loaded = load_network(path)
    assert loaded["source"] == "studio"
    for key, ref in (("G", G), ("D", D), ("G_ema", G_ema)):
        assert_same_state(loaded[key], ref)
        assert loaded[key].init_kwargs == ref.init_kwargs
        assert not loaded[key].training
    assert not any(p.requires_grad for p in loaded["G_ema"].parameters())
    assert loaded["augment_p"] == 0.125
    assert loaded["augment_kwargs"] == {"xflip": 1, "rotate90": 1}
    assert loaded["progress"]["cur_nimg"] == 12345
    assert loaded["dataset"]["name"] == "toy"
    assert loaded["snapshot"]["options"] == {"cfg": "tiny", "gamma": 1.0}

    z = torch.randn(3, 8)
    c = torch.eye(3)
    with torch.no_grad():
        assert torch.equal(loaded["G_ema"](z, c), G_ema.eval()(z, c))
        img = torch.randn(3, 1, 16, 16)
        assert torch.equal(loaded["D"](img, c), D.eval()(img, c))
    assert load_snapshot(path)["version"] == 1


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    G, D, G_ema = tiny_nets()
    path = tmp_path / "snap.pt"
    save_snapshot(path, {"format": FORMAT, "version": 1, "G_ema": pack_network(G_ema)})
    before = path.read_bytes()
    # A failure half-way (an object torch.save cannot store) must leave the old snapshot untouched.
    with pytest.raises(Exception):
        save_snapshot(path, {"format": FORMAT, "version": 1, "G_ema": pack_network(G), "bad": lambda: 0})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["snap.pt"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_save_into_unwritable_place_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        save_snapshot(blocker / "snap.pt", {"format": FORMAT})


def test_g_ema_only_export_loads_and_fp16_is_converted_back(tmp_path):
    G, D, G_ema = tiny_nets(channels=4)
    src = tmp_path / "full.pt"
    save_snapshot(src, full_snapshot(G, D, G_ema))
    exp32 = export_network(src, tmp_path / "demo32.pt")
    exp16 = export_network(src, tmp_path / "demo16.pt", fp16=True)
    raw16 = torch.load(exp16, weights_only=True)
    assert set(raw16) >= {"format", "version", "G_ema"} and "G" not in raw16 and "D" not in raw16
    assert raw16["G_ema"]["state"]["mapping.fc0.weight"].dtype == torch.float16
    assert os.path.getsize(exp16) < os.path.getsize(exp32)

    a = load_network(exp32)
    assert a["G"] is None and a["D"] is None
    assert_same_state(a["G_ema"], G_ema)
    b = load_network(exp16)
    assert all(t.dtype == torch.float32 for t in b["G_ema"].state_dict().values())
    z = torch.randn(2, 8)
    with torch.no_grad():
        ref = G_ema.eval()(z, None)
        out = b["G_ema"](z, None)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() < 0.05  # fp16 storage: close, not exact


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"this is not a network at all", "not a network file"),
    (pickle.dumps({"weights": [1, 2, 3]}), "not a network file"),
    (pickle.dumps([1, 2, 3]), "not a network file"),
])
def test_bad_network_files_are_user_errors(tmp_path, content, match):
    path = tmp_path / "net.pkl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=match) as e:
        load_network(path)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_folder_and_foreign_zip_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="folder"):
        load_network(tmp_path)
    sd = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, sd)
    with pytest.raises(UserError, match="not a network file"):
        load_network(sd)
    with pytest.raises(UserError, match="not a network snapshot"):
        load_snapshot(sd)
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
    with pytest.raises(UserError, match="broken.pt"):
        load_network(broken)


def test_damaged_snapshot_entry_is_a_user_error(tmp_path):
    G, D, G_ema = tiny_nets()
    entry = pack_network(G_ema)
    del entry["state"]["mapping.fc0.weight"]
    path = tmp_path / "damaged.pt"
    save_snapshot(path, {"format": FORMAT, "version": 1, "G_ema": entry})
    with pytest.raises(UserError, match="missing mapping.fc0.weight"):
        load_network(path)
    entry = pack_network(G_ema)
    entry["state"]["mapping.fc0.weight"] = torch.zeros(3, 3)
    save_snapshot(path, {"format": FORMAT, "version": 1, "G_ema": entry})
    with pytest.raises(UserError, match="shape"):
        load_network(path)
