"""Training: the StyleGAN2-ADA loop (loop.py), its loss, ADA augmentation, presets and run folders."""
