"""StyleGAN2 loss: non-saturating logistic loss, lazy R1 on reals, path-length regularisation, style mixing.

Phases (each a separate optimiser step of the loop):
    Gmain  softplus(-D(G(z)))                                   (non-saturating generator loss)
    Greg   pl_weight * (|J_w^T y| - a)^2 on a batch / pl_batch_shrink, a = running mean of |J_w^T y|
    Gboth  both of the above (when G has no lazy regularisation)
    Dmain  softplus(D(G(z))) + softplus(-D(x))
           [+ lecam * ((D(x) - a_F)^2 + (D(G(z)) - a_R)^2)]       (LeCam, when its weight is above 0)
    Dreg   gamma / 2 * |grad_x D(x)|^2                          (R1)
    Dboth  both of the above
Lazy regularisation: the loop runs Greg/Dreg only every k minibatches and passes gain = k so the penalty keeps
its weight on average.

Two additions for small datasets, both off unless asked for:
- LeCam (Tseng et al., CVPR 2021): a_R and a_F are moving averages (decay 0.99) of D's mean output on the images
  it is told are real and on generated ones, updated at every Dmain pass as soon as that side's outputs are known
  (the term of the other side then uses the newest value). They are training state (snapshots keep them).
- APA (Jiang et al., NeurIPS 2021): in Dmain each real image is replaced, with the controller's probability p, by
  a generated one (no gradient to G), labelled real. The overfitting statistics (ADA's and APA's r_t, the
  Loss/scores/real and Loss/signs/real stats) are taken on the genuine reals only.
"""

import numpy as np
import torch
import torch.nn.functional as F

from engine.train.options import LECAM_DECAY

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")


def _full(x):
    """Half-precision outputs (autocast) back to float32 before losses are formed; other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class StyleGAN2Loss:
    def __init__(self, G, D, augment_pipe=None, r1_gamma=10.0, style_mixing_prob=0.9, pl_weight=2.0,
                 pl_batch_shrink=2, pl_decay=0.01, autocast_dtype=None, stats=None, ada=None, device=None,
                 lecam_weight=0.0, lecam_decay=LECAM_DECAY, apa=None):
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        self.autocast_dtype = autocast_dtype
        self.stats = stats
        self.ada = ada
        self.apa = apa  # an augment.ApaController, or None
        self.lecam_weight = float(lecam_weight)
        self.lecam_decay = float(lecam_decay)
        device = device or next(G.parameters()).device
        self.device = torch.device(device)
        self.pl_mean = torch.zeros([], device=self.device)
        # LeCam's moving averages of D's mean output on reals (a_R) and on generated images (a_F).
        self.lecam_real = torch.zeros([], device=self.device)
        self.lecam_fake = torch.zeros([], device=self.device)
        # Count of non-finite losses since the loop last looked (kept on the device: no synchronisation).
        self.nonfinite = torch.zeros([], dtype=torch.int64, device=self.device)

    # -- helpers ---------------------------------------------------------------------------------------------

    def _autocast(self):
        enabled = self.autocast_dtype is not None
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=enabled)

    def _report(self, name, value):
        if self.stats is not None:
            self.stats.report(name, value)

    def _check(self, loss):
        self.nonfinite += (~torch.isfinite(loss.detach())).sum()

    def run_G(self, z, c, update_emas=False):
        """z [N, z_dim], c [N, c_dim] -> (img [N, C, H, W], ws [N, num_ws, w_dim])."""
        # The mapping network stays in float32 (it is small, and its running mean w_avg is float32); only the
        # synthesis network runs under autocast.
        ws = self.G.mapping(z, c, update_emas=update_emas)
        if self.style_mixing_prob > 0:
            # One cutoff for the batch, chosen without reading it back on the host.
            num_ws = ws.shape[1]
            cutoff = torch.randint(1, num_ws, [], device=ws.device)
            cutoff = torch.where(torch.rand([], device=ws.device) < self.style_mixing_prob, cutoff,
                                 torch.full_like(cutoff, num_ws))
            ws2 = self.G.mapping(torch.randn_like(z), c, update_emas=False)
            mix = (torch.arange(num_ws, device=ws.device) >= cutoff).reshape(1, num_ws, 1)
            ws = torch.where(mix, ws2, ws)
        with self._autocast():
            img = self.G.synthesis(ws, noise_mode="random")
        return _full(img), ws

    def run_D(self, img, c, update_emas=False):
        """img [N, C, H, W] -> logits [N, 1]; the augmentation is applied first."""
        with self._autocast():
            if self.augment_pipe is not None:
                img = self.augment_pipe(img)
            logits = self.D(img, c, update_emas=update_emas)
        return _full(logits)

    def _lecam_update(self, average, logits):
        """Move a LeCam average (a 0-d tensor, in place) towards the mean of logits [N, 1] -> its new value."""
        average.copy_(average.lerp(logits.detach().mean().to(average.dtype), 1 - self.lecam_decay))
        return average

    def _pseudo_reals(self, real_img, real_c, swap):
        """APA: real_img [N, C, H, W] with the images at indices swap [K] replaced by generated ones made for the
        same labels (real_c [N, c_dim]), without a gradient to G."""
        idx = swap.to(real_img.device)
        with torch.no_grad():
            z = torch.randn([idx.shape[0], self.G.z_dim], device=real_img.device)
            fake, _ = self.run_G(z, real_c[idx])
        return real_img.index_copy(0, idx, fake.to(real_img.dtype))

    # -- the loss --------------------------------------------------------------------------------------------

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain=1.0):
        """Backpropagate the loss of `phase` (scaled by gain) into the .grad of the networks' parameters.

        real_img [N, C, H, W] in [-1, 1], real_c [N, c_dim], gen_z [N, z_dim], gen_c [N, c_dim].
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        do_Gmain = phase in ("Gmain", "Gboth")
        do_Dmain = phase in ("Dmain", "Dboth")
        do_Gpl = phase in ("Greg", "Gboth") and self.pl_weight != 0
        do_Dr1 = phase in ("Dreg", "Dboth") and self.r1_gamma != 0

        if do_Gmain:
            gen_img, _ = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c)
            self._report("Loss/scores/fake", gen_logits)
            self._report("Loss/signs/fake", gen_logits.sign())
            loss_Gmain = F.softplus(-gen_logits)
            self._report("Loss/G/loss", loss_Gmain)
            self._check(loss_Gmain)
            loss_Gmain.mean().mul(gain).backward()

        if do_Gpl:
            batch = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            gen_img, gen_ws = self.run_G(gen_z[:batch], gen_c[:batch])
            # Random image-space direction y with unit expected norm per pixel count: E|J^T y| is then
            # independent of the resolution.
            pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
            (pl_grads,) = torch.autograd.grad(outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws],
                                              create_graph=True, only_inputs=True)
            pl_lengths = _full(pl_grads).square().sum(2).mean(1).sqrt()
            pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            pl_penalty = (pl_lengths - pl_mean).square()
            self._report("Loss/pl_penalty", pl_penalty)
            loss_Gpl = pl_penalty * self.pl_weight
            self._report("Loss/G/reg", loss_Gpl)
            self._check(loss_Gpl)
            # The zero term keeps every synthesis parameter in the graph, so each gets a (possibly zero) grad.
            (gen_img[:, 0, 0, 0] * 0 + loss_Gpl).mean().mul(gain).backward()

        loss_Dgen = 0
        lecam = self.lecam_weight > 0
        if do_Dmain:
            gen_img, _ = self.run_G(gen_z, gen_c, update_emas=True)
            gen_logits = self.run_D(gen_img, gen_c, update_emas=True)
            self._report("Loss/scores/fake", gen_logits)
            self._report("Loss/signs/fake", gen_logits.sign())
            loss_Dgen = F.softplus(gen_logits)
            self._check(loss_Dgen)
            loss_Dgen_all = loss_Dgen
            if lecam:
                self._lecam_update(self.lecam_fake, gen_logits)
                lecam_gen = (gen_logits - self.lecam_real).square() * self.lecam_weight
                self._check(lecam_gen)
                loss_Dgen_all = loss_Dgen + lecam_gen
            loss_Dgen_all.mean().mul(gain).backward()

        if do_Dmain or do_Dr1:
            genuine = None  # indices of the images that are still real ones (None: all)
            if do_Dmain and self.apa is not None:
                swap = self.apa.pick(real_img.shape[0])
                if swap.numel() > 0:
                    real_img = self._pseudo_reals(real_img, real_c, swap)
                    mask = torch.ones([real_img.shape[0]], dtype=torch.bool)
                    mask[swap] = False
                    genuine = torch.nonzero(mask).flatten().to(real_img.device)
            real_img_tmp = real_img.detach().requires_grad_(do_Dr1)
            real_logits = self.run_D(real_img_tmp, real_c)
            genuine_logits = real_logits if genuine is None else real_logits.detach()[genuine]
            self._report("Loss/scores/real", genuine_logits)
            self._report("Loss/signs/real", genuine_logits.sign())
            for controller in (self.ada, self.apa):
                if controller is not None:
                    controller.accumulate(genuine_logits)

            loss_Dreal = 0
            if do_Dmain:
                loss_Dreal = F.softplus(-real_logits)
                self._report("Loss/D/loss", loss_Dgen.detach() + loss_Dreal.detach())
                self._check(loss_Dreal)
                if lecam:
                    self._lecam_update(self.lecam_real, real_logits)
                    lecam_real = (real_logits - self.lecam_fake).square() * self.lecam_weight
                    self._check(lecam_real)
                    self._report("Loss/D/lecam", lecam_gen.detach() + lecam_real.detach())
                    loss_Dreal = loss_Dreal + lecam_real

            loss_Dr1 = 0
            if do_Dr1:
                (r1_grads,) = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img_tmp],
                                                  create_graph=True, only_inputs=True)
                r1_penalty = _full(r1_grads).square().sum([1, 2, 3])
                loss_Dr1 = (r1_penalty * (self.r1_gamma / 2)).unsqueeze(1)  # [N, 1] like the logits
                self._report("Loss/r1_penalty", r1_penalty)
                self._report("Loss/D/reg", loss_Dr1)
                self._check(loss_Dr1)

            (real_logits * 0 + loss_Dreal + loss_Dr1).mean().mul(gain).backward()
