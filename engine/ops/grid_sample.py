"""Bilinear grid sampling (zeros padding, align_corners=False), differentiable twice.

ADA's geometric augmentations sample through a grid, and R1 differentiates the discriminator's
gradient w.r.t. the (augmented) real images, so the sampler needs a second derivative.
"""

import torch
import torch.nn.functional as F

_builtin_ok = None


def _builtin_supports_double_backward():
    """torch's own sampler is much faster; use it where its second derivative exists (checked once)."""
    global _builtin_ok
    if _builtin_ok is None:
        try:
            # A private generator: the probe must not move the global RNG stream (exact training resume).
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(1, 1, 3, 3, dtype=torch.float64, generator=gen).requires_grad_(True)
            g = (torch.rand(1, 2, 2, 2, dtype=torch.float64, generator=gen) * 2 - 1).requires_grad_(True)
            y = F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=False)
            (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
            gx.sum().backward()
            ref = grid_sample_reference(x.detach().requires_grad_(True), g.detach())
            _builtin_ok = bool(torch.allclose(ref, y.detach(), atol=1e-10)) and x.grad is not None
        except RuntimeError:
            _builtin_ok = False
    return _builtin_ok


def grid_sample(input, grid):
    """input: [N, C, H, W]; grid: [N, Ho, Wo, 2] with (x, y) in [-1, 1] -> [N, C, Ho, Wo]."""
    if _builtin_supports_double_backward():
        return F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return grid_sample_reference(input, grid)


def grid_sample_reference(input, grid):
    """The same sampling written with gathers, so autograd derives it to any order.

    input: [N, C, H, W]; grid: [N, Ho, Wo, 2] -> [N, C, Ho, Wo].
    """
    n, c, h, w = input.shape
    _, ho, wo, _ = grid.shape
    grid = grid.to(input.dtype)
    # align_corners=False: -1 and 1 are the outer edges of the corner pixels.
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    x0 = torch.floor(ix.detach())
    y0 = torch.floor(iy.detach())
    tx = ix - x0
    ty = iy - y0
    x0 = x0.long()
    y0 = y0.long()
    flat = input.reshape(n, c, h * w)
    out = 0
    for dy, wy in ((0, 1 - ty), (1, ty)):
        for dx, wx in ((0, 1 - tx), (1, tx)):
            xi = x0 + dx
            yi = y0 + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(n, 1, ho * wo).expand(n, c, ho * wo)
            v = flat.gather(2, idx).reshape(n, c, ho, wo)
            out = out + v * (wx * wy * inside.to(input.dtype)).unsqueeze(1)
    return out
