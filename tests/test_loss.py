"""The StyleGAN2 loss against hand-computed values on toy networks, and R1 / path-length gradients checked
numerically (float64 finite differences)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.train.loss import StyleGAN2Loss
from engine.train.stats import StatsCollector

torch.set_default_dtype(torch.float32)


class ToyMapping(torch.nn.Module):
    def __init__(self, z_dim, w_dim, num_ws):
        super().__init__()
        self.fc = torch.nn.Linear(z_dim, w_dim, dtype=torch.float64)
        self.num_ws = num_ws

    def forward(self, z, c, update_emas=False, **kwargs):
        return torch.tanh(self.fc(z.to(torch.float64))).unsqueeze(1).repeat(1, self.num_ws, 1)


class ToySynthesis(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, 1, 4, 4]; each w feeds its own projection, so mixing matters."""

    def __init__(self, w_dim, num_ws):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(num_ws, w_dim, 16, dtype=torch.float64) * 0.5)

    def forward(self, ws, noise_mode="random", **kwargs):
        return torch.tanh(torch.einsum("nkw,kwp->np", ws, self.weight)).reshape(-1, 1, 4, 4)


class ToyG(torch.nn.Module):
    def __init__(self, z_dim=5, w_dim=3, num_ws=4):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.c_dim = z_dim, w_dim, num_ws, 0
        self.mapping = ToyMapping(z_dim, w_dim, num_ws)
        self.synthesis = ToySynthesis(w_dim, num_ws)


class LinearD(torch.nn.Module):
    """D(x) = <w, x> + b: its input gradient is w for every image, so R1 = |w|^2 exactly."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, img, c, update_emas=False):
        return (img.flatten(1) @ self.w + self.b).unsqueeze(1)


class TanhD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(16, 6, dtype=torch.float64) * 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))

    def forward(self, img, c, update_emas=False):
        return (torch.tanh(img.flatten(1) @ self.w1) @ self.w2).unsqueeze(1)


def make(D_cls=LinearD, seed=0, **kw):
    torch.manual_seed(seed)
    G, D = ToyG(), D_cls()
    G.requires_grad_(False)  # as in the loop: only the module being trained requires grad
    D.requires_grad_(False)
    stats = StatsCollector("cpu")
    kw.setdefault("style_mixing_prob", 0.0)
    loss = StyleGAN2Loss(G, D, stats=stats, device="cpu", **kw)
    return G, D, loss, stats


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    z = torch.randn(n, 5, generator=g, dtype=torch.float64)
    c = torch.zeros(n, 0, dtype=torch.float64)
    return real, c, z, c


def grads(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def test_generator_main_loss_matches_softplus_by_hand():
    G, D, loss, stats = make()
    real, real_c, z, c = batch()
    G.requires_grad_(True)
    loss.accumulate_gradients("Gmain", real, real_c, z, c, gain=1.0)
    got = grads(G)
    # By hand: mean softplus(-D(G(z))) and its gradient
    G.zero_grad()
    img = G.synthesis(G.mapping(z, c))
    expected = F.softplus(-(img.flatten(1) @ D.w + D.b)).mean()
    expected.backward()
    for n, p in G.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-10, atol=1e-12), n
    s = stats.collect(type("E", (), {"active": False, "world_size": 1})())
    assert abs(s["Loss/G/loss"]["mean"] - expected.item()) < 1e-10
    assert all(p.grad is None for p in D.parameters())


def test_discriminator_main_loss_matches_by_hand():
    G, D, loss, stats = make()
    real, real_c, z, c = batch()
    D.requires_grad_(True)
    loss.accumulate_gradients("Dmain", real, real_c, z, c, gain=2.0)
    got = grads(D)
    D.zero_grad()
    with torch.no_grad():
        fake = G.synthesis(G.mapping(z, c))
    l_fake = F.softplus(fake.flatten(1) @ D.w + D.b).mean()
    l_real = F.softplus(-(real.flatten(1) @ D.w + D.b)).mean()
    ((l_fake + l_real) * 2.0).backward()
    for n, p in D.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-10, atol=1e-12), n
    s = stats.collect(type("E", (), {"active": False, "world_size": 1})())
    per_sample = F.softplus(fake.flatten(1) @ D.w + D.b) + F.softplus(-(real.flatten(1) @ D.w + D.b))
    assert abs(s["Loss/D/loss"]["mean"] - per_sample.mean().item()) < 1e-10
    assert s["Loss/signs/real"]["num"] == 6


def test_r1_on_a_linear_discriminator_is_the_squared_weight_norm():
    G, D, loss, stats = make(r1_gamma=3.0)
    real, real_c, z, c = batch()
    D.requires_grad_(True)
    loss.accumulate_gradients("Dreg", real, real_c, z, c, gain=16.0)
    w = D.w.detach()
    s = stats.collect(type("E", (), {"active": False, "world_size": 1})())
    assert abs(s["Loss/r1_penalty"]["mean"] - w.square().sum().item()) < 1e-10
    assert abs(s["Loss/D/reg"]["mean"] - 1.5 * w.square().sum().item()) < 1e-10
    # d/dw [gamma/2 |w|^2] * gain = gamma * w * gain; the bias does not enter R1
    assert torch.allclose(D.w.grad, 3.0 * w * 16.0, rtol=1e-10)
    assert D.b.grad is None or D.b.grad.abs().max() == 0


def test_r1_gradient_matches_finite_differences():
    G, D, loss, _ = make(D_cls=TanhD, r1_gamma=2.0)
    real, real_c, z, c = batch(4)
    D.requires_grad_(True)
    loss.accumulate_gradients("Dreg", real, real_c, z, c, gain=1.0)
    analytic = D.w1.grad.clone()

    @torch.enable_grad()
    def objective():
        x = real.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x, None).sum(), [x])
        return (g.square().sum([1, 2, 3]) * 1.0).mean().item()

    eps = 1e-6
    numeric = torch.zeros_like(D.w1)
    with torch.no_grad():
        for i in range(D.w1.shape[0]):
            for j in range(D.w1.shape[1]):
                D.w1[i, j] += eps
                up = objective()
                D.w1[i, j] -= 2 * eps
                down = objective()
                D.w1[i, j] += eps
                numeric[i, j] = (up - down) / (2 * eps)
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_path_length_penalty_value_and_gradient():
    G, D, loss, stats = make(pl_weight=2.0, pl_batch_shrink=2, pl_decay=0.01)
    real, real_c, z, c = batch(6)
    loss.pl_mean = torch.tensor(0.4, dtype=torch.float64)  # float64 so finite differences are exact enough
    G.requires_grad_(True)
    torch.manual_seed(123)
    loss.accumulate_gradients("Greg", real, real_c, z, c, gain=4.0)
    analytic = {n: g.clone() for n, g in grads(G).items()}
    new_mean = loss.pl_mean.item()

    @torch.enable_grad()
    def penalty():
        torch.manual_seed(123)
        zz = z[:3]
        ws = G.mapping(zz, None)
        img = G.synthesis(ws)
        noise = torch.randn_like(img) / np.sqrt(16)
        (g,) = torch.autograd.grad((img * noise).sum(), [ws], create_graph=True)
        lengths = g.square().sum(2).mean(1).sqrt()
        mean = 0.4 + (lengths.mean() - 0.4) * 0.01
        return ((lengths - mean).square() * 2.0).mean() * 4.0, mean

    value, mean = penalty()
    assert abs(new_mean - mean.item()) < 1e-12
    s = stats.collect(type("E", (), {"active": False, "world_size": 1})())
    assert abs(s["Loss/G/reg"]["mean"] * 4.0 - value.item()) < 1e-10
    assert s["Loss/G/reg"]["num"] == 3  # batch shrunk by 2

    eps = 1e-6
    W = G.synthesis.weight
    with torch.no_grad():
        for idx in [(0, 0, 0), (1, 2, 5), (3, 1, 15), (2, 0, 7)]:
            W[idx] += eps
            up = penalty()[0].item()
            W[idx] -= 2 * eps
            down = penalty()[0].item()
            W[idx] += eps
            assert abs(analytic["synthesis.weight"][idx].item() - (up - down) / (2 * eps)) < 1e-6


def test_style_mixing_takes_trailing_ws_from_a_second_latent():
    G, D, loss, _ = make(style_mixing_prob=1.0)
    _, _, z, c = batch(5)
    plain = G.mapping(z, c)
    torch.manual_seed(7)
    mixed_any = False
    for _ in range(8):
        _, ws = loss.run_G(z, c)
        same = (ws - plain).abs().amax(dim=(0, 2)) < 1e-12  # per w index
        assert bool(same[0])  # the first w always comes from z
        k = int(same.long().sum())
        assert bool(same[:k].all()) and not bool(same[k:].any())  # one cutoff, everything after it mixed
        mixed_any |= k < G.num_ws
    assert mixed_any
    loss.style_mixing_prob = 0.0
    _, ws = loss.run_G(z, c)
    assert torch.equal(ws, plain)


def test_nonfinite_losses_are_counted():
    G, D, loss, _ = make()
    real, real_c, z, c = batch()
    real[0, 0, 0, 0] = float("nan")
    D.requires_grad_(True)
    loss.accumulate_gradients("Dmain", real, real_c, z, c)
    assert int(loss.nonfinite) > 0


def test_unknown_phase_is_rejected():
    G, D, loss, _ = make()
    with pytest.raises(ValueError):
        loss.accumulate_gradients("Gfoo", *batch())


def test_all_phases_under_bf16_autocast_on_real_networks():
    """The bf16 path (autocast around synthesis and D, float32 mapping and losses), here on the CPU's autocast."""
    from engine.nets import Discriminator, Generator
    from engine.train.augment import make_pipe

    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=1),
                  channel_base=64, channel_max=8).requires_grad_(False)
    D = Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=8).requires_grad_(False)
    pipe = make_pipe("bgc")
    pipe.p = 0.5
    loss = StyleGAN2Loss(G, D, augment_pipe=pipe, r1_gamma=1.0, style_mixing_prob=0.9, pl_weight=2.0,
                         autocast_dtype=torch.bfloat16, device="cpu")
    real = torch.rand(4, 3, 8, 8) * 2 - 1
    z, c = torch.randn(4, 8), torch.zeros(4, 0)
    w_avg = G.mapping.w_avg.clone()
    for phase, module in (("Gmain", G), ("Greg", G), ("Dmain", D), ("Dreg", D)):
        module.requires_grad_(True)
        loss.accumulate_gradients(phase, real, c, z, c, gain=1.0)
        module.requires_grad_(False)
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads), phase
    assert int(loss.nonfinite) == 0 and loss.pl_mean.dtype == torch.float32 and float(loss.pl_mean) > 0
    assert not torch.equal(G.mapping.w_avg, w_avg)  # updated in Dmain without a dtype clash


# -- LeCam regularisation and adaptive pseudo augmentation ------------------------------------------------------


def test_lecam_term_on_known_numbers():
    """D outputs a constant b: the term is weight * ((b - a_F)^2 + (b - a_R)^2) with the averages moved first."""
    G, D, loss, stats = make(lecam_weight=0.5)
    with torch.no_grad():
        D.w.zero_()
        D.b.fill_(2.0)
    loss.lecam_real.fill_(1.0)
    loss.lecam_fake.fill_(-1.0)
    D.requires_grad_(True)
    loss.accumulate_gradients("Dmain", *batch(), gain=1.0)
    # a_F: -1 -> 0.99 * -1 + 0.01 * 2 = -0.97 (moved before the real side uses it); a_R: 1 -> 1.01
    assert loss.lecam_fake.item() == pytest.approx(-0.97) and loss.lecam_real.item() == pytest.approx(1.01)
    s = stats.collect(type("E", (), {"active": False, "world_size": 1})())
    # fake side with the a_R it found (1.0): (2 - 1)^2 = 1; real side with a_F = -0.97: 2.97^2 = 8.8209
    assert s["Loss/D/lecam"]["mean"] == pytest.approx(0.5 * (1.0 + 8.8209), rel=1e-6)
    assert s["Loss/D/loss"]["mean"] == pytest.approx(np.log1p(np.exp(2.0)) + np.log1p(np.exp(-2.0)), rel=1e-6)
    # d/db: softplus'(b) - softplus'(-b) + 0.5 * (2 (b - a_R) + 2 (b - a_F))
    sig = 1 / (1 + np.exp(-2.0))
    assert D.b.grad.item() == pytest.approx(sig - (1 - sig) + 0.5 * (2 * 1.0 + 2 * 2.97), rel=1e-6)


def test_lecam_gradient_matches_the_loss_by_hand_and_is_off_at_weight_0():
    G, D, loss, _ = make(lecam_weight=0.3)
    loss.lecam_real = torch.tensor(0.2, dtype=torch.float64)
    loss.lecam_fake = torch.tensor(-0.4, dtype=torch.float64)
    real, real_c, z, c = batch()
    D.requires_grad_(True)
    loss.accumulate_gradients("Dmain", real, real_c, z, c, gain=2.0)
    got = grads(D)
    D.zero_grad()
    with torch.no_grad():
        fake = G.synthesis(G.mapping(z, c))
    l_fake, l_real = fake.flatten(1) @ D.w + D.b, real.flatten(1) @ D.w + D.b
    a_fake = 0.99 * -0.4 + 0.01 * l_fake.mean().item()
    a_real = 0.99 * 0.2 + 0.01 * l_real.mean().item()
    total = (F.softplus(l_fake).mean() + F.softplus(-l_real).mean()
             + 0.3 * ((l_real - a_fake).square().mean() + (l_fake - 0.2).square().mean()))
    (total * 2.0).backward()
    for n, p in D.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-10, atol=1e-12), n
    assert loss.lecam_real.item() == pytest.approx(a_real, rel=1e-12)
    assert loss.lecam_fake.item() == pytest.approx(a_fake, rel=1e-12)
    # Off (weight 0): the plain logistic loss, the averages never move.
    G, D, plain, stats = make()
    D.requires_grad_(True)
    plain.accumulate_gradients("Dmain", real, real_c, z, c, gain=2.0)
    assert plain.lecam_real.item() == 0 and plain.lecam_fake.item() == 0
    assert "Loss/D/lecam" not in stats.collect(type("E", (), {"active": False, "world_size": 1})())


def test_apa_picks_the_fraction_p_and_draws_nothing_at_0():
    from engine.train.augment import ApaController

    apa = ApaController()
    assert apa.p == 0
    state = torch.get_rng_state()
    assert apa.pick(1000).numel() == 0 and torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    for p in (0.1, 0.5, 0.9):
        apa.pipe.p = p
        picked = apa.pick(20000)
        assert picked.unique().numel() == picked.numel() and abs(picked.numel() / 20000 - p) < 0.015
    apa.pipe.p = 1.0
    assert torch.equal(apa.pick(7), torch.arange(7))


def test_apa_p_moves_like_adas_towards_its_target_within_0_and_1():
    from engine.train.augment import ApaController

    apa = ApaController(target=0.6, interval=4, speed_kimg=500, batch_size=32)
    step = 32 * 4 / 500_000
    assert apa.update((8.0, 10.0)) == pytest.approx(step)  # r_t 0.8 above the target: up
    assert apa.update((9.0, 10.0)) == pytest.approx(2 * step)
    assert apa.update((2.0, 10.0)) == pytest.approx(step)  # below: down
    assert apa.update((-5.0, 10.0)) == 0 and apa.update((-5.0, 10.0)) == 0  # never below 0
    apa.pipe.p = 1.0
    assert apa.update((10.0, 10.0)) == 1.0
    saved = apa.state_dict()
    again = ApaController()
    again.load_state_dict(saved)
    assert again.p == 1.0 and again.target == 0.6


class RecordingD(LinearD):
    """LinearD that keeps every batch it was shown."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, img, c, update_emas=False):
        self.seen.append(img.detach().clone())
        return super().forward(img, c, update_emas)


def test_apa_shows_generated_images_as_real_and_keeps_the_statistics_on_the_genuine_reals():
    from engine.train.augment import AdaController, ApaController, make_pipe

    apa = ApaController(target=0.6)
    apa.pipe.p = 0.5
    pipe = make_pipe("bgc")
    pipe.p = 0.0  # (augmentation off, so D sees exactly the images it is given)
    ada = AdaController(pipe)
    G, D, loss, stats = make(D_cls=RecordingD, apa=apa, ada=ada)
    loss.augment_pipe = None
    real, real_c, z, c = batch(n=16)
    torch.manual_seed(5)
    expect_swapped = torch.nonzero(torch.rand([16]) < 0.5).flatten()
    assert 0 < expect_swapped.numel() < 16
    torch.manual_seed(5)
    D.requires_grad_(True)
    loss.accumulate_gradients("Dmain", real, real_c, z, c)
    shown_real = D.seen[-1]
    same = (shown_real == real).flatten(1).all(1)
    assert torch.equal(torch.nonzero(~same).flatten(), expect_swapped)  # exactly the picked ones replaced
    # The replacements are images of G (values from its tanh, unlike the fakes of this step's own latents).
    fakes = G.synthesis(G.mapping(z, c)).detach()
    for i in expect_swapped.tolist():
        assert not any(torch.equal(shown_real[i], f) for f in fakes)
    # D's logistic loss counts them as real; r_t (ADA's and APA's) and the stats see only the genuine reals.
    genuine = same.sum().item()
    s = stats.collect(type("E", (), {"active": False, "world_size": 1})())
    assert s["Loss/signs/real"]["num"] == genuine and s["Loss/D/loss"]["num"] == 16
    assert apa.acc[1].item() == genuine and ada.acc[1].item() == genuine
    assert all(p.grad is None for p in G.parameters())
    # In R1's pass (Dreg) nothing is replaced.
    loss.r1_gamma = 1.0
    loss.accumulate_gradients("Dreg", real, real_c, z, c)
    assert torch.equal(D.seen[-1], real)
