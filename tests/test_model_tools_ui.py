"""The Generate tab's export / blend panel (ui/model_tools.py): handlers on a studio folder, and the panel's build."""

import gradio as gr
import pytest
import torch

from engine.checkpoint import FORMAT, VERSION, load_network, pack_network, save_snapshot
from engine.errors import UserError
from engine.nets import Generator
from ui import model_tools
from ui.common import Studio
from ui.networks import network_choices


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("STUDIO_OPS", "ref")


@pytest.fixture
def studio(tmp_path):
    s = Studio(tmp_path / "studio", demo_network=tmp_path / "no-demo.pt")
    run = s.runs_dir / "00000-blobs-tiny"
    run.mkdir(parents=True)
    for i, kimg in enumerate((0, 4)):
        torch.manual_seed(i)
        G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                      mapping_kwargs=dict(num_layers=2), channel_base=64, channel_max=16)
        save_snapshot(run / f"network-snapshot-{kimg:06d}.pt",
                      {"format": FORMAT, "version": VERSION, "G_ema": pack_network(G)})
    return s


def labels(studio):
    return list(network_choices(studio))


def test_export_writes_inside_outputs_and_reports_the_check(studio):
    files, report = model_tools.export_network(studio, labels(studio)[0], "safetensors")
    assert [f.rsplit(".", 1)[-1] for f in files] == ["safetensors", "json"]
    assert all(str(studio.outputs_dir) in f for f in files)
    assert "max abs difference 0" in report
    assert load_network(files[0])["source"] == "safetensors"
    with pytest.raises(UserError, match="not found"):
        model_tools.export_network(studio, "elsewhere / x.pt", "onnx")
    with pytest.raises(UserError, match="export format"):
        model_tools.export_network(studio, labels(studio)[0], "pickle")


def test_blend_and_average_land_in_the_picker(studio):
    newer, older = labels(studio)
    label, path, report = model_tools.blend_networks(studio, older, newer, 4, "a")
    assert label == f"uploaded / {path.rsplit('/', 1)[-1]}" and label in labels(studio)
    assert report == (f"Blended: block 4 from {older}, block 8 from {newer}, the mapping network from {older}. "
                      f"The result is in the network list as {label}.")
    assert label == "uploaded / blend-00000-kimg000000-00000-kimg000004-split4.pt"
    G = load_network(path)["G_ema"].state_dict()
    src_b = load_network(network_choices(studio)[newer])["G_ema"].state_dict()
    assert torch.equal(G["synthesis.b8.conv1.weight"], src_b["synthesis.b8.conv1.weight"])
    label2, path2, _ = model_tools.average_networks(studio, [newer, older])
    assert label2 in labels(studio) and path2 != path
    with pytest.raises(UserError, match="at least two"):
        model_tools.average_networks(studio, [newer])
    with pytest.raises(UserError, match="split"):
        model_tools.blend_networks(studio, older, newer, None)
    with pytest.raises(UserError, match=r"^a split of 8 px does not fit 8 px networks: choose one of 4 px$"):
        model_tools.blend_networks(studio, older, newer, 8)


def test_blend_offers_only_the_network_s_blend_points():
    assert model_tools.blend_points(8) == [4] and model_tools.blend_points(16) == [4, 8]
    points = model_tools.blend_points(256)
    assert points == [4, 8, 16, 32, 64, 128] and model_tools.default_split(points) == 16
    assert model_tools.default_split([]) is None


def test_panel_builds_beside_a_picker(studio):
    with gr.Blocks():
        picker = gr.Dropdown(labels(studio), value=labels(studio)[0], label="Network")
        parts = model_tools.build(studio, picker)
    # 8 px networks: the only blend point is 4 px, and it is the one offered.
    assert parts["other"].choices and parts["split"].value == 4 and [c[1] for c in parts["split"].choices] == [4]


def test_file_names_come_from_the_picked_file_not_the_label(studio):
    run = studio.runs_dir / "00000-blobs-tiny"
    assert model_tools._stem("best: run 00000 · kimg 4 · KID 0.0210", run / "network-snapshot-000004.pt") == \
        "00000-kimg000004"
    assert model_tools._stem("uploaded / my net.pt", studio.uploads_dir / "networks" / "my net.pt") == "my-net"
