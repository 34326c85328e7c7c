"""engine.generate: seeds, images, grids, style mixing, interpolation, and the GIF/MP4 writers."""

import numpy as np
import pytest
import torch

from engine import generate as gen, media
from engine.errors import UserError
from engine.nets import Generator


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    # These tests are about files and generation; the compiled kernels have their own tests, and a first-use
    # kernel build would only add minutes here.
    monkeypatch.setenv("STUDIO_OPS", "ref")


def tiny_G(c_dim=0, channels=3, res=16, seed=0):
    torch.manual_seed(seed)
    G = Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=res, img_channels=channels,
                  mapping_kwargs=dict(num_layers=2, lr_multiplier=1.0), channel_base=128, channel_max=16)
    with torch.no_grad():
        for t in list(G.parameters()) + [b for n, b in G.named_buffers() if "resample_filter" not in n]:
            t.copy_(torch.randn_like(t) * 0.3)
    return G.eval().requires_grad_(False)


def nvidia_image(G, seed, psi=1.0, c=None, noise_mode="const"):
    """What NVIDIA's generate.py computes for one seed."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float()
    c = torch.zeros(1, G.c_dim) if c is None else c
    with torch.no_grad():
        img = G(z, c, truncation_psi=psi, noise_mode=noise_mode)
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def test_seed_to_z_is_nvidias_rule():
    z = gen.seed_to_z(85, 512)
    assert z.shape == (1, 512)
    assert np.array_equal(z, np.random.RandomState(85).randn(1, 512))


# ---------------------------------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_generate_images_matches_nvidia_rule_in_any_batch_size(channels):
    G = tiny_G(channels=channels)
    seeds = [0, 5, 85, 7, 3]
    ref = [nvidia_image(G, s, psi=0.7) for s in seeds]
    for batch in (1, 2, 8):
        images = gen.generate_images(G, seeds, psi=0.7, batch=batch)
        assert len(images) == len(seeds)
        for a, b in zip(images, ref):
            assert a.shape == (16, 16, channels) and a.dtype == np.uint8
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_noise_modes_and_truncation_change_the_images():
    G = tiny_G()
    const = gen.generate_images(G, [1])[0]
    none = gen.generate_images(G, [1], noise_mode="none")[0]
    rand_a = gen.generate_images(G, [1], noise_mode="random")[0]
    rand_b = gen.generate_images(G, [1], noise_mode="random")[0]
    assert not np.array_equal(const, none)
    assert np.array_equal(rand_a, rand_b)  # reproducible
    assert not np.array_equal(rand_a, const)
    # psi 0 puts every seed at w_avg: all images equal.
    a, b = gen.generate_images(G, [1, 2], psi=0)
    assert np.array_equal(a, b)
    c, d = gen.generate_images(G, [1, 2], psi=0, cutoff=1)
    assert not np.array_equal(c, d)
    with pytest.raises(UserError):
        gen.generate_images(G, [1], noise_mode="loud")


def test_conditional_classes():
    G = tiny_G(c_dim=3)
    for k in range(3):
        c = torch.zeros(1, 3)
        c[0, k] = 1
        assert np.abs(gen.generate_images(G, [4], class_idx=k)[0].astype(int)
                      - nvidia_image(G, 4, c=c).astype(int)).max() <= 1
    assert not np.array_equal(gen.generate_images(G, [4], class_idx=0)[0], gen.generate_images(G, [4], class_idx=2)[0])
    with pytest.raises(UserError, match="conditional"):
        gen.generate_images(G, [4])
    with pytest.raises(UserError, match="class 3 is out of range"):
        gen.generate_images(G, [4], class_idx=3)
    with pytest.raises(UserError, match="out of range"):
        gen.generate_images(G, [4], class_idx=-1)


# ---------------------------------------------------------------------------------------------------------------
# Style mixing


def test_style_mix_grid_layout_and_cells():
    G = tiny_G()
    rows, cols, styles = [85, 100], [55, 821, 3], [0, 1, 2]
    grid, cells = gen.style_mix_grid(G, rows, cols, styles)
    h = w = 16
    assert grid.shape == (3 * h, 4 * w, 3)
    assert (grid[:h, :w] == 255).all()  # a white corner, not a black square
    seed_img = dict(zip(rows + cols, gen.generate_images(G, rows + cols)))
    for j, c in enumerate(cols):
        assert np.array_equal(grid[:h, (j + 1) * w:(j + 2) * w], seed_img[c])
    for i, r in enumerate(rows):
        assert np.array_equal(grid[(i + 1) * h:(i + 2) * h, :w], seed_img[r])
    # A cell is the row seed's ws with the chosen layers taken from the column seed.
    ws = gen.seeds_to_ws(G, [100, 821])
    mixed = ws[0].clone()
    mixed[styles] = ws[1][styles]
    expect = gen.synthesize(G, mixed[None])[0]
    assert np.array_equal(cells[(100, 821)], expect)
    assert np.array_equal(grid[2 * h:3 * h, 2 * w:3 * w], expect)
    # All layers from the column seed gives the column seed's own image.
    _, all_cells = gen.style_mix_grid(G, [85], [55], list(range(G.num_ws)))
    assert np.array_equal(all_cells[(85, 55)], seed_img[55])
    with pytest.raises(UserError, match="out of range"):
        gen.style_mix_grid(G, rows, cols, [G.num_ws])


def test_style_mix_ws_grid_mixes_any_latents():
    G = tiny_G()
    ws = gen.seeds_to_ws(G, [7, 8, 9], psi=0.5)
    edited = ws[2:3] + 0.5  # a latent no seed makes, as a projection or an edit is
    grid, cells = gen.style_mix_ws_grid(G, ws[:2], edited, [0, 1])
    h = w = 16
    assert grid.shape == (3 * h, 2 * w, 3) and set(cells) == {(0, 0), (1, 0)}
    assert np.array_equal(grid[:h, w:], gen.synthesize(G, edited)[0])
    mixed = ws[1].clone()
    mixed[[0, 1]] = edited[0][[0, 1]]
    assert np.array_equal(cells[(1, 0)], gen.synthesize(G, mixed[None])[0])
    assert np.array_equal(grid[2 * h:, w:], cells[(1, 0)])
    # A name is written as it is (no "seed" before it): short names leave a narrower band than "seed 7".
    seeds = media.label_mix_grid(grid, [7, 8], [9])
    named = media.label_mix_grid(grid, ["x", "y"], [9])
    assert named.shape[1] < seeds.shape[1] and named.shape[0] == seeds.shape[0]


# ---------------------------------------------------------------------------------------------------------------
# Interpolation


def test_interpolate_keyframes_counts_and_passes_through_keys():
    keys = torch.randn(3, 4, 5)
    for kind in ("linear", "cubic"):
        f = gen.interpolate_keyframes(keys, 4, kind)
        assert f.shape == (9, 4, 5)
        for k in range(3):
            assert torch.allclose(f[4 * k], keys[k], atol=1e-6)
        looped = gen.interpolate_keyframes(keys, 4, kind, loop=True)
        assert looped.shape == (12, 4, 5)
        assert torch.allclose(looped[8], keys[2], atol=1e-6)
    # Linear midpoint is the average; the spline is smooth, not equal to it in general.
    f = gen.interpolate_keyframes(keys, 2, "linear")
    assert torch.allclose(f[1], (keys[0] + keys[1]) / 2, atol=1e-6)


def test_slerp_keeps_norm_between_keys():
    a, b = torch.randn(1, 64), torch.randn(1, 64)
    b = b / b.norm() * a.norm()
    frames = gen.interpolate_keyframes(torch.cat([a, b]), 8, "slerp")
    norms = frames.norm(dim=-1)
    assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-4)
    assert torch.allclose(frames[-1], b[0], atol=1e-5)
    # Linear interpolation of the same keys dips in norm in the middle.
    lin = gen.interpolate_keyframes(torch.cat([a, b]), 8, "linear")
    assert lin[4].norm() < norms[4] * 0.99


def test_interpolation_frames_start_and_end_on_the_seeds():
    G = tiny_G()
    seeds = [1, 2, 3, 4]
    refs = gen.generate_images(G, seeds)
    for space, kind in (("w", "linear"), ("w", "cubic"), ("z", "slerp"), ("z", "linear")):
        frames = list(gen.interpolation_frames(G, seeds, frames_per_seed=3, space=space, kind=kind, batch=4))
        assert len(frames) == gen.count_frames(4, 3, False) == 10
        for k in range(4):
            assert np.abs(frames[3 * k].astype(int) - refs[k].astype(int)).max() <= 1
        assert not np.array_equal(frames[1], frames[0])
    looped = list(gen.interpolation_frames(G, seeds, frames_per_seed=2, loop=True))
    assert len(looped) == 8
    # 2x1 grid: cell 0 interpolates seeds 1,2 and cell 1 seeds 3,4.
    grid_frames = list(gen.interpolation_frames(G, seeds, frames_per_seed=2, grid=(2, 1), kind="linear"))
    assert len(grid_frames) == 3 and grid_frames[0].shape == (16, 32, 3)
    assert np.abs(grid_frames[0][:, :16].astype(int) - refs[0].astype(int)).max() <= 1
    assert np.abs(grid_frames[-1][:, 16:].astype(int) - refs[3].astype(int)).max() <= 1
    with pytest.raises(UserError, match="evenly"):
        list(gen.interpolation_frames(G, [1, 2, 3], grid=(2, 1)))
    with pytest.raises(UserError, match="slerp"):
        list(gen.interpolation_frames(G, seeds, space="w", kind="slerp"))
    with pytest.raises(UserError, match="at least 2"):
        list(gen.interpolation_frames(G, [1]))


# ---------------------------------------------------------------------------------------------------------------
# Video files


def test_label_mix_grid_writes_seeds_and_keeps_pixels_sharp():
    G = tiny_G()
    rows, cols = [85, 100], [55, 821, 3]
    grid, cells = gen.style_mix_grid(G, rows, cols, [0, 1])
    fig = media.label_mix_grid(grid, rows, cols, min_cell=64)
    h = w = 16
    s = 4  # 16 px cells enlarged by a whole factor to reach 64 px
    top = fig.shape[0] - 3 * h * s
    left = fig.shape[1] - 4 * w * s
    assert fig.ndim == 3 and fig.shape[2] == 3 and top > 0 and left > 0
    body = fig[top:, left:]
    # Every enlarged pixel is a block of the original one (nearest neighbour, no smoothing).
    assert np.array_equal(body[::s, ::s], grid) and np.array_equal(body[s - 1::s, s - 1::s], grid)
    assert (body[:h * s, :w * s] == 255).all()  # white corner
    # The label bands hold dark text over each column and beside each row, and nothing else but white.
    band_top, band_left = fig[:top], fig[top:, :left]
    assert (band_top[:, :left] == 255).all()
    for j in range(1, 4):
        assert band_top[:, left + j * w * s:left + (j + 1) * w * s].min() < 128, f"column {j} has no label"
    for i in range(1, 3):
        assert band_left[i * h * s:(i + 1) * h * s].min() < 128, f"row {i} has no label"
    assert (band_left[:h * s] == 255).all()
    # Grayscale and alpha images come out as RGB on white.
    gray = media.label_mix_grid(grid[:, :, :1], rows, cols, min_cell=16)
    assert gray.shape[2] == 3 and np.array_equal(gray[-h:, -w:, 0], grid[-h:, -w:, 0])
    rgba = np.concatenate([grid, np.zeros_like(grid[:, :, :1])], axis=2)  # fully transparent
    assert (media.label_mix_grid(rgba, rows, cols, min_cell=16)[-h:, -w:] == 255).all()
    with pytest.raises(ValueError, match="equal cells"):
        media.label_mix_grid(grid[:-1], rows, cols)
