"""Import of NVIDIA's StyleGAN2 network files, rebuilt as our networks (which keep NVIDIA's names).

    unpickler  - reads NVIDIA's pickles through an allow-list, so nothing a file embeds is ever run
    pytorch    - stylegan2-ada-pytorch and stylegan3 --cfg=stylegan2 pickles -> our Generator/Discriminator
    tf         - TF-era pickles (StyleGAN2, StyleGAN2-ADA TensorFlow) -> the same, with weights converted

engine.checkpoint.load_network is the one way in: it recognises the file and hands it to this package.
"""
