"""Small utilities shared by the networks and the trainer."""

import numbers

import numpy as np
import torch


def plain_data(obj):
    """A copy of obj made of dict / list / str / int / float / bool / None only (for init_kwargs and snapshots).

    Tuples become lists, dict subclasses (EasyDict) plain dicts, numpy scalars Python numbers.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain_data(obj.tolist())
    if isinstance(obj, torch.Tensor) and obj.numel() == 1 and obj.ndim == 0:
        return obj.item()
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    raise TypeError(f"not plain data: {type(obj).__name__}")


def assert_shape(tensor, ref_shape, what="tensor"):
    """Check tensor.shape against ref_shape, where None matches any size."""
    if tensor.ndim != len(ref_shape):
        raise ValueError(f"{what}: expected {len(ref_shape)} dimensions {list(ref_shape)}, got {list(tensor.shape)}")
    for size, ref in zip(tensor.shape, ref_shape):
        if ref is not None and size != ref:
            raise ValueError(f"{what}: expected shape {list(ref_shape)} (None = any), got {list(tensor.shape)}")


def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """Scale x so that the mean of its squares along `dim` is 1. [N, F] -> [N, F]."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
