"""Kernel Inception Distance (Bińkowski et al. 2018), computed the way NVIDIA's metrics compute it.

KID is the squared MMD between real and generated features under the polynomial kernel
k(x, y) = (x . y / d + 1)^3, d the feature dimension. Each of `num_subsets` rounds draws m items from each
set without replacement, m = min(#real, #generated, max_subset_size), and takes the unbiased estimate

    1/(m(m-1)) sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)]  -  2/m^2 sum_{i, j} k(x_i, y_j)

the reported value being the mean over rounds.
"""

import numpy as np


def polynomial_kernel(a, b):
    """a: [M, D], b: [K, D] -> [M, K] of (a . b / D + 1)^3."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def kid_from_features(real_features, gen_features, num_subsets=100, max_subset_size=1000, seed=0):
    """[N, D], [M, D] -> KID (float). `seed` fixes which subsets are drawn."""
    real = np.asarray(real_features, dtype=np.float64)
    gen = np.asarray(gen_features, dtype=np.float64)
    m = min(real.shape[0], gen.shape[0], max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 real and 2 generated images")
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = gen[rng.choice(gen.shape[0], m, replace=False)]
        y = real[rng.choice(real.shape[0], m, replace=False)]
        within = polynomial_kernel(x, x) + polynomial_kernel(y, y)
        across = polynomial_kernel(x, y)
        total += (within.sum() - np.trace(within)) / (m * (m - 1)) - 2 * across.sum() / (m * m)
    return float(total / num_subsets)
