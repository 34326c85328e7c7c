"""StyleGAN Studio engine: StyleGAN2-ADA networks, data preparation, training and generation."""

from engine.errors import UserError

__all__ = ["UserError", "load_network"]


def load_network(path, device="cpu"):
    """Load a network file (our .pt, NVIDIA's PyTorch or TF-era .pkl) -> {'G', 'D', 'G_ema', ...}."""
    from engine.checkpoint import load_network as _load

    return _load(path, device=device)
