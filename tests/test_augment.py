import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.ops.filters import band_filters, symlet_lowpass
from engine.train.augment import (PIPES, AdaController, AugmentPipe, make_pipe, rotate2d, scale2d,
                                  translate2d)


def smooth_images(n=4, c=3, res=16, seed=0):
    """Band-limited test images [N, C, res, res]: the resampling filters leave them (almost) untouched."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn([n, c, 4, 4], generator=g)
    return F.interpolate(coarse, size=(res, res), mode="bicubic", align_corners=False)


def test_symlet6_is_orthonormal_and_matches_the_published_filter():
    h = symlet_lowpass(6)
    assert len(h) == 12
    assert abs(h.sum() - math.sqrt(2)) < 1e-12
    for shift in range(1, 6):
        assert abs(np.dot(h[:-2 * shift], h[2 * shift:])) < 1e-12
    assert abs(np.dot(h, h) - 1) < 1e-12
    # first taps of the Symlet-6 decomposition lowpass as tabulated in wavelet libraries
    assert np.allclose(h[:4], [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057,
                               -0.048311742585633], atol=1e-12)


def test_band_filters_sum_to_a_delta_and_are_symmetric():
    bank = band_filters()
    total = bank.sum(axis=0)
    delta = np.zeros_like(total)
    delta[len(total) // 2] = 1
    assert np.allclose(total, delta)
    assert np.allclose(bank, bank[:, ::-1])
    assert abs(bank[0].sum() - 1) < 1e-12 and np.allclose(bank[1:].sum(axis=1), 0)


@pytest.mark.parametrize("name", list(PIPES))
def test_p_zero_is_the_identity(name):
    pipe = make_pipe(name)
    x = torch.randn(3, 3, 16, 16)
    pipe.p = 0.0
    assert torch.equal(pipe(x), x)


def test_affine_identity_and_integer_translation_are_exact():
    pipe = AugmentPipe()
    x = torch.randn(2, 3, 16, 16)
    y = pipe.apply_affine(x, torch.eye(3).expand(2, 3, 3))
    assert (y - x).abs().max() < 1e-4
    # G_inv maps output to input coordinates: out(x, y) = in(x + 3, y - 2)
    y = pipe.apply_affine(x, translate2d(3, -2, 2, "cpu"))
    assert (y[:, :, 2:, :-3] - x[:, :, :-2, 3:]).abs().max() < 1e-4


def test_affine_flip_and_quarter_turn_on_smooth_images():
    pipe = AugmentPipe()
    x = smooth_images(2)
    scale = x.abs().max()
    assert (pipe.apply_affine(x, scale2d(-1, 1, 2, "cpu")) - x.flip(3)).abs().max() < 0.03 * scale
    quarter = rotate2d(torch.full([2], math.pi / 2), 2, "cpu")
    assert (pipe.apply_affine(x, quarter) - torch.rot90(x, 1, [2, 3])).abs().max() < 0.03 * scale


def test_xflip_only_flips():
    torch.manual_seed(1)
    pipe = AugmentPipe(xflip=1)
    pipe.p = 1.0
    x = smooth_images(16, seed=3)
    y = pipe(x)
    tol = 0.03 * x.abs().max()
    flipped = kept = 0
    for i in range(len(x)):
        d_keep = (y[i] - x[i]).abs().max()
        d_flip = (y[i] - x[i].flip(2)).abs().max()
        assert min(d_keep, d_flip) < tol
        flipped += int(d_flip < tol)
        kept += int(d_keep < tol)
    assert flipped > 0 and kept > 0


def _roll_distances(y, exact):
    """Mean absolute distance of y from the exact image rolled by -1 and by +1 px along x."""
    return ((y - torch.roll(exact, -1, 3)).abs().mean().item(), (y - torch.roll(exact, 1, 3)).abs().mean().item())


def test_xflip_alone_at_p1_is_an_exact_unshifted_flip():
    torch.manual_seed(2)
    pipe = AugmentPipe(xflip=1)
    pipe.p = 1.0
    x = torch.rand(32, 3, 16, 16) * 2 - 1  # sharp images: any resampling would show
    y = pipe(x)
    flipped = [i for i in range(len(x)) if torch.equal(y[i], x[i].flip(2))]
    kept = [i for i in range(len(x)) if torch.equal(y[i], x[i])]
    assert sorted(flipped + kept) == list(range(len(x)))
    assert len(flipped) > 4 and len(kept) > 4
    left, right = _roll_distances(y[flipped], x[flipped].flip(3))
    assert left > 0.3 and abs(left - right) < 1e-6 * left  # as far from the flip moved left as moved right


def test_rotate90_alone_at_p1_is_an_exact_quarter_turn():
    torch.manual_seed(3)
    pipe = AugmentPipe(rotate90=1)
    pipe.p = 1.0
    x = torch.rand(32, 3, 12, 12) * 2 - 1
    y = pipe(x)
    turns = []
    for i in range(len(x)):
        match = [k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, [1, 2]))]
        assert len(match) == 1, f"sample {i} is not an exact quarter turn of its input"
        turns.append(match[0])
    assert set(turns) == {0, 1, 2, 3}
    for k in (1, 2, 3):
        idx = [i for i, t in enumerate(turns) if t == k]
        exact = torch.rot90(x[idx], k, [2, 3])
        left, right = _roll_distances(y[idx], exact)
        assert abs(left - right) < 1e-6 * left


def test_integer_translation_moves_whole_pixels_with_reflection():
    torch.manual_seed(4)
    pipe = AugmentPipe(xint=1, xint_max=0.25)
    pipe.p = 1.0
    x = torch.rand(16, 1, 8, 8)
    y = pipe(x)
    padded = F.pad(x, [2, 2, 2, 2], mode="reflect")
    moved = 0
    for i in range(len(x)):
        hits = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                if torch.equal(y[i], padded[i, :, 2 - dy:10 - dy, 2 - dx:10 - dx])]
        assert hits, f"sample {i} is not a whole-pixel move of its input"
        moved += hits[0] != (0, 0)
    assert moved > 4


def test_whole_pixel_moves_pass_gradients_and_combine_with_resampling():
    torch.manual_seed(5)
    pipe = AugmentPipe(xflip=1, rotate90=1, scale=1)
    pipe.p = 1.0
    x = smooth_images(4).requires_grad_(True)
    y = pipe(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_mirror_through_the_resampler_is_not_shifted():
    # A mirror given to the filtered path as a general affine (as a combined transform would be) lands on the
    # exact mirror, not a fraction of a pixel to one side.
    pipe = AugmentPipe()
    x = smooth_images(8, res=32, seed=6)
    exact = x.flip(3)
    y = pipe.apply_affine(x, scale2d(-1, 1, 8, "cpu"))
    left, right = _roll_distances(y, exact)
    assert abs(left - right) < 0.02 * left


def test_geometric_pipeline_changes_images_and_keeps_shape():
    torch.manual_seed(0)
    pipe = make_pipe("bg")
    pipe.p = 1.0
    x = smooth_images(8)
    y = pipe(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_colour_ops_hue_and_saturation_keep_luma_brightness_shifts_it():
    torch.manual_seed(0)
    x = smooth_images(6)
    pipe = AugmentPipe(hue=1, saturation=1)
    pipe.p = 1.0
    y = pipe(x)
    assert torch.allclose(y.mean(dim=1), x.mean(dim=1), atol=1e-5)
    assert (y - x).abs().max() > 1e-2
    pipe = AugmentPipe(brightness=1)
    pipe.p = 1.0
    d = pipe(x) - x
    per_sample = d.reshape(6, -1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-5)


def test_colour_pipeline_on_grayscale():
    torch.manual_seed(0)
    pipe = make_pipe("color")
    pipe.p = 1.0
    x = smooth_images(4, c=1)
    y = pipe(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_cutout_masks_a_quarter_of_the_image():
    torch.manual_seed(0)
    pipe = AugmentPipe(cutout=1)
    pipe.p = 1.0
    x = torch.ones(32, 1, 32, 32)
    y = pipe(x)
    zero_frac = (y == 0).float().mean(dim=(1, 2, 3))
    assert zero_frac.max() <= 0.25 + 1e-6
    assert 0.1 < zero_frac.mean() < 0.25  # squares half the size, partly outside near the borders


def test_noise_and_filter_change_images():
    torch.manual_seed(0)
    x = smooth_images(8)
    for kw in (dict(noise=1), dict(imgfilter=1)):
        pipe = AugmentPipe(**kw)
        pipe.p = 1.0
        y = pipe(x)
        assert y.shape == x.shape and (y - x).abs().max() > 1e-3


def test_full_pipeline_is_differentiable_twice():
    torch.manual_seed(0)
    pipe = make_pipe("bgcfnc")
    pipe.p = 0.7
    x = smooth_images(4).requires_grad_(True)
    w = torch.randn(3, 16, 16, dtype=torch.float32, requires_grad=True)
    logits = (torch.tanh(pipe(x)) * w).sum(dim=(1, 2, 3))
    (gx,) = torch.autograd.grad(logits.sum(), [x], create_graph=True)
    assert torch.isfinite(gx).all() and gx.abs().max() > 0
    gx.square().sum().backward()  # R1-style second derivative through every op
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().max() > 0


def test_ada_controller_rises_on_an_overfitting_discriminator_and_falls_otherwise():
    pipe = make_pipe("bgc")
    ada = AdaController(pipe, target=0.6, interval=4, speed_kimg=500, batch_size=64)
    step = 64 * 4 / 500_000
    for _ in range(5):  # D is confident on every real: E[sign] = 1 > target
        for _ in range(4):
            ada.accumulate(torch.full([16, 1], 3.0))
        ada.update(ada.acc.tolist())
    assert abs(pipe.p - 5 * step) < 1e-12
    for _ in range(3):  # D unsure: E[sign] = 0 < target
        ada.accumulate(torch.tensor([[1.0], [-1.0]]))
        ada.update(ada.acc.tolist())
    assert abs(pipe.p - 2 * step) < 1e-12
    for _ in range(10):
        ada.accumulate(torch.tensor([[-1.0]]))
        ada.update(ada.acc.tolist())
    assert pipe.p == 0.0
    fast = AdaController(pipe, speed_kimg=0.001, batch_size=64)
    fast.accumulate(torch.ones(4, 1))
    fast.update(fast.acc.tolist())
    assert pipe.p == 1.0


def test_ada_controller_state_round_trip():
    pipe = make_pipe("bgc")
    ada = AdaController(pipe)
    pipe.p = 0.37
    ada.accumulate(torch.tensor([[1.0], [-2.0], [3.0]]))
    state = ada.state_dict()
    pipe2 = make_pipe("bgc")
    ada2 = AdaController(pipe2)
    ada2.load_state_dict(state)
    assert pipe2.p == 0.37 and torch.equal(ada2.acc, ada.acc)
    # A resume with another number of processes has no [sum, count] for this rank: p comes back, the interval
    # starts afresh.
    ada3 = AdaController(make_pipe("bgc"))
    ada3.load_state_dict({"p": 0.25, "acc": None})
    assert ada3.pipe.p == 0.25 and ada3.acc.tolist() == [0.0, 0.0]


def test_unknown_pipe_is_a_user_error():
    from engine.errors import UserError

    with pytest.raises(UserError, match="augpipe"):
        make_pipe("bgcx")
