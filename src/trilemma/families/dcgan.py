"""DCGAN (Radford et al., 2015): transposed-conv generator with BatchNorm, conv discriminator with
LeakyReLU and dropout, N(0, 0.02) initialisation, Adam(2e-4, betas 0.5/0.999), BCE game."""

from __future__ import annotations

import torch
from pydantic import Field

from trilemma.data import ImageSpec
from trilemma.gan import GAN, GANConfig
from trilemma.nets import dcgan


class Config(GANConfig):
    dropout: float = Field(0.3, ge=0, lt=1)  # in the discriminator


def build(cfg: Config, device: torch.device, image: ImageSpec) -> GAN:
    g = dcgan.Generator(cfg.latent_dim, cfg.width, image.channels, image.size)
    d = dcgan.Discriminator(image.channels, cfg.width, dropout=cfg.dropout, size=image.size)
    g.apply(dcgan.init_weights)
    d.apply(dcgan.init_weights)
    return GAN(cfg, g, d, device, image)
