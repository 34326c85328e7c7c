"""Training: the StyleGAN2-ADA loop (loop.py) with its process plumbing, snapshots and grids beside it, its loss,
ADA augmentation, presets and run folders."""
