"""Projection: find the latent w whose image matches a target picture (StyleGAN2 paper, appendix D).

The optimisation follows the paper's description:
  * start at the mean w (from 10,000 mapped z) and optimise one w ('w' space, repeated to all layers) or one w
    per layer ('w+');
  * Adam (betas 0.9, 0.999), peak learning rate 0.1, ramped up linearly over the first 5 % of the steps and down
    with a cosine over the last 25 %;
  * Gaussian noise added to w with a scale of 0.05 * (spread of w) that falls quadratically to zero at 75 %;
  * the per-layer noise maps are optimised too, kept at zero mean and unit variance after every step and
    regularised (weight 1e5) towards no spatial autocorrelation at every scale down to 8x8;
  * the distance is LPIPS (NVIDIA's VGG16 weights) on images downsampled to 256 px.

Offline, without the LPIPS weights, the distance is built from what ships (see `make_loss`).
"""

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.fsutil import download

VGG_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"
VGG_FILE = "vgg16.pt"
LOSSES = ("auto", "lpips", "d", "inception", "pixel")
MAX_STEPS = 100_000
MAX_MEGAPIXELS = 100.0
W_AVG_SAMPLES = 10_000

INITIAL_LR = 0.1
LR_RAMPUP = 0.05
LR_RAMPDOWN = 0.25
W_NOISE_SCALE = 0.05
W_NOISE_RAMP = 0.75
NOISE_REG_WEIGHT = 1e5


# --------------------------------------------------------------------------------------------------------------
# The target


def load_target(path, G, max_megapixels=MAX_MEGAPIXELS):
    """A picture file -> np uint8 [R, R, C] at G's resolution and channel count, cropped and resized as the
    dataset tool does (centre crop, Lanczos, EXIF rotation, alpha on white, colour profiles to sRGB).

    UserError for a missing file, a non-image, one over `max_megapixels`, or a colour picture for a grayscale
    network.
    """
    import io

    from PIL import Image

    from engine.data import imaging
    from engine.data.sources import Item

    path = Path(path)
    if not path.exists():
        raise UserError(f"target {path} does not exist")
    if not path.is_file():
        raise UserError(f"target {path} is not a file")
    R = int(G.img_resolution)
    opts = imaging.Options(width=R, height=R, transform="center-crop", channels=3,
                           max_pixels=int(max_megapixels * 1_000_000))
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = opts.max_pixels * 4
    try:
        result = imaging.process_item(Item(name=path.name, kind="file", ref=str(path)), opts)
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if isinstance(result, imaging.Skip):
        why = {
            imaging.NOT_AN_IMAGE: "is not a picture (use a PNG, JPEG, WebP, ... file)",
            imaging.ZERO_BYTES: "is empty (0 bytes)",
            imaging.BOMB: f"is too large to open ({result.detail.split(';')[0]}); shrink it first",
            imaging.TRUNCATED: "is truncated or damaged",
        }.get(result.reason, f"cannot be read ({result.detail or result.reason})")
        raise UserError(f"target {path} {why}")
    rgb = np.asarray(Image.open(io.BytesIO(result.png)).convert("RGB"))
    if int(G.img_channels) == 1:
        # A grey picture saved as RGB is fine; one with colour would lose it silently, so it is refused.
        colour = np.abs(rgb.astype(np.float32) - rgb.mean(axis=2, keepdims=True)).max() if rgb.size else 0
        if colour > 2:
            raise UserError(f"target {path} is a colour picture but this network makes grayscale images: "
                            "convert the picture to grayscale first")
        gray = Image.fromarray(rgb).convert("L")
        return np.asarray(gray)[:, :, None].copy()
    if int(G.img_channels) != 3:
        raise UserError(f"projection supports grayscale and RGB networks; this one has {G.img_channels} channels")
    return rgb.copy()


def image_to_tensor(image, device):
    """np uint8 [H, W, C] -> float [1, C, H, W] in [-1, 1] (the generator's range)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).to(device, torch.float32).permute(2, 0, 1).unsqueeze(0)
    return t / 127.5 - 1


# --------------------------------------------------------------------------------------------------------------
# Distances: each maps (synth, target) images [N, C, H, W] in [-1, 1] to a scalar per image [N].


class PixelLoss:
    name = "pixel"
    description = "pixels (mean squared error)"

    def __call__(self, synth, target):
        return (synth - target).square().flatten(1).mean(1)


def _to_256(x):
    """[-1, 1] images -> [0, 255], 3 channels, downsampled by area averaging to 256 px when larger (NVIDIA's)."""
    x = (x + 1) * 127.5
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[2] > 256:
        x = F.adaptive_avg_pool2d(x, (256, 256))
    return x


class LpipsLoss:
    """NVIDIA's VGG16 LPIPS (TorchScript): features of images in [0, 255]; distance = squared feature difference."""

    name = "lpips"
    description = "LPIPS (NVIDIA's VGG16 weights)"

    def __init__(self, module):
        for p in module.parameters():  # gradients flow to the image only
            p.requires_grad_(False)
        self.module = module
        self._target = (None, None)

    def features(self, x):
        return self.module(_to_256(x), resize_images=False, return_lpips=True)

    def __call__(self, synth, target):
        if self._target[0] is not target:  # the target's features are the same every step: compute them once
            with torch.no_grad():
                self._target = (target, self.features(target))
        return (self.features(synth) - self._target[1]).square().flatten(1).sum(1)


def _unit_channels(x):
    """Each spatial feature vector scaled to unit length (as LPIPS normalises its VGG activations)."""
    return x / (x.square().sum(dim=1, keepdim=True) + 1e-10).sqrt()


class FeatureLoss:
    """An LPIPS-like distance on the features of an offline network, plus the pixel distance.

    Untrained-for-perception features alone can be matched by images that look different, so the pixel term
    keeps the colours honest while the features pull the structure.
    """

    def __init__(self, name, description, extract):
        self.name = name
        self.description = description
        self.extract = extract
        self._target = (None, None)

    def __call__(self, synth, target):
        if self._target[0] is not target:  # the target's features are the same every step: compute them once
            with torch.no_grad():
                self._target = (target, self.extract(target))
        total = (synth - target).square().flatten(1).mean(1)
        for a, b in zip(self.extract(synth), self._target[1]):
            if a.ndim == 4:
                d = (_unit_channels(a) - _unit_channels(b)).square().sum(1).flatten(1).mean(1)
            else:
                d = (_unit_channels(a.unsqueeze(-1)) - _unit_channels(b.unsqueeze(-1))).square().flatten(1).sum(1)
            total = total + d
        return total


def discriminator_features(D):
    """D -> fn(img [N, C, R, R] in [-1, 1]) -> [the activations after each of D's blocks]."""
    D = D.eval().requires_grad_(False)

    def extract(img):
        x, feats = None, []
        for res in D.block_resolutions:
            x, img = getattr(D, f"b{res}")(x, img, force_fp32=True)
            feats.append(x.to(torch.float32))
        return feats

    return extract


INCEPTION_LAYERS = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4")
INCEPTION_TAPPED = ("conv_1", "conv_2", "conv_4")


def inception_features(detector):
    """The offline Inception (TorchScript) -> fn(img in [-1, 1]) -> [activations of its first convolutions].

    Like LPIPS, which compares early VGG layers, only the stem is used: its features describe edges and textures,
    and it costs a small fraction of the full 299 px network, which matters when it runs a thousand times
    forwards and backwards. Images are resized to 64..256 px (the stem's valid convolutions need some room).
    """
    layers = detector.module.net.layers
    for p in detector.module.parameters():  # gradients flow to the image only
        p.requires_grad_(False)

    def extract(img):
        size = min(256, max(64, img.shape[-1]))
        x = (img + 1) * 127.5
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])
        x = x / 128.0 - 1.0
        feats = []
        for name in INCEPTION_LAYERS:
            x = getattr(layers, name)(x)
            if name in INCEPTION_TAPPED:
                feats.append(x)
        return feats

    return extract


def _cache_root():
    from engine.metrics.detector import cache_root

    return cache_root()


def _downloads_allowed():
    # The offline switch the metrics use also keeps projection from reaching the network (tests set it).
    return (os.environ.get("STUDIO_DETECTOR") or "auto").strip().lower() != "offline"


def fetch_vgg16(cache_dir=None, url=VGG_URL, timeout=15.0):
    """Path of NVIDIA's LPIPS VGG16 in the cache, downloaded once when missing; None when it cannot be had.

    A failed download is remembered for a day, so an offline machine does not wait on every projection.
    """
    folder = Path(cache_dir) if cache_dir is not None else _cache_root() / "detectors"
    path = folder / VGG_FILE
    if path.is_file():
        return path
    marker = folder / (VGG_FILE + ".failed")
    try:
        if marker.is_file() and time.time() - marker.stat().st_mtime < 24 * 3600:
            return None
    except OSError:
        pass
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return download(url, path, timeout)
    except Exception:
        try:
            marker.touch()
        except OSError:
            pass
        return None


def _load_vgg(device, download):
    path = _cache_root() / "detectors" / VGG_FILE
    if not path.is_file() and download:
        path = fetch_vgg16() or path
    if not path.is_file():
        return None
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval().to(device)
    except Exception:
        return None
    return LpipsLoss(module)


def make_loss(kind, G, D=None, device="cpu", download=None):
    """The distance for `kind` (one of LOSSES) -> a loss object with .name and .description.

    auto: LPIPS when NVIDIA's VGG16 is cached or can be fetched; offline, the network's own discriminator
    features when the snapshot holds D, else the offline Inception, else pixels.
    """
    kind = str(kind or "auto").strip().lower()
    if kind not in LOSSES:
        raise UserError(f"loss {kind!r} is not one of {', '.join(LOSSES)}")
    if download is None:
        download = _downloads_allowed()
    if kind in ("auto", "lpips"):
        loss = _load_vgg(device, download)
        if loss is not None:
            return loss
        if kind == "lpips":
            raise UserError(f"NVIDIA's LPIPS weights are not in {_cache_root() / 'detectors'} and could not be "
                            f"fetched from {VGG_URL}: use --loss auto (offline choice) or d, inception, pixel")
    if kind in ("auto", "d"):
        if D is not None:
            if int(D.img_resolution) != int(G.img_resolution) or int(D.img_channels) != int(G.img_channels):
                raise UserError("the snapshot's discriminator does not match its generator's image size")
            return FeatureLoss("d", "the network's discriminator features + pixels", discriminator_features(D))
        if kind == "d":
            raise UserError("this network file has no discriminator (an export keeps only G_ema): use a "
                            "training snapshot, or --loss auto, inception or pixel")
    if kind in ("auto", "inception"):
        from engine.metrics.detector import load_detector

        try:
            det = load_detector(device, kind="offline")
        except UserError:
            if kind == "inception":
                raise
            det = None
        if det is not None and hasattr(getattr(det.module, "net", None), "layers"):
            return FeatureLoss("inception", "offline Inception (stem) features + pixels", inception_features(det))
    return PixelLoss()


# --------------------------------------------------------------------------------------------------------------
# The optimisation


@dataclass
class Step:
    """One step of a projection: ws [1, num_ws, w_dim] (without the exploration noise) and the distance."""

    step: int
    num_steps: int
    ws: torch.Tensor
    distance: float
    loss: float


def learning_rate(t, initial=INITIAL_LR):
    """The paper's schedule at t = step / steps in [0, 1)."""
    ramp = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * min(1.0, t / LR_RAMPUP)
    return initial * ramp


def w_statistics(G, class_idx=None, samples=W_AVG_SAMPLES, seed=123456):
    """(w_avg [1, 1, w_dim], w_std scalar): mean of mapped z and the root mean squared distance to it."""
    from engine.generate import class_vector

    device = next(iter(G.parameters())).device
    rng = np.random.RandomState(seed)
    z = torch.from_numpy(rng.randn(samples, G.z_dim)).to(device, torch.float32)
    with torch.no_grad():
        if int(G.c_dim) > 0 and class_idx is None:
            c = torch.zeros([samples, G.c_dim], device=device)
            c[torch.arange(samples), torch.from_numpy(rng.randint(0, G.c_dim, samples)).to(device)] = 1
        else:
            c = class_vector(G, class_idx, samples, device)
        w = torch.cat([G.mapping(z[i:i + 2000], c[i:i + 2000])[:, :1] for i in range(0, samples, 2000)])
    w_avg = w.mean(0, keepdim=True)
    w_std = float((w - w_avg).square().sum() / samples) ** 0.5
    return w_avg, w_std


def _noise_buffers(G):
    return [buf for name, buf in G.synthesis.named_buffers() if name.endswith("noise_const")]


def _noise_regularisation(bufs):
    reg = 0.0
    for v in bufs:
        v = v[None, None, :, :]
        while True:
            reg = reg + (v * torch.roll(v, shifts=1, dims=3)).mean().square()
            reg = reg + (v * torch.roll(v, shifts=1, dims=2)).mean().square()
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, kernel_size=2)
    return reg


def project(G, target, steps=1000, space="w", loss=None, seed=0, class_idx=None, initial_lr=INITIAL_LR,
            should_stop=None):
    """Yield a Step per optimisation step of projecting `target` (np uint8 [R, R, C]) into G.

    G is copied first (its noise maps are optimised), so the caller's network is left as it was; the returned
    iterator's `.G` is that copy, which renders the result with the optimised noise.
    should_stop: optional callable; when it returns True the projection ends after the current step.
    """
    return _Projection(G, target, steps, space, loss, seed, class_idx, initial_lr, should_stop)


class _Projection:
    """Iterator of Steps; .G is the working copy of the generator (with the optimised noise maps)."""

    def __init__(self, G, target, steps, space, loss, seed, class_idx, initial_lr, should_stop):
        steps = int(steps)
        if not 1 <= steps <= MAX_STEPS:
            raise UserError(f"steps {steps} is out of range: use 1..{MAX_STEPS}")
        if space not in ("w", "w+"):
            raise UserError(f"projection space {space!r} is not w or w+")
        self.G = copy.deepcopy(G).eval().requires_grad_(False)
        self.device = next(iter(self.G.parameters())).device
        target = np.asarray(target)
        want = (int(G.img_resolution), int(G.img_resolution), int(G.img_channels))
        if target.shape != want:
            raise UserError(f"target is {target.shape[1]}x{target.shape[0]} with {target.shape[-1]} channels; "
                            f"this network needs {want[0]}x{want[1]} with {want[2]}")
        self.target = image_to_tensor(target, self.device)
        self.loss = loss if loss is not None else PixelLoss()
        self.steps, self.space, self.initial_lr, self.should_stop = steps, space, initial_lr, should_stop
        self.seed = int(seed)
        self.class_idx = class_idx

    def __iter__(self):
        G, steps = self.G, self.steps
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        w_avg, w_std = w_statistics(G, self.class_idx, seed=self.seed + 123456)
        num_ws = int(G.num_ws)
        start = w_avg if self.space == "w" else w_avg.repeat(1, num_ws, 1)
        w_opt = start.clone().detach().requires_grad_(True)
        bufs = _noise_buffers(G)
        with torch.no_grad():
            for b in bufs:
                b.copy_(torch.randn(b.shape, generator=gen).to(b.device))
        for b in bufs:
            b.requires_grad_(True)
        opt = torch.optim.Adam([w_opt] + bufs, betas=(0.9, 0.999), lr=self.initial_lr)
        force_fp32 = self.device.type != "cuda"
        try:
            for step in range(steps):
                t = step / steps
                noise_scale = w_std * W_NOISE_SCALE * max(0.0, 1.0 - t / W_NOISE_RAMP) ** 2
                for group in opt.param_groups:
                    group["lr"] = learning_rate(t, self.initial_lr)
                w_noise = torch.randn(w_opt.shape, generator=gen).to(self.device) * noise_scale
                ws = w_opt + w_noise
                if self.space == "w":
                    ws = ws.repeat(1, num_ws, 1)
                synth = G.synthesis(ws, noise_mode="const", force_fp32=force_fp32)
                dist = self.loss(synth, self.target).sum()
                reg = _noise_regularisation(bufs)
                total = dist + reg * NOISE_REG_WEIGHT
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                with torch.no_grad():
                    for b in bufs:
                        b -= b.mean()
                        b *= b.square().mean().rsqrt()
                out = w_opt.detach()
                out = out.repeat(1, num_ws, 1) if self.space == "w" else out.clone()
                yield Step(step + 1, steps, out, float(dist.detach()), float(total.detach()))
                if self.should_stop is not None and self.should_stop():
                    break
        finally:
            for b in bufs:
                b.requires_grad_(False)


# --------------------------------------------------------------------------------------------------------------
# Quality


def psnr(a, b):
    """Peak signal-to-noise ratio in dB of two np uint8 images of the same shape (inf when identical)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
