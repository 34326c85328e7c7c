"""`python -m engine generate | video | mix | info` end to end on tiny networks, and their bad-input errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.checkpoint import FORMAT, pack_network, save_snapshot
from engine.generate import generate_images
from engine.nets import Generator


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    # These tests are about files and generation; the compiled kernels have their own tests, and a first-use
    # kernel build would only add minutes here.
    monkeypatch.setenv("STUDIO_OPS", "ref")

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = dict(os.environ)
    # The compiled kernels have their own tests; here the reference ops keep each run quick and independent
    # of a first-use build.
    env["STUDIO_OPS"] = "ref"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("STUDIO_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_inproc(capsys, *args):
    """The same entry point as `python -m engine`, in this process (no interpreter start-up per case)."""
    from engine.__main__ import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return _Result(code, out.out, out.err)


def assert_user_error(result, *words):
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for w in words:
        assert str(w) in err, err


def make_G(c_dim, channels, seed):
    torch.manual_seed(seed)
    G = Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=16, img_channels=channels,
                  mapping_kwargs=dict(num_layers=2, lr_multiplier=1.0), channel_base=128, channel_max=16)
    with torch.no_grad():
        for t in list(G.parameters()) + [b for n, b in G.named_buffers() if "resample_filter" not in n]:
            t.copy_(torch.randn_like(t) * 0.3)
    return G.eval()


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("nets")
    G = make_G(0, 3, 1)
    Gc = make_G(3, 1, 2)
    rgb, gray = d / "rgb.pt", d / "gray-cond.pt"
    save_snapshot(rgb, {"format": FORMAT, "version": 1, "G_ema": pack_network(G)})
    save_snapshot(gray, {"format": FORMAT, "version": 1, "G_ema": pack_network(Gc)})
    return {"rgb": rgb, "gray": gray, "G": G, "Gc": Gc}


@pytest.mark.slow
def test_generate_writes_seed_pngs_and_grid(nets, tmp_path):
    out = tmp_path / "out"
    r = run_cli("generate", "--network", nets["rgb"], "--seeds", "0,3,5-7", "--trunc", "0.7", "--outdir", out,
                "--grid", "3x2", "--batch", "2")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "seed0000.png", "seed0003.png", "seed0005.png", "seed0006.png", "seed0007.png"]
    expected = generate_images(nets["G"], [0, 3, 5, 6, 7], psi=0.7)
    for seed, ref in zip([0, 3, 5, 6, 7], expected):
        with Image.open(out / f"seed{seed:04d}.png") as im:
            assert im.mode == "RGB" and im.size == (16, 16)
            assert np.abs(np.asarray(im).astype(int) - ref.astype(int)).max() <= 1
    with Image.open(out / "grid.png") as im:
        assert im.size == (48, 32)
        grid = np.asarray(im)
    assert np.array_equal(grid[16:32, 0:16], np.asarray(Image.open(out / "seed0006.png")))
    assert (grid[16:32, 32:48] == 0).all()

    # Running again does not overwrite the pictures silently.
    before = (out / "seed0000.png").read_bytes()
    r = run_cli("generate", "--network", nets["rgb"], "--seeds", "0", "--trunc", "1", "--outdir", out)
    assert_user_error(r, "seed0000.png", "already exists", "--overwrite")
    assert (out / "seed0000.png").read_bytes() == before
    r = run_cli("generate", "--network", nets["rgb"], "--seeds", "0", "--trunc", "1", "--outdir", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "seed0000.png").read_bytes() != before


@pytest.mark.slow
def test_generate_grayscale_conditional(nets, tmp_path, capsys):
    r = run_cli("generate", "--network", nets["gray"], "--seeds", "1-2", "--class", "2", "--outdir", tmp_path,
                "--noise-mode", "none")
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "seed0001.png") as im:
        assert im.mode == "L" and im.size == (16, 16)
        ref = generate_images(nets["Gc"], [1], class_idx=2, noise_mode="none")[0]
        assert np.abs(np.asarray(im).astype(int) - ref[:, :, 0].astype(int)).max() <= 1
    assert_user_error(run_inproc(capsys, "generate", "--network", nets["gray"], "--seeds", "1",
                                 "--outdir", tmp_path / "b"), "conditional", "--class")
    assert_user_error(run_inproc(capsys, "generate", "--network", nets["gray"], "--seeds", "1", "--class", "3",
                                 "--outdir", tmp_path / "c"), "class 3", "0..2")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


@pytest.mark.slow
def test_video_gif_and_mp4(nets, tmp_path):
    gif = tmp_path / "walk.gif"
    r = run_cli("video", "--network", nets["rgb"], "--seeds", "1,2,3", "--output", gif, "--frames-per-seed", "4",
                "--fps", "25", "--loop")
    assert r.returncode == 0, r.stderr
    with Image.open(gif) as im:
        assert im.n_frames == 12 and im.info.get("loop") == 0 and im.size == (16, 16)
    mp4 = tmp_path / "walk.mp4"
    r = run_cli("video", "--network", nets["rgb"], "--seeds", "1-4", "--output", mp4, "--frames-per-seed", "3",
                "--space", "z", "--kind", "slerp", "--grid", "2x1")
    assert r.returncode == 0, r.stderr
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    assert meta["size"] == (32, 16)
    assert sum(1 for _ in reader) == 4

    before = gif.read_bytes()
    r = run_cli("video", "--network", nets["rgb"], "--seeds", "5,6", "--output", gif)
    assert_user_error(r, str(gif), "already exists", "--overwrite")
    assert gif.read_bytes() == before
    r = run_cli("video", "--network", nets["rgb"], "--seeds", "5,6", "--output", gif, "--overwrite",
                "--frames-per-seed", "2")
    assert r.returncode == 0, r.stderr
    with Image.open(gif) as im:
        assert im.n_frames == 3


@pytest.mark.slow
def test_mix_grid(nets, tmp_path, capsys):
    r = run_cli("mix", "--network", nets["rgb"], "--rows", "85,100", "--cols", "55,821,7", "--styles", "0-2",
                "--outdir", tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "grid.png" in names and "100-821.png" in names and len(names) == 7
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == (64, 48)
    assert_user_error(run_inproc(capsys, "mix", "--network", nets["rgb"], "--rows", "1", "--cols", "2", "--styles", "0-99",
                              "--outdir", tmp_path / "m2"), "--styles", "out of range")


@pytest.mark.slow
def test_info():
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    assert torch.__version__ in r.stdout
    for op in ("bias_act", "upfirdn2d", "conv2d_resample"):
        assert op in r.stdout
    assert "bias_act   cpu   float32   reference (STUDIO_OPS=ref)" in r.stdout
    r = run_cli("info", "--json")
    info = json.loads(r.stdout)
    assert info["torch"] == torch.__version__
    assert info["devices"][0]["name"] == "cpu"
    assert set(info["ops"]) >= {"bias_act", "upfirdn2d", "conv2d_resample"}
    # Per op, device and dtype: here every one is on the reference (STUDIO_OPS=ref), and says so.
    checks = {(r["op"], r["device"], r["dtype"]): r for r in info["op_checks"]}
    assert set(checks) == {(op, "cpu", dt) for op in ("bias_act", "upfirdn2d") for dt in ("float32", "float64")}
    assert all(r["state"] == "reference" and "STUDIO_OPS=ref" in r["detail"] for r in checks.values())


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(nets, tmp_path, capsys):
    """Two cases through a real process (exit status, stderr); the rest through the same entry point in-process."""
    missing = tmp_path / "nope.pkl"
    assert_user_error(run_cli("generate", "--network", missing, "--seeds", "1", "--outdir", tmp_path / "o"),
                      str(missing), "does not exist")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x00\x01 definitely not a pickle")
    assert_user_error(run_inproc(capsys, "generate", "--network", junk, "--seeds", "1", "--outdir", tmp_path / "o"),
                      str(junk), "not a network file")
    evil = tmp_path / "evil.pkl"
    marker = tmp_path / "pwned"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    assert_user_error(run_cli("video", "--network", evil, "--seeds", "1,2", "--output", tmp_path / "v.gif"),
                      "refusing", "os.system")
    assert not marker.exists()
    assert_user_error(run_inproc(capsys, "generate", "--network", nets["rgb"], "--seeds", "1,x", "--outdir", tmp_path / "o"),
                      "'x'")
    assert_user_error(run_inproc(capsys, "generate", "--network", nets["rgb"], "--seeds", "9-3", "--outdir", tmp_path / "o"),
                      "9-3")
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    assert_user_error(run_inproc(capsys, "generate", "--network", nets["rgb"], "--seeds", "1", "--outdir", blocker),
                      str(blocker))
    assert blocker.read_text() == "keep me"
    assert_user_error(run_inproc(capsys, "generate", "--network", nets["rgb"], "--seeds", "1", "--outdir", blocker / "sub"),
                      "cannot write")
    assert_user_error(run_inproc(capsys, "video", "--network", nets["rgb"], "--seeds", "1,2", "--output", tmp_path / "v.avi"),
                      "v.avi", ".gif or .mp4")
    assert_user_error(run_inproc(capsys, "generate", "--network", nets["rgb"], "--seeds", "1-9", "--grid", "2x2",
                              "--outdir", tmp_path / "o"), "2x2")
    assert not (tmp_path / "o").exists()


def test_class_on_an_unconditional_network_is_a_warning(nets, tmp_path, capsys):
    r = run_inproc(capsys, "generate", "--network", nets["rgb"], "--seeds", "1", "--class", "2",
                   "--outdir", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "warning: --class 2 ignored: this network is unconditional" in r.stderr
    assert (tmp_path / "out" / "seed0001.png").exists()
    r = run_inproc(capsys, "mix", "--network", nets["rgb"], "--rows", "1", "--cols", "2", "--styles", "0-1",
                   "--class", "0", "--outdir", tmp_path / "mix")
    assert r.returncode == 0, r.stderr
    assert "--class 0 ignored" in r.stderr
