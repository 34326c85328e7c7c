"""StyleGAN2 networks with NVIDIA's parameter names, call signatures and numerics."""

from engine.nets.layers import (FullyConnectedLayer, Conv2dLayer, SynthesisLayer, ToRGBLayer, MinibatchStdLayer,
                                modulated_conv2d)
from engine.nets.generator import MappingNetwork, SynthesisBlock, SynthesisNetwork, Generator
from engine.nets.discriminator import DiscriminatorBlock, DiscriminatorEpilogue, Discriminator

__all__ = ["Generator", "Discriminator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
           "ToRGBLayer", "FullyConnectedLayer", "Conv2dLayer", "MinibatchStdLayer", "DiscriminatorBlock",
           "DiscriminatorEpilogue", "modulated_conv2d"]
