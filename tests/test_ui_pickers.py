"""The Generate tab's network picker and the first-run guide, without a server: which network is offered first,
how snapshots are named for people, and when the guide folds itself."""

import json
import os

import pytest
import torch

from engine.errors import UserError
from engine.runs import snapshots_newest_first
from ui import networks as gt
from ui import guide
from ui.common import Studio


def default_network(studio):
    """What the pickers show first: the first of the choices."""
    return next(iter(gt.network_choices(studio)), None)


def save_tiny(path):
    from engine.checkpoint import pack_network, save_snapshot
    from engine.nets import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 1},
                  channel_base=64, channel_max=8).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_snapshot(path, {"format": "stylegan-studio", "version": 1, "G_ema": pack_network(G)})


def make_run(studio, name, dataset, snaps, when):
    """A run folder trained on datasets/<dataset> with snapshots at the given kimg, written at times when + i."""
    d = studio.runs_dir / name
    d.mkdir(parents=True)
    (d / "training_options.json").write_text(json.dumps({"data": str(studio.datasets_dir / dataset)}))
    for i, k in enumerate(snaps):
        p = d / f"network-snapshot-{k:06d}.pt"
        save_tiny(p) if i == 0 else p.write_bytes((d / f"network-snapshot-{snaps[0]:06d}.pt").read_bytes())
        os.utime(p, (when + i, when + i))
    return d


@pytest.fixture()
def studio(tmp_path):
    demo = tmp_path / "demo.pt"
    save_tiny(demo)
    return Studio(tmp_path / "studio", demo_network=demo)


def test_newest_snapshot_of_newest_run_is_offered_first(studio):
    assert default_network(studio) == gt.DEMO_LABEL  # nothing trained yet: the demo
    make_run(studio, "00000-emoji16-tiny", "emoji16.zip", [0, 1, 12], when=1000)
    make_run(studio, "00001-faces32-tiny", "faces32", [0, 2], when=2000)
    labels = list(gt.network_choices(studio))
    assert labels == ["run 00001 · faces32 · 2 kimg", "run 00001 · faces32 · 0 kimg",
                      "run 00000 · emoji16 · 12 kimg", "run 00000 · emoji16 · 1 kimg", "run 00000 · emoji16 · 0 kimg",
                      gt.DEMO_LABEL]
    # Resuming the older run makes its new snapshot the newest of all.
    os.utime(studio.runs_dir / "00000-emoji16-tiny" / "network-snapshot-000012.pt", (3000, 3000))
    assert default_network(studio) == "run 00000 · emoji16 · 12 kimg"
    assert [(r["id"], k) for r, k, _ in snapshots_newest_first(studio.runs_dir)][:2] == [(0, 12), (0, 1)]


def write_metric(run_dir, name, values):
    """metric-<name>.jsonl with {snapshot kimg: value}, as the trainer writes it."""
    with open(run_dir / f"metric-{name}.jsonl", "w") as f:
        for kimg, v in values.items():
            f.write(json.dumps({"results": {name: v}, "metric": name,
                                "snapshot_pkl": f"network-snapshot-{kimg:06d}.pt"}) + "\n")


def test_best_snapshot_is_offered_first_within_its_run(studio):
    old = make_run(studio, "00000-emoji16-tiny", "emoji16.zip", [0, 4, 8], when=1000)
    new = make_run(studio, "00001-faces32-tiny", "faces32", [0, 2, 4], when=2000)
    write_metric(old, "kid1k", {0: 0.3, 4: 0.021, 8: 0.05})
    labels = list(gt.network_choices(studio))
    # The newest run has no measurement: its newest snapshot stays first; the older run's best leads that run.
    assert labels[:4] == ["run 00001 · faces32 · 4 kimg", "run 00001 · faces32 · 2 kimg",
                          "run 00001 · faces32 · 0 kimg", "best: run 00000 · kimg 4 · KID 0.0210"]
    assert gt.network_choices(studio)[labels[3]] == old / "network-snapshot-000004.pt"
    write_metric(new, "fid1k", {0: 250.0, 2: 180.5, 4: 190.25})
    assert default_network(studio) == "best: run 00001 · kimg 2 · FID 180.50"
    assert gt.load(studio, default_network(studio))["G_ema"].img_resolution == 8
    (new / "network-snapshot-000002.pt").unlink()  # the best file is gone: no best entry, nothing broken
    assert default_network(studio) == "run 00001 · faces32 · 4 kimg"


def test_folder_and_file_names_still_load_but_are_not_listed(studio):
    make_run(studio, "00000-emoji16-tiny", "emoji16.zip", [0], when=1000)
    alias = "00000-emoji16-tiny / network-snapshot-000000.pt"
    assert alias not in gt.network_choices(studio)
    assert gt.network_choices(studio, aliases=True)[alias] == gt.network_choices(studio)["run 00000 · emoji16 · 0 kimg"]
    assert gt.load(studio, alias)["G_ema"].img_resolution == 8
    with pytest.raises(UserError, match="not found"):
        gt.load(studio, str(studio.runs_dir / "00000-emoji16-tiny" / "network-snapshot-000000.pt"))


def test_snapshot_label_kimg_forms():
    run = {"id": 7, "dataset": "/x/datasets/cats.zip", "desc": "cats-tiny"}
    assert gt.snapshot_label(run, 1200) == "run 00007 · cats · 1,200 kimg"
    assert gt.snapshot_label(run, 0.872) == "run 00007 · cats · 0.872 kimg"
    assert gt.snapshot_label(run, 2.0) == "run 00007 · cats · 2 kimg"
    assert gt.snapshot_label({"id": 1, "dataset": None, "desc": "dogs-tiny"}, 3) == "run 00001 · dogs-tiny · 3 kimg"


def test_refresh_moves_to_a_new_snapshot_unless_the_visitor_chose_another():
    old = {"run 00000 · a · 1 kimg": 0, gt.DEMO_LABEL: 0}
    new = {"run 00000 · a · 2 kimg": 0, "run 00000 · a · 1 kimg": 0, gt.DEMO_LABEL: 0}
    offered = next(iter(old))
    assert gt.pick_network(new, offered, offered) == "run 00000 · a · 2 kimg"  # kept the default: follow the run
    assert gt.pick_network(new, gt.DEMO_LABEL, offered) == gt.DEMO_LABEL  # their own pick stays
    assert gt.pick_network(new, "gone", offered) == "run 00000 · a · 2 kimg"
    assert gt.pick_network(new, None, None) == "run 00000 · a · 2 kimg"
    assert gt.pick_network({}, None, None) is None


def test_guide_folds_once_a_dataset_and_a_run_exist(studio):
    assert not guide.has_history(studio)
    (studio.datasets_dir / "emoji16.zip").write_bytes(b"")
    assert not guide.has_history(studio)  # a dataset alone: the guide still shows the next step
    update, folded = guide.fold_once(studio, False)
    assert not folded
    (studio.runs_dir / "00000-emoji16-tiny").mkdir()
    assert guide.has_history(studio)
    update, folded = guide.fold_once(studio, False)
    assert folded and update.get("open") is False
    update, folded = guide.fold_once(studio, True)  # once only: a visitor who opens it again keeps it open
    assert folded and "open" not in update


def test_grid_slider_follows_the_newest_unless_pinned():
    from ui.train_tab import grid_index

    assert grid_index(12, {}, "00000-a") == 11
    assert grid_index(12, {"run": "00000-a", "grids": 10, "shown": "x"}, "00000-a") == 11  # new grids: follow
    assert grid_index(12, {"run": "00000-a", "pinned": 3}, "00000-a") == 3  # dragged back: stays there
    assert grid_index(2, {"run": "00000-a", "pinned": 3}, "00000-a") == 1
    assert grid_index(12, {"run": "00000-b", "pinned": 3}, "00000-a") == 11  # another run: its newest
