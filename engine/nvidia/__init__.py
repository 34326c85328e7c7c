"""Import of NVIDIA's StyleGAN2 network files, rebuilt as our networks (which keep NVIDIA's names).

    unpickler  - reads NVIDIA's pickles through an allow-list, so nothing a file embeds is ever run
    pytorch    - stylegan2-ada-pytorch and stylegan3 --cfg=stylegan2 pickles -> our Generator/Discriminator
    tf         - TF-era pickles (StyleGAN2, StyleGAN2-ADA TensorFlow) -> the same, with weights converted
    tf_export  - the way out: our networks -> a TF-era pickle that NVIDIA's legacy.load_network_pkl converts

engine.checkpoint.load_network is the one way in: it recognises the file and hands it to this package;
engine.export (`export --format nvidia-pkl`) writes through tf_export.
"""
