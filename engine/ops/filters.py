"""Filter design in numpy: the Symlet lowpass that the augmentation resamples with (and the ops check
exercises) and the augmentation's band-split filter bank. No torch: both are plain coefficient lists."""

import itertools
import math
from math import comb

import numpy as np


def symlet_lowpass(order):
    """Decomposition lowpass of the Symlet wavelet of the given order: 2*order taps summing to sqrt(2).

    Daubechies' construction: |H(w)|^2 = cos^2(w/2)^order * P(sin^2(w/2)); every root of P gives a pair of
    z-roots (r, 1/r) of which either may go into H. Symlets take the choice whose phase is the most linear.
    """
    poly = [comb(order - 1 + k, k) for k in range(order)]
    y_roots = list(np.roots(poly[::-1]))
    groups = []  # conjugate y-roots must choose the same side to keep the filter real
    while y_roots:
        y = y_roots.pop(0)
        if abs(y.imag) > 1e-9:
            j = min(range(len(y_roots)), key=lambda k: abs(y_roots[k] - np.conj(y)))
            groups.append([y, y_roots.pop(j)])
        else:
            groups.append([y.real])
    freqs = np.linspace(0.05, 0.95 * np.pi, 256)
    basis = np.stack([freqs, np.ones_like(freqs)], axis=1)
    best = None
    for choice in itertools.product([0, 1], repeat=len(groups)):
        h = np.array([1.0])
        for _ in range(order):
            h = np.convolve(h, [1.0, 1.0])
        for group, side in zip(groups, choice):
            for y in group:
                z = sorted(np.roots([1.0, -(2.0 - 4.0 * y), 1.0]), key=abs)[side]
                h = np.convolve(h, [1.0, -z])
        h = np.real(h)
        h = h / h.sum() * math.sqrt(2.0)
        response = np.exp(-1j * np.outer(freqs, np.arange(len(h)))) @ h
        phase = np.unwrap(np.angle(response))
        fit = np.linalg.lstsq(basis, phase, rcond=None)[0]
        score = float(np.sum((phase - basis @ fit) ** 2))
        if best is None or score < best[0]:
            best = (score, h)
    return best[1]


def band_filters():
    """Four linear-phase filters [4, 15] splitting the spectrum at pi/8, pi/4 and pi/2; they sum to a delta.

    Built from the halfband [1, 2, 1]/4 by the a-trous scheme: lowpasses at pi/2, pi/4 and pi/8 and their
    differences. Gains of 1 on all bands therefore leave an image unchanged.
    """
    half = np.array([1.0, 2.0, 1.0]) / 4.0

    def dilate(f, k):
        out = np.zeros((len(f) - 1) * k + 1)
        out[::k] = f
        return out

    low1 = half
    low2 = np.convolve(low1, dilate(half, 2))
    low3 = np.convolve(low2, dilate(half, 4))
    taps = len(low3)

    def centred(f):
        pad = (taps - len(f)) // 2
        return np.pad(f, (pad, pad))

    delta = centred(np.array([1.0]))
    bank = [centred(low3), centred(low2) - centred(low3), centred(low1) - centred(low2), delta - centred(low1)]
    return np.stack(bank)


# ---------------------------------------------------------------------------------------------------------------
# Batched matrices: every element is a python number or a [N] tensor.
