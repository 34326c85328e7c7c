"""`python -m engine project | directions | edit` and `generate --projected-w` end to end, and their one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from test_cli_generate import assert_user_error, run_cli, run_inproc
from test_project import write_networks


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("STUDIO_OPS", "ref")
    monkeypatch.setenv("STUDIO_DETECTOR", "offline")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-project")
    paths = write_networks(d)
    photo = np.random.RandomState(0).randint(0, 255, [24, 30, 3]).astype(np.uint8)
    Image.fromarray(photo).save(d / "photo.png")
    (d / "notes.png").write_text("hello")
    paths.update(photo=d / "photo.png", notes=d / "notes.png")
    return paths


@pytest.mark.slow
def test_project_writes_nvidias_files_and_generate_reads_them(files, tmp_path, capsys):
    out = tmp_path / "out"
    r = run_cli("project", "--network", files["withD"], "--target", files["photo"], "--outdir", out, "--steps", 4)
    assert r.returncode == 0, r.stderr
    assert "loss: the network's discriminator features" in r.stdout
    for name in ("projected_w.npz", "proj.png", "target.png", "proj.mp4"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with np.load(out / "projected_w.npz") as data:
        w = data["w"]
    G = files["G"]
    assert w.shape == (1, G.num_ws, G.w_dim) and w.dtype == np.float32
    assert Image.open(out / "target.png").size == (16, 16)
    # nothing is overwritten without --overwrite
    r = run_inproc(capsys, "project", "--network", files["withD"], "--target", files["photo"], "--outdir", out,
                   "--steps", 2)
    assert_user_error(r, "already exists")
    r = run_inproc(capsys, "generate", "--network", files["rgb"], "--projected-w", out / "projected_w.npz", "--outdir", out)
    assert r.returncode == 0, r.stderr
    assert (out / "proj00.png").is_file()
    from engine.generate import synthesize
    expected = synthesize(G, torch.from_numpy(w))[0]
    assert np.array_equal(np.asarray(Image.open(out / "proj00.png")), expected)


def test_project_without_D_uses_an_offline_loss_and_says_which(files, tmp_path, capsys):
    r = run_inproc(capsys, "project", "--network", files["rgb"], "--target", files["photo"], "--outdir", tmp_path,
                   "--steps", 2, "--no-video", "--loss", "pixel")
    assert r.returncode == 0, r.stderr
    assert "loss: pixels" in r.stdout
    assert not (tmp_path / "proj.mp4").exists()


def test_project_bad_inputs_are_one_line_errors(files, tmp_path, capsys):
    def run(*extra, network="rgb", target="photo"):
        return run_inproc(capsys, "project", "--network", files[network], "--target",
                          files[target] if target in files else target, "--outdir", tmp_path / "o", "--steps", 2,
                          "--no-video", *extra)

    assert_user_error(run(target="notes"), "notes.png", "not a picture")
    from test_project import _png_claiming
    huge = _png_claiming(tmp_path / "huge.png", 40000, 40000)
    assert_user_error(run(target=str(huge)), "huge.png", "too large")
    assert_user_error(run(network="gray"), "photo.png", "grayscale")
    assert_user_error(run("--loss", "d"), "no discriminator")
    assert_user_error(run("--loss", "lpips"), "LPIPS")
    assert not (tmp_path / "o").exists()  # nothing written on a refusal


def test_generate_refuses_a_latent_of_another_network(files, tmp_path, capsys):
    from engine.latents import save_w

    save_w(tmp_path / "w.npz", torch.zeros([1, files["G"].num_ws, files["G"].w_dim]), files["G"])
    r = run_inproc(capsys, "generate", "--network", files["gray"], "--projected-w", tmp_path / "w.npz",
                   "--outdir", tmp_path / "o")
    assert_user_error(r, "w.npz", "another network")
    np.savez(tmp_path / "nv.npz", w=np.zeros([1, 3, 5], np.float32))  # NVIDIA's layout, wrong shape
    r = run_inproc(capsys, "generate", "--network", files["rgb"], "--projected-w", tmp_path / "nv.npz",
                   "--outdir", tmp_path / "o")
    assert_user_error(r, "nv.npz", "another network")
    r = run_inproc(capsys, "generate", "--network", files["rgb"], "--outdir", tmp_path / "o")
    assert_user_error(r, "--seeds", "--projected-w")


def test_directions_and_edit(files, tmp_path, capsys):
    d = tmp_path / "dirs.npz"
    r = run_inproc(capsys, "directions", "--network", files["rgb"], "--method", "sefa", "--num", 3, "--out", d)
    assert r.returncode == 0, r.stderr
    with np.load(d) as data:
        assert data["directions"].shape == (3, 8) and str(data["method"]) == "sefa"
    r = run_inproc(capsys, "edit", "--network", files["rgb"], "--seed", 4, "--directions", d, "--index", 1,
                   "--strength", 2, "--layers", "0-2", "--outdir", tmp_path / "e", "--gif", tmp_path / "e.gif",
                   "--frames", 5)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "e" / "edit.png").is_file()
    assert Image.open(tmp_path / "e.gif").n_frames == 5
    with np.load(tmp_path / "e" / "edit.npz") as data:
        w = data["w"]
        assert json.loads(str(data["network"]))["num_ws"] == files["G"].num_ws
    assert np.array_equal(w[0, 3:], w[0, 3:][:1].repeat(w.shape[1] - 3, 0))  # layers past 2 untouched (one w)
    assert not np.allclose(w[0, 0], w[0, 3])
    r = run_inproc(capsys, "directions", "--network", files["rgb"], "--method", "pca", "--num", 2, "--samples", 500,
                   "--out", tmp_path / "p.npz")
    assert r.returncode == 0, r.stderr
    # bad inputs
    assert_user_error(run_inproc(capsys, "edit", "--network", files["gray"], "--seed", 1, "--directions", d),
                      "dirs.npz", "another network")
    assert_user_error(run_inproc(capsys, "edit", "--network", files["rgb"], "--seed", 1, "--directions", d,
                                 "--index", 7), "--index 7")
    assert_user_error(run_inproc(capsys, "edit", "--network", files["rgb"], "--seed", 1, "--directions", d,
                                 "--layers", "0-40", "--outdir", tmp_path / "e2"), "layers 0-40")
    assert_user_error(run_inproc(capsys, "directions", "--network", files["rgb"], "--num", 99,
                                 "--out", tmp_path / "x.npz"), "--num 99")
    assert_user_error(run_inproc(capsys, "directions", "--network", files["rgb"], "--out", d), "already exists")


def test_latents_command(files, tmp_path, capsys):
    w = tmp_path / "work"
    r = run_inproc(capsys, "latents", "list", "--workdir", w)
    assert r.returncode == 0 and "no saved latents" in r.stdout
    r = run_inproc(capsys, "latents", "save", "--workdir", w, "--network", files["rgb"], "--name", "five",
                   "--seed", 5, "--trunc", 0.5)
    assert r.returncode == 0, r.stderr
    assert (w / "latents" / "five.npz").is_file() and (w / "latents" / "five.png").is_file()
    r = run_inproc(capsys, "latents", "list", "--workdir", w, "--network", files["gray"])
    assert "five\tseed" in r.stdout and "(another network)" in r.stdout
    assert_user_error(run_inproc(capsys, "latents", "save", "--workdir", w, "--network", files["rgb"],
                                 "--name", "five", "--seed", 1), "already exists")
    assert_user_error(run_inproc(capsys, "latents", "save", "--workdir", w, "--network", files["rgb"],
                                 "--name", "x"), "exactly one of")
    run_inproc(capsys, "latents", "save", "--workdir", w, "--network", files["rgb"], "--name", "six", "--seed", 6)
    r = run_inproc(capsys, "latents", "walk", "--workdir", w, "--network", files["rgb"], "--names", "five,six",
                   "--output", tmp_path / "walk.gif", "--frames-per-key", 4, "--loop")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "walk.gif").n_frames == 8
    assert_user_error(run_inproc(capsys, "latents", "walk", "--workdir", w, "--network", files["gray"], "--names",
                                 "five,six", "--output", tmp_path / "w2.gif"), "another network")
    r = run_inproc(capsys, "latents", "delete", "--workdir", w, "--name", "five")
    assert r.returncode == 0 and not (w / "latents" / "five.npz").exists()
    assert_user_error(run_inproc(capsys, "latents", "delete", "--workdir", w, "--name", "five"), "no latent")
