"""StyleGAN2 networks: shapes, NVIDIA names, per-layer numerics, derivatives, truncation, rebuild."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.nets import Generator, Discriminator, SynthesisLayer, ToRGBLayer, MinibatchStdLayer, modulated_conv2d
from engine.nets.misc import plain_data

SMALL = dict(channel_base=128, channel_max=16)


def _g(res=16, ch=3, c_dim=0, **kw):
    torch.manual_seed(0)
    return Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=res, img_channels=ch,
                     mapping_kwargs=dict(num_layers=2), **{**SMALL, **kw})


def _d(res=16, ch=3, c_dim=0, **kw):
    torch.manual_seed(1)
    return Discriminator(c_dim=c_dim, img_resolution=res, img_channels=ch, **{**SMALL, **kw})


def _labels(n, c_dim):
    return F.one_hot(torch.arange(n) % c_dim, c_dim).float() if c_dim else None


@pytest.mark.parametrize("res", [8, 16, 32])
@pytest.mark.parametrize("ch", [1, 3, 4])
@pytest.mark.parametrize("c_dim", [0, 5])
def test_shapes(res, ch, c_dim):
    G = _g(res, ch, c_dim)
    D = _d(res, ch, c_dim)
    z = torch.randn(4, 8)
    c = _labels(4, c_dim)
    ws = G.mapping(z, c)
    assert ws.shape == (4, G.num_ws, 8)
    assert G.num_ws == 2 * int(np.log2(res)) - 2
    img = G(z, c)
    assert img.shape == (4, ch, res, res) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    logits = D(img, c)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()


@pytest.mark.parametrize("g_arch", ["orig", "skip", "resnet"])
@pytest.mark.parametrize("d_arch", ["orig", "skip", "resnet"])
def test_architectures(g_arch, d_arch):
    G = _g(16, 3, 0, architecture=g_arch)
    D = _d(16, 3, 0, architecture=d_arch)
    keys = G.state_dict().keys()
    assert ("synthesis.b8.torgb.weight" in keys) == (g_arch == "skip")
    assert ("synthesis.b16.skip.weight" in keys) == (g_arch == "resnet")
    dkeys = D.state_dict().keys()
    assert ("b8.fromrgb.weight" in dkeys) == (d_arch == "skip")
    assert ("b16.skip.weight" in dkeys) == (d_arch == "resnet")
    assert ("b4.fromrgb.weight" in dkeys) == (d_arch == "skip")
    img = G(torch.randn(2, 8), None)
    assert img.shape == (2, 3, 16, 16)
    assert D(img, None).shape == (2, 1)


def test_large_resolution_layout():
    G = Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=1024, img_channels=3,
                  mapping_kwargs=dict(num_layers=1), channel_base=4096, channel_max=4)
    assert G.num_ws == 18
    assert G.synthesis.block_resolutions[-1] == 1024
    D = Discriminator(c_dim=0, img_resolution=1024, img_channels=3, channel_base=4096, channel_max=4)
    assert D.block_resolutions[0] == 1024
    with pytest.raises(ValueError):
        Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=48, img_channels=3)
    with pytest.raises(ValueError):   # 64 // 1024 would leave layers without channels
        Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=1024, img_channels=3, channel_base=64)
    with pytest.raises(ValueError):
        Discriminator(c_dim=0, img_resolution=1024, img_channels=3, channel_base=64)


EXPECTED_G_KEYS = sorted("""
mapping.w_avg mapping.embed.weight mapping.embed.bias mapping.fc0.weight mapping.fc0.bias mapping.fc1.weight
mapping.fc1.bias
synthesis.b4.const synthesis.b4.resample_filter
synthesis.b4.conv1.weight synthesis.b4.conv1.bias synthesis.b4.conv1.noise_strength synthesis.b4.conv1.noise_const
synthesis.b4.conv1.resample_filter synthesis.b4.conv1.affine.weight synthesis.b4.conv1.affine.bias
synthesis.b4.torgb.weight synthesis.b4.torgb.bias synthesis.b4.torgb.affine.weight synthesis.b4.torgb.affine.bias
synthesis.b8.resample_filter
synthesis.b8.conv0.weight synthesis.b8.conv0.bias synthesis.b8.conv0.noise_strength synthesis.b8.conv0.noise_const
synthesis.b8.conv0.resample_filter synthesis.b8.conv0.affine.weight synthesis.b8.conv0.affine.bias
synthesis.b8.conv1.weight synthesis.b8.conv1.bias synthesis.b8.conv1.noise_strength synthesis.b8.conv1.noise_const
synthesis.b8.conv1.resample_filter synthesis.b8.conv1.affine.weight synthesis.b8.conv1.affine.bias
synthesis.b8.torgb.weight synthesis.b8.torgb.bias synthesis.b8.torgb.affine.weight synthesis.b8.torgb.affine.bias
""".split())

EXPECTED_D_KEYS = sorted("""
b8.resample_filter b8.fromrgb.weight b8.fromrgb.bias b8.fromrgb.resample_filter
b8.conv0.weight b8.conv0.bias b8.conv0.resample_filter b8.conv1.weight b8.conv1.bias b8.conv1.resample_filter
b8.skip.weight b8.skip.resample_filter
mapping.embed.weight mapping.embed.bias mapping.fc0.weight mapping.fc0.bias
b4.conv.weight b4.conv.bias b4.conv.resample_filter b4.fc.weight b4.fc.bias b4.out.weight b4.out.bias
""".split())


def test_state_dict_names_and_shapes():
    torch.manual_seed(0)
    G = Generator(z_dim=6, c_dim=3, w_dim=5, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  channel_base=32, channel_max=4)
    sd = G.state_dict()
    assert sorted(sd) == EXPECTED_G_KEYS
    assert sd["mapping.fc0.weight"].shape == (5, 6 + 5)       # z and the 5-dim embedding
    assert sd["mapping.embed.weight"].shape == (5, 3)
    assert sd["synthesis.b4.const"].shape == (4, 4, 4)
    assert sd["synthesis.b8.conv0.weight"].shape == (4, 4, 3, 3)
    assert sd["synthesis.b8.conv0.noise_const"].shape == (8, 8)
    assert sd["synthesis.b8.conv0.noise_strength"].shape == ()
    assert sd["synthesis.b8.conv0.resample_filter"].shape == (4, 4)
    assert sd["synthesis.b8.torgb.weight"].shape == (3, 4, 1, 1)
    assert sd["synthesis.b8.torgb.affine.weight"].shape == (4, 5)
    torch.testing.assert_close(sd["synthesis.b8.conv0.affine.bias"], torch.ones(4))   # bias_init 1
    torch.testing.assert_close(sd["synthesis.b8.resample_filter"],
                               torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)

    D = Discriminator(c_dim=3, img_resolution=8, img_channels=3, channel_base=32, channel_max=4,
                      mapping_kwargs=dict(num_layers=1))
    dsd = D.state_dict()
    assert sorted(dsd) == EXPECTED_D_KEYS
    assert dsd["b4.conv.weight"].shape == (4, 5, 3, 3)      # + 1 minibatch-stddev channel
    assert dsd["b4.fc.weight"].shape == (4, 4 * 16)
    assert dsd["b4.out.weight"].shape == (4, 4)             # cmap_dim = channels at 4x4
    assert dsd["b8.skip.weight"].shape == (4, 4, 1, 1)


def test_mapping_init_and_lr_multiplier():
    torch.manual_seed(0)
    G = Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=8, img_channels=3,
                  mapping_kwargs=dict(num_layers=2, lr_multiplier=0.01), **SMALL)
    w = G.mapping.fc0.weight
    assert 80 < float(w.detach().std()) < 120                      # randn / lr_multiplier
    assert G.mapping.fc0.weight_gain == pytest.approx(0.01 / 8)


def test_truncation_and_w_avg():
    G = _g(8, 3, 0)
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn(8))
    z = torch.randn(3, 8)
    ws0 = G.mapping(z, None, truncation_psi=0)
    torch.testing.assert_close(ws0, G.mapping.w_avg.expand(3, G.num_ws, 8))
    ws1 = G.mapping(z, None)
    wsh = G.mapping(z, None, truncation_psi=0.5)
    torch.testing.assert_close(wsh, G.mapping.w_avg + 0.5 * (ws1 - G.mapping.w_avg))
    wc = G.mapping(z, None, truncation_psi=0, truncation_cutoff=2)
    torch.testing.assert_close(wc[:, :2], G.mapping.w_avg.expand(3, 2, 8))
    torch.testing.assert_close(wc[:, 2:], ws1[:, 2:])
    # running average: w_avg <- mean(w) + beta * (w_avg - mean(w)), only when asked
    before = G.mapping.w_avg.clone()
    G.mapping(z, None)
    torch.testing.assert_close(G.mapping.w_avg, before)
    G.mapping(z, None, update_emas=True)
    torch.testing.assert_close(G.mapping.w_avg, ws1[:, 0].mean(0) + 0.995 * (before - ws1[:, 0].mean(0)))


def test_mapping_normalises_z_and_embedding():
    G = _g(8, 3, 5)
    z = torch.randn(2, 8)
    c = _labels(2, 5)
    torch.testing.assert_close(G.mapping(z, c), G.mapping(z * 7.0, c * 3.0))  # 2nd-moment normalisation
    assert not torch.allclose(G.mapping(z, c), G.mapping(z, _labels(2, 5).roll(1, 0)))
    with pytest.raises(ValueError):
        G.mapping(z, None)


def test_noise_modes():
    G = _g(8, 3, 0).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    z = torch.randn(2, 8)
    const_a = G(z, None, noise_mode="const")
    const_b = G(z, None, noise_mode="const")
    rand_a = G(z, None, noise_mode="random")
    rand_b = G(z, None, noise_mode="random")
    none = G(z, None, noise_mode="none")
    torch.testing.assert_close(const_a, const_b)
    assert not torch.allclose(rand_a, rand_b)
    assert not torch.allclose(const_a, none)
    with pytest.raises(ValueError):
        G(z, None, noise_mode="bogus")


def _demod_conv_reference(x, weight, styles, up, noise, bias, gain, flip):
    """Per-sample loop: modulate, demodulate, convolve (optionally upsampling by 2 through [1,3,3,1])."""
    outs = []
    f = torch.outer(torch.tensor([1., 3, 3, 1], dtype=x.dtype), torch.tensor([1., 3, 3, 1], dtype=x.dtype)) / 64
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        w = w / torch.sqrt(w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        xn = x[n: n + 1]
        if up == 2:
            # zero insertion, pad for the 4-tap filter and the 3x3 kernel, filter (gain 4), true convolution
            h = xn.shape[2]
            u = torch.zeros(1, xn.shape[1], 2 * h, 2 * h, dtype=x.dtype)
            u[:, :, ::2, ::2] = xn
            u = F.pad(u, [3, 2, 3, 2])
            u = F.conv2d(u, (f * 4).flip([0, 1])[None, None].expand(u.shape[1], 1, 4, 4), groups=u.shape[1])
            y = F.conv2d(u, w.flip([2, 3]))
        else:
            y = F.conv2d(xn, w if flip else w.flip([2, 3]), padding=1)
        outs.append(y)
    y = torch.cat(outs) + noise
    return F.leaky_relu(y + bias.reshape(1, -1, 1, 1), 0.2) * gain


@pytest.mark.parametrize("up", [1, 2])
def test_synthesis_layer_math(up):
    torch.manual_seed(3)
    layer = SynthesisLayer(4, 5, w_dim=6, resolution=8, up=up).double()
    with torch.no_grad():
        layer.noise_strength.fill_(0.3)
        layer.bias.normal_()
    x = torch.randn(3, 4, 8 // up, 8 // up, dtype=torch.float64)
    w = torch.randn(3, 6, dtype=torch.float64)
    out = layer(x, w, noise_mode="const")
    styles = w @ (layer.affine.weight * layer.affine.weight_gain).t() + layer.affine.bias
    ref = _demod_conv_reference(x, layer.weight, styles, up, layer.noise_const * 0.3, layer.bias, np.sqrt(2),
                                flip=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # the grouped-convolution form computes the same thing
    fused = modulated_conv2d(x, layer.weight, styles, up=up, padding=1, resample_filter=layer.resample_filter,
                             flip_weight=(up == 1), fused_modconv=True)
    plain = modulated_conv2d(x, layer.weight, styles, up=up, padding=1, resample_filter=layer.resample_filter,
                             flip_weight=(up == 1), fused_modconv=False)
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-10)


def test_torgb_and_clamp():
    torch.manual_seed(4)
    layer = ToRGBLayer(4, 3, w_dim=6, conv_clamp=0.25).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = torch.randn(2, 6, dtype=torch.float64)
    styles = (w @ (layer.affine.weight * layer.affine.weight_gain).t() + layer.affine.bias) / np.sqrt(4)
    ref = torch.einsum("oi,ni,nihw->nohw", layer.weight[:, :, 0, 0], styles, x) + layer.bias.reshape(1, 3, 1, 1)
    torch.testing.assert_close(layer(x, w), ref.clamp(-0.25, 0.25), rtol=1e-10, atol=1e-10)


def test_minibatch_std_groups():
    x = torch.randn(4, 6, 2, 2, dtype=torch.float64)
    y = MinibatchStdLayer(group_size=2, num_channels=2)(x)
    assert y.shape == (4, 8, 2, 2)
    torch.testing.assert_close(y[:, :6], x)
    for k in range(4):
        members = x[[k % 2, k % 2 + 2]]                         # groups are formed with stride N / G
        std = members.std(dim=0, unbiased=False)
        expect = [std[:3].mean(), std[3:].mean()]
        for f in range(2):
            torch.testing.assert_close(y[k, 6 + f], torch.full((2, 2), float(expect[f]), dtype=torch.float64),
                                       rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        MinibatchStdLayer(4)(torch.randn(6, 2, 2, 2))


def test_conditional_projection():
    D = _d(8, 3, 5).double()
    img = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    c = _labels(2, 5).double()
    x = None
    im = img
    for res in D.block_resolutions:
        x, im = getattr(D, f"b{res}")(x, im)
    ep = D.b4
    h = ep.conv(ep.mbstd(x))
    h = ep.fc(h.flatten(1))
    h = ep.out(h)
    cmap = D.mapping(None, c)
    ref = (h * cmap).sum(dim=1, keepdim=True) / np.sqrt(D.cmap_dim)
    torch.testing.assert_close(D(img, c), ref)


def test_r1_double_backward_through_d_and_g():
    G = _g(16, 3, 5)
    D = _d(16, 3, 5)
    c = _labels(4, 5)
    img = G(torch.randn(4, 8), c).detach().requires_grad_(True)
    logits = D(img, c)
    (grad,) = torch.autograd.grad(logits.sum(), [img], create_graph=True)
    penalty = grad.square().sum()
    penalty.backward()
    for name in ("b16.fromrgb.weight", "b16.conv0.weight", "b8.conv1.weight", "b4.fc.weight", "mapping.fc0.weight"):
        p = dict(D.named_parameters())[name]
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    # path-length style: gradient w.r.t. ws, then backward into G
    ws = G.mapping(torch.randn(4, 8), c)
    out = G.synthesis(ws, noise_mode="random")
    (gw,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), [ws], create_graph=True)
    gw.square().sum().backward()
    for name in ("synthesis.b16.conv1.weight", "synthesis.b8.conv0.affine.weight", "mapping.fc1.weight"):
        p = dict(G.named_parameters())[name]
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_freeze_layers():
    D = _d(16, 3, 0, block_kwargs=dict(freeze_layers=2))
    params = dict(D.named_parameters())
    buffers = dict(D.named_buffers())
    assert "b16.fromrgb.weight" in buffers and "b16.conv0.weight" in buffers
    assert "b16.conv1.weight" in params and "b8.conv0.weight" in params
    assert "b16.fromrgb.weight" in D.state_dict()


def test_rebuild_from_init_kwargs_is_identical():
    for arch in ("skip", "resnet"):
        G = _g(16, 4, 5, architecture=arch, conv_clamp=256).eval()
        kwargs = G.init_kwargs
        assert kwargs == plain_data(kwargs)                     # plain data only
        G2 = Generator(**kwargs).eval()
        G2.load_state_dict(G.state_dict())
        z = torch.randn(3, 8)
        c = _labels(3, 5)
        torch.testing.assert_close(G2(z, c, truncation_psi=0.7), G(z, c, truncation_psi=0.7), rtol=0, atol=0)
        D = _d(16, 4, 5, architecture=arch, block_kwargs=dict(freeze_layers=1),
               epilogue_kwargs=dict(mbstd_group_size=2))
        D2 = Discriminator(**D.init_kwargs)
        D2.load_state_dict(D.state_dict())
        img = torch.randn(4, 4, 16, 16)
        torch.testing.assert_close(D2(img, _labels(4, 5)), D(img, _labels(4, 5)), rtol=0, atol=0)


def test_nested_synthesis_kwargs_build_the_same_network_again():
    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                  synthesis_kwargs=dict(channel_base=64, channel_max=8, architecture="orig"))
    assert G.synthesis.b8.conv1.out_channels == 8 and not hasattr(G.synthesis.b4, "torgb")
    G_ema = Generator(**G.init_kwargs)
    G_ema.load_state_dict(G.state_dict())
    for (n1, t1), (n2, t2) in zip(G.state_dict().items(), G_ema.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)


def test_cpu_stays_float32_with_fp16_settings():
    G = _g(16, 3, 0, num_fp16_res=2, conv_clamp=256)
    D = _d(16, 3, 0, num_fp16_res=2, conv_clamp=256)
    img = G(torch.randn(2, 8), None)
    assert img.dtype == torch.float32
    assert D(img, None).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 layers run on CUDA only")
def test_cuda_mixed_precision_matches_fp32():
    G = _g(32, 3, 0, num_fp16_res=2, conv_clamp=256).cuda().eval()
    D = _d(32, 3, 0, num_fp16_res=2, conv_clamp=256).cuda()
    z = torch.randn(4, 8, device="cuda")
    img16 = G(z, None)
    img32 = G(z, None, force_fp32=True)
    assert img16.dtype == torch.float32 and torch.isfinite(img16).all()
    assert float((img16 - img32).abs().max()) < 0.05
    logits = D(img16, None)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, D(img16, None, force_fp32=True), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("noise_mode", ["const", "none", "random"])
def test_inference_fast_path_matches_training_path(noise_mode, monkeypatch):
    import engine.nets.layers as layers

    G = _g(16, 3, 5, conv_clamp=0.5, architecture="resnet")
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength") or name.endswith(".bias"):
                p.normal_()
    z = torch.randn(3, 8)
    c = _labels(3, 5)
    torch.manual_seed(5)                                    # same random noise in all three runs
    slow = G(z, c, noise_mode=noise_mode)                   # autograd on: plain bias_act path
    assert slow.requires_grad
    with torch.no_grad():
        torch.manual_seed(5)
        fast = G(z, c, noise_mode=noise_mode)               # folded multiply-add, NHWC activations
        monkeypatch.setattr(layers, "CPU_CHANNELS_LAST", False)
        torch.manual_seed(5)
        fast_nchw = G(z, c, noise_mode=noise_mode)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_nchw, slow.detach(), rtol=1e-5, atol=1e-5)
