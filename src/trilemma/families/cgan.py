"""Conditional GAN (Mirza & Osindero, 2014) on the DCGAN networks: the one-hot class is appended
to the generator's noise and given to the discriminator as one extra constant channel per class,
so `sample(n, labels)` draws the requested classes."""

from __future__ import annotations

import torch
from pydantic import Field

from trilemma.data import ImageSpec
from trilemma.families._checks import require_labels
from trilemma.gan import GAN, GANConfig
from trilemma.nets import dcgan


class Config(GANConfig):
    dropout: float = Field(0.3, ge=0, lt=1)  # in the discriminator


def build(cfg: Config, device: torch.device, image: ImageSpec) -> GAN:
    require_labels("cgan", image)
    k = image.num_classes
    g = dcgan.Generator(cfg.latent_dim + k, cfg.width, image.channels, image.size)
    d = dcgan.Discriminator(image.channels + k, cfg.width, dropout=cfg.dropout, size=image.size)
    g.apply(dcgan.init_weights)
    d.apply(dcgan.init_weights)
    return GAN(cfg, g, d, device, image, conditional=True)
