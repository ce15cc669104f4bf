"""Conditional GAN (Mirza & Osindero, 2014) on the DCGAN networks: the one-hot digit is appended
to the generator's noise and given to the discriminator as 10 extra constant channels, so
`sample(n, labels)` draws the requested digits."""

from __future__ import annotations

import torch
from pydantic import Field

from trilemma.gan import GAN, GANConfig
from trilemma.nets import dcgan


class Config(GANConfig):
    dropout: float = Field(0.3, ge=0, lt=1)  # in the discriminator


def build(cfg: Config, device: torch.device) -> GAN:
    g = dcgan.Generator(cfg.latent_dim + 10, cfg.width)
    d = dcgan.Discriminator(1 + 10, cfg.width, dropout=cfg.dropout)
    g.apply(dcgan.init_weights)
    d.apply(dcgan.init_weights)
    return GAN(cfg, g, d, device, conditional=True)
