"""Adaptive discriminator augmentation (ADA): the augmentation pipeline of Karras et al. 2020 and its p controller.

Every operation is applied to a sample with probability p * strength, drawn per sample, and every operation is
differentiable with respect to the images, so the generator learns through the augmented images and R1 sees
augmented reals. The order is the paper's:

    geometric (x-flip, 90-degree rotation, integer translation, isotropic scaling, rotation, anisotropic scaling,
               fractional translation): the first three move whole pixels and are executed exactly (an index
               gather, reflecting at the borders); the others form one affine transform per sample, executed
               once on a padded, 2x-upsampled (Symlet-6 lowpass) image, then 2x-downsampled with the same filter
    colour    (brightness, contrast, luma flip, hue rotation, saturation): one 4x4 colour matrix per sample
    image-space filtering (gains on 4 frequency bands), additive noise, cutout.

The images are [N, C, H, W] in about [-1, 1] with C = 1 or 3.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.ops.filters import band_filters, symlet_lowpass
from engine.train.options import ADA_TARGET, APA_TARGET

def _matrix(rows, n, device):
    elems = []
    for row in rows:
        for v in row:
            if not torch.is_tensor(v):
                v = torch.full([n], float(v), device=device)
            elems.append(v.to(torch.float32))
    return torch.stack(elems, dim=-1).reshape(n, len(rows), len(rows[0]))


def translate2d(tx, ty, n, device):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n, device)


def scale2d(sx, sy, n, device):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], n, device)


def rotate2d(theta, n, device):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], n, device)


def translate3d(tx, ty, tz, n, device):
    return _matrix([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]], n, device)


def scale3d(sx, sy, sz, n, device):
    return _matrix([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], n, device)


def rotate3d(axis, theta, n, device):
    """Rotation by theta [N] about the unit vector axis (3 floats), Rodrigues' formula."""
    x, y, z = axis
    c, s = torch.cos(theta), torch.sin(theta)
    t = 1 - c
    return _matrix([
        [c + x * x * t, x * y * t - z * s, x * z * t + y * s, 0],
        [y * x * t + z * s, c + y * y * t, y * z * t - x * s, 0],
        [z * x * t - y * s, z * y * t + x * s, c + z * z * t, 0],
        [0, 0, 0, 1]], n, device)


# ---------------------------------------------------------------------------------------------------------------
# Presets of NVIDIA's train.py --augpipe

_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)

PIPES = {
    "blit": dict(_BLIT),
    "geom": dict(_GEOM),
    "color": dict(_COLOR),
    "filter": dict(imgfilter=1),
    "noise": dict(noise=1),
    "cutout": dict(cutout=1),
    "bg": dict(**_BLIT, **_GEOM),
    "bgc": dict(**_BLIT, **_GEOM, **_COLOR),
    "bgcf": dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1),
    "bgcfn": dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1, noise=1),
    "bgcfnc": dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1, noise=1, cutout=1),
}


def pipe_kwargs(name):
    """Strengths of the preset `name` (blit, geom, color, filter, noise, cutout, bg, bgc, bgcf, bgcfn, bgcfnc)."""
    if name not in PIPES:
        raise UserError(f"--augpipe {name!r} is not a known pipeline; choose one of {', '.join(PIPES)}")
    return dict(PIPES[name])


# ---------------------------------------------------------------------------------------------------------------


class AugmentPipe(torch.nn.Module):
    """The ADA pipeline. `p` (a python float, set by the trainer) scales every operation's probability.

    forward(images [N, C, H, W]) -> augmented images [N, C, H, W].
    """

    def __init__(self, xflip=0, rotate90=0, xint=0, xint_max=0.125,
                 scale=0, rotate=0, aniso=0, xfrac=0, scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0,
                 brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,
                 imgfilter=0, imgfilter_bands=(1, 1, 1, 1), imgfilter_std=1,
                 noise=0, cutout=0, noise_std=0.1, cutout_size=0.5):
        super().__init__()
        self.p = 0.0
        self.init_kwargs = dict(
            xflip=xflip, rotate90=rotate90, xint=xint, xint_max=xint_max, scale=scale, rotate=rotate, aniso=aniso,
            xfrac=xfrac, scale_std=scale_std, rotate_max=rotate_max, aniso_std=aniso_std, xfrac_std=xfrac_std,
            brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue, saturation=saturation,
            brightness_std=brightness_std, contrast_std=contrast_std, hue_max=hue_max, saturation_std=saturation_std,
            imgfilter=imgfilter, imgfilter_bands=list(imgfilter_bands), imgfilter_std=imgfilter_std,
            noise=noise, cutout=cutout, noise_std=noise_std, cutout_size=cutout_size)
        for key, value in self.init_kwargs.items():
            setattr(self, key, value)
        # Separable 1-D filter normalised to unit sum (upfirdn2d's convention); being an orthogonal wavelet's
        # lowpass, 2x upsampling followed by 2x downsampling with it is the identity.
        sym6 = symlet_lowpass(6)
        self.register_buffer("geom_filter", torch.tensor(sym6 / sym6.sum(), dtype=torch.float32), persistent=False)
        # Offset (input pixels) between where upsample2d/downsample2d centre the filter and its delay at low
        # frequencies; apply_affine() undoes it around the transform. The Symlet's phase is not linear, so its
        # delay grows towards the top of the band and no single shift makes a mirror through the resampler exact
        # for every image: with this one, smooth images mirror unshifted, while sharp 32 px emoji come out
        # 0.0188 mean absolute from the exact mirror and closer to it rolled by +1 px than by -1 px (0.105 vs
        # 0.120). Flips, quarter turns and integer moves therefore never go through the resampler (apply_blit).
        self.geom_delay = (float(np.sum(np.arange(len(sym6)) * sym6) / np.sum(sym6)) - (len(sym6) - 1) / 2) / 2
        self.register_buffer("band_filters", torch.tensor(band_filters(), dtype=torch.float32), persistent=False)
        # Natural images keep most of their power in the lowest band; normalising by this expected spectrum keeps
        # the overall contrast roughly constant whatever the band gains are.
        self.register_buffer("band_power", torch.tensor([10.0, 1.0, 1.0, 1.0]) / 13.0, persistent=False)

    # -- helpers -------------------------------------------------------------------------------------------------

    def _gate(self, value, default, prob):
        """Keep `value` for samples drawn with probability prob, `default` elsewhere (value: [N] or [N, k])."""
        if prob >= 1:
            return value
        keep = torch.rand([value.shape[0]], device=value.device) < prob
        keep = keep.reshape([-1] + [1] * (value.ndim - 1))
        return torch.where(keep, value, torch.full_like(value, default))

    @property
    def uses_geometry(self):
        return any(getattr(self, k) > 0 for k in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac"))

    @property
    def uses_color(self):
        return any(getattr(self, k) > 0 for k in ("brightness", "contrast", "lumaflip", "hue", "saturation"))

    # -- forward ---------------------------------------------------------------------------------------------

    def forward(self, images):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"AugmentPipe expects [N, 1|3, H, W] images, got {list(images.shape)}")
        p = float(self.p)
        if p <= 0:
            return images
        if self.uses_geometry:
            images = self._geometric(images, p)
        if self.uses_color:
            images = self._color(images, p)
        if self.imgfilter > 0:
            images = self._filter(images, p)
        if self.noise > 0:
            images = self._noise(images, p)
        if self.cutout > 0:
            images = self._cutout(images, p)
        return images

    def _geometric(self, images, p):
        n, _, h, w = images.shape
        dev = images.device
        # Inverse transforms map output coordinates to input coordinates. Coordinates are in input pixels, relative
        # to the image centre, y pointing down. Each op with forward transform A appends A^-1 on the right. The
        # whole-pixel ops come first, so G_inv = B_inv @ C_inv: out(u) = in(B_inv C_inv u), i.e. the image is
        # first moved exactly by B (no filtering), then resampled by C.
        B_inv = torch.eye(3, device=dev).expand(n, 3, 3)
        if self.xflip > 0:
            i = torch.floor(torch.rand([n], device=dev) * 2)
            i = self._gate(i, 0, p * self.xflip)
            B_inv = B_inv @ scale2d(1 - 2 * i, 1, n, dev)
        if self.rotate90 > 0:
            i = torch.floor(torch.rand([n], device=dev) * 4)
            i = self._gate(i, 0, p * self.rotate90)
            B_inv = B_inv @ rotate2d(-math.pi / 2 * i, n, dev)
        if self.xint > 0:
            t = (torch.rand([n, 2], device=dev) * 2 - 1) * self.xint_max
            t = self._gate(t, 0, p * self.xint)
            B_inv = B_inv @ translate2d(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h), n, dev)

        C_inv = torch.eye(3, device=dev).expand(n, 3, 3)
        if self.scale > 0:
            s = torch.exp2(torch.randn([n], device=dev) * self.scale_std)
            s = self._gate(s, 1, p * self.scale)
            C_inv = C_inv @ scale2d(1 / s, 1 / s, n, dev)
        # Rotation is split in two (before and after the anisotropic scaling) so that the combined probability of
        # any rotation is p * rotate.
        p_rot = 1 - math.sqrt(min(max(1 - self.rotate * p, 0), 1))
        if self.rotate > 0:
            theta = (torch.rand([n], device=dev) * 2 - 1) * math.pi * self.rotate_max
            theta = self._gate(theta, 0, p_rot)
            C_inv = C_inv @ rotate2d(-theta, n, dev)
        if self.aniso > 0:
            s = torch.exp2(torch.randn([n], device=dev) * self.aniso_std)
            s = self._gate(s, 1, p * self.aniso)
            C_inv = C_inv @ scale2d(1 / s, s, n, dev)
        if self.rotate > 0:
            theta = (torch.rand([n], device=dev) * 2 - 1) * math.pi * self.rotate_max
            theta = self._gate(theta, 0, p_rot)
            C_inv = C_inv @ rotate2d(-theta, n, dev)
        if self.xfrac > 0:
            t = torch.randn([n, 2], device=dev) * self.xfrac_std
            t = self._gate(t, 0, p * self.xfrac)
            C_inv = C_inv @ translate2d(-t[:, 0] * w, -t[:, 1] * h, n, dev)

        moved = self.apply_blit(images, B_inv)
        if moved is None:  # not whole pixels on this image shape: resample everything together
            return self.apply_affine(images, B_inv @ C_inv)
        eye = torch.eye(3, device=dev)
        if bool((C_inv - eye).abs().amax() < 1e-7):
            return moved
        return self.apply_affine(moved, C_inv)

    def apply_blit(self, images, B_inv):
        """Move images [N, C, H, W] by whole pixels: out(u) = in(B_inv @ u) for B_inv [N, 3, 3] made of flips,
        quarter turns and integer translations, reflecting at the borders -> [N, C, H, W], or None when the
        source positions are not whole pixels (a quarter turn of an image whose width and height differ in
        parity). An index gather: exact, and differentiable with respect to the images."""
        n, c, h, w = images.shape
        dev = images.device
        xs = torch.arange(w, device=dev, dtype=torch.float32) - (w - 1) / 2
        ys = torch.arange(h, device=dev, dtype=torch.float32) - (h - 1) / 2
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([gx.flatten(), gy.flatten(), torch.ones(h * w, device=dev)])  # [3, H*W]
        src = B_inv.to(torch.float32) @ coords  # [N, 3, H*W]
        sx = src[:, 0] + (w - 1) / 2
        sy = src[:, 1] + (h - 1) / 2
        ix, iy = torch.round(sx), torch.round(sy)
        if bool(((sx - ix).abs().amax() > 1e-3) | ((sy - iy).abs().amax() > 1e-3)):
            return None
        idx = _reflect_index(iy.to(torch.int64), h) * w + _reflect_index(ix.to(torch.int64), w)  # [N, H*W]
        flat = images.reshape(n, c, h * w)
        return flat.gather(2, idx.unsqueeze(1).expand(n, c, h * w)).reshape(n, c, h, w)

    def apply_affine(self, images, G_inv):
        """Resample images [N, C, H, W] at G_inv [N, 3, 3] @ (output pixel centre); reflect padding outside."""
        from engine.ops.grid_sample import grid_sample
        from engine.ops.upfirdn2d import downsample2d, upsample2d

        n, c, h, w = images.shape
        dev = images.device
        hz = self.geom_filter
        q = hz.shape[0] // 4  # border (input pixels) that the 12-tap filter at 2x resolution reaches

        # The output is sampled on a 2x grid that extends q pixels beyond the image on each side; the final
        # downsampling reads that border and crops it.
        ew, eh = w + 2 * q, h + 2 * q
        corners = torch.tensor([[-ew / 2, -eh / 2, 1], [ew / 2, -eh / 2, 1], [ew / 2, eh / 2, 1],
                                [-ew / 2, eh / 2, 1]], device=dev).t()
        src = (G_inv @ corners)[:, :2, :]  # [N, 2, 4]
        lo = src.amin(dim=(0, 2))
        hi = src.amax(dim=(0, 2))
        need = torch.stack([-w / 2 - lo[0], hi[0] - w / 2, -h / 2 - lo[1], hi[1] - h / 2]) + q + 0.5
        need = need.clamp(min=0).ceil().to(torch.int64).tolist()
        mx0, mx1 = (min(v, w - 1) for v in need[:2])
        my0, my1 = (min(v, h - 1) for v in need[2:])

        images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
        pw, ph = w + mx0 + mx1, h + my0 + my1
        images = upsample2d(images, hz, up=2)

        # affine_grid's normalised coordinates (align_corners=False) are centred coordinates divided by half the
        # extent of the image, which makes the change of frame a pair of scalings around the centring shift.
        # The Symlet is not symmetric: its delay at low frequencies is not the (taps - 1) / 2 that upsample2d
        # and downsample2d centre on, which shifts the upsampled image by +delta and the downsampled one by
        # -delta. Conjugating G_inv with that shift makes flips and rotations land on whole pixels.
        delta = self.geom_delay
        theta = (scale2d(2 / pw, 2 / ph, n, dev) @ translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, n, dev)
                 @ translate2d(delta, delta, n, dev) @ G_inv @ translate2d(-delta, -delta, n, dev)
                 @ scale2d(ew / 2, eh / 2, n, dev))
        grid = F.affine_grid(theta[:, :2, :].to(images.dtype), [n, c, 2 * eh, 2 * ew], align_corners=False)
        images = grid_sample(images, grid)
        return downsample2d(images, hz, down=2, padding=-2 * q, flip_filter=True)

    def _color(self, images, p):
        n, c, h, w = images.shape
        dev = images.device
        C = torch.eye(4, device=dev).expand(n, 4, 4)
        luma = torch.tensor([1.0, 1.0, 1.0, 0.0], device=dev) / math.sqrt(3)
        luma_outer = torch.outer(luma, luma)

        if self.brightness > 0:
            b = torch.randn([n], device=dev) * self.brightness_std
            b = self._gate(b, 0, p * self.brightness)
            C = translate3d(b, b, b, n, dev) @ C
        if self.contrast > 0:
            s = torch.exp2(torch.randn([n], device=dev) * self.contrast_std)
            s = self._gate(s, 1, p * self.contrast)
            C = scale3d(s, s, s, n, dev) @ C
        if self.lumaflip > 0:
            i = torch.floor(torch.rand([n], device=dev) * 2)
            i = self._gate(i, 0, p * self.lumaflip)
            C = (torch.eye(4, device=dev) - 2 * luma_outer * i.reshape(n, 1, 1)) @ C
        if self.hue > 0 and c == 3:
            theta = (torch.rand([n], device=dev) * 2 - 1) * math.pi * self.hue_max
            theta = self._gate(theta, 0, p * self.hue)
            C = rotate3d(luma[:3].tolist(), theta, n, dev) @ C
        if self.saturation > 0 and c == 3:
            s = torch.exp2(torch.randn([n], device=dev) * self.saturation_std)
            s = self._gate(s, 1, p * self.saturation)
            C = (luma_outer + (torch.eye(4, device=dev) - luma_outer) * s.reshape(n, 1, 1)) @ C

        C = C.to(images.dtype)
        flat = images.reshape(n, c, h * w)
        if c == 3:
            flat = C[:, :3, :3] @ flat + C[:, :3, 3:]
        else:
            # A grey pixel g is the colour (g, g, g); the result is brought back to grey by averaging.
            gain = C[:, :3, :3].sum(dim=2).mean(dim=1).reshape(n, 1, 1)
            offset = C[:, :3, 3].mean(dim=1).reshape(n, 1, 1)
            flat = flat * gain + offset
        return flat.reshape(n, c, h, w)

    def _filter(self, images, p):
        n, c, h, w = images.shape
        dev = images.device
        bands = self.band_filters.shape[0]
        gains = torch.ones([n, bands], device=dev)
        for i, strength in enumerate(self.imgfilter_bands):
            if strength <= 0:
                continue
            t_i = torch.exp2(torch.randn([n], device=dev) * self.imgfilter_std)
            t_i = self._gate(t_i, 1, p * self.imgfilter * strength)
            t = torch.ones([n, bands], device=dev)
            t[:, i] = t_i
            t = t / (self.band_power * t.square()).sum(dim=1, keepdim=True).sqrt()
            gains = gains * t
        kernel = (gains @ self.band_filters).to(images.dtype)  # [N, taps]
        taps = kernel.shape[1]
        kernel = kernel.repeat_interleave(c, dim=0)  # one filter per (sample, channel)
        x = images.reshape(1, n * c, h, w)
        x = _pad_reflect(x, taps // 2)
        x = F.conv2d(x, kernel.reshape(n * c, 1, 1, taps), groups=n * c)
        x = F.conv2d(x, kernel.reshape(n * c, 1, taps, 1), groups=n * c)
        return x.reshape(n, c, h, w)

    def _noise(self, images, p):
        n = images.shape[0]
        sigma = torch.randn([n, 1, 1, 1], device=images.device).abs() * self.noise_std
        sigma = self._gate(sigma, 0, p * self.noise)
        return images + torch.randn_like(images) * sigma.to(images.dtype)

    def _cutout(self, images, p):
        n, _, h, w = images.shape
        dev = images.device
        size = torch.full([n, 1, 1, 1], float(self.cutout_size), device=dev)
        size = self._gate(size, 0, p * self.cutout)
        centre = torch.rand([n, 2, 1, 1], device=dev)
        xs = ((torch.arange(w, device=dev) + 0.5) / w).reshape(1, 1, 1, w)
        ys = ((torch.arange(h, device=dev) + 0.5) / h).reshape(1, 1, h, 1)
        keep = ((xs - centre[:, :1]).abs() >= size / 2) | ((ys - centre[:, 1:]).abs() >= size / 2)
        return images * keep.to(images.dtype)


def _reflect_index(i, size):
    """Indices (any integers) folded into [0, size) by mirroring at the borders without repeating the edge pixel,
    as F.pad(mode='reflect') does, repeatedly for indices far outside."""
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= size, period - i, i)


def _pad_reflect(x, pad):
    """Reflect padding that also works when pad >= the image size (reflects repeatedly)."""
    while pad > 0:
        step = min(pad, x.shape[2] - 1, x.shape[3] - 1)
        if step <= 0:
            return F.pad(x, [pad] * 4, mode="replicate")
        x = F.pad(x, [step] * 4, mode="reflect")
        pad -= step
    return x


def make_pipe(name, **overrides):
    """An AugmentPipe for the preset `name` (see PIPES)."""
    kwargs = pipe_kwargs(name)
    kwargs.update(overrides)
    return AugmentPipe(**kwargs)


# ---------------------------------------------------------------------------------------------------------------


class AdaController:
    """Moves p towards the overfitting target from the sign of D's logits on reals (r_t = E[sign(D(real))]).

    Every `interval` minibatches p changes by sign(r_t - target) * (batch * interval) / (speed_kimg * 1000), so
    it can go from 0 to 1 in speed_kimg thousand images; it is kept within [0, 1].
    """

    def __init__(self, pipe, target=ADA_TARGET, interval=4, speed_kimg=500, batch_size=32, device="cpu"):
        self.pipe = pipe
        self.target = float(target)
        self.interval = int(interval)
        self.speed_kimg = float(speed_kimg)
        self.batch_size = int(batch_size)
        # [sum of signs, count]; kept on the device so accumulating never waits for it
        self.acc = torch.zeros([2], dtype=torch.float64, device=device)
        self.last_rt = None

    def accumulate(self, real_logits):
        """real_logits: [N, 1] D outputs on (augmented) reals of this rank."""
        signs = torch.sign(real_logits.detach()).to(torch.float64)
        self.acc += torch.stack([signs.sum(), torch.tensor(float(signs.numel()), dtype=torch.float64,
                                                             device=signs.device)])

    def update(self, totals):
        """totals: this interval's [sum, count] summed over ranks (python floats); adjusts pipe.p."""
        total, count = totals
        self.acc.zero_()
        if count <= 0:
            return self.pipe.p
        self.last_rt = total / count
        step = self.batch_size * self.interval / (self.speed_kimg * 1000)
        direction = (self.last_rt > self.target) - (self.last_rt < self.target)
        self.pipe.p = float(min(max(self.pipe.p + direction * step, 0.0), 1.0))
        return self.pipe.p

    def state_dict(self):
        """p and this rank's [sum, count] of the interval under way (snapshots keep the latter per rank)."""
        return {"p": float(self.pipe.p), "acc": self.acc.detach().cpu().clone(), "target": self.target,
                "interval": self.interval, "speed_kimg": self.speed_kimg}

    def load_state_dict(self, state):
        """Restore p, and the [sum, count] where the state has one (a resume with another number of processes
        has none for this rank: the interval then starts afresh)."""
        self.pipe.p = float(state["p"])
        if state.get("acc") is not None:
            self.acc.copy_(state["acc"].to(self.acc))


class _Probability:
    """What an ApaController moves instead of a pipe's p."""

    def __init__(self):
        self.p = 0.0


class ApaController(AdaController):
    """Adaptive pseudo augmentation (Jiang et al., NeurIPS 2021): in D's main step each real image is replaced,
    with probability p, by a generated one (no gradient to G) that D is told is real, which keeps D from becoming
    too sure of the training images. p starts at 0 and moves exactly as ADA's does, from r_t = E[sign(D(real))]
    of the real images D saw, towards its own target; it is training state, saved in snapshots.
    """

    def __init__(self, target=APA_TARGET, interval=4, speed_kimg=500, batch_size=32, device="cpu"):
        super().__init__(_Probability(), target=target, interval=interval, speed_kimg=speed_kimg,
                         batch_size=batch_size, device=device)

    @property
    def p(self):
        return self.pipe.p

    def pick(self, n):
        """Which of n real images to replace: int64 indices [K] (CPU), each image with probability p, drawn from
        torch's CPU stream (saved with the snapshot). At p = 0 nothing is drawn, so a run whose p has not risen
        yet is the run without APA."""
        if self.pipe.p <= 0:
            return torch.zeros([0], dtype=torch.int64)
        return torch.nonzero(torch.rand([n]) < self.pipe.p).flatten()
