"""Fused multiply-add a * b + c with broadcasting."""

import torch


def fma(a, b, c):
    """a * b + c in one pass; shapes broadcast as in ordinary torch arithmetic.

    torch.addcmul is differentiable to any order, so R1 (a gradient of a gradient) works through it.
    """
    return torch.addcmul(c, a, b)
