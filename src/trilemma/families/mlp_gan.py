"""MLP GAN: fully connected generator and discriminator, the non-saturating BCE game
(Goodfellow et al., 2014), with a 100-d Gaussian latent."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from trilemma.data import ImageSpec
from trilemma.gan import GAN, GANConfig


class Config(GANConfig):
    width: int = Field(256, ge=4)  # generator layers w, 2w, 4w; discriminator 4w, 2w
    dropout: float = Field(0.3, ge=0, lt=1)  # in the discriminator


def generator_net(latent_dim: int, w: int, image: ImageSpec) -> nn.Module:
    """(B,L) -> (B,C,S,S) in [-1,1]."""
    c, s = image.channels, image.size
    return nn.Sequential(
        nn.Linear(latent_dim, w), nn.LeakyReLU(0.2),
        nn.Linear(w, 2 * w), nn.BatchNorm1d(2 * w), nn.LeakyReLU(0.2),
        nn.Linear(2 * w, 4 * w), nn.BatchNorm1d(4 * w), nn.LeakyReLU(0.2),
        nn.Linear(4 * w, c * s * s), nn.Tanh(), nn.Unflatten(1, (c, s, s)),
    )


class Discriminator(nn.Module):
    """(B,C,S,S) -> (B,) logits."""

    def __init__(self, w: int, dropout: float, image: ImageSpec):
        super().__init__()
        pixels = image.channels * image.size * image.size
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(pixels, 4 * w), nn.LeakyReLU(0.2), nn.Dropout(dropout),
            nn.Linear(4 * w, 2 * w), nn.LeakyReLU(0.2), nn.Dropout(dropout),
            nn.Linear(2 * w, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def build(cfg: Config, device: torch.device, image: ImageSpec) -> GAN:
    return GAN(cfg, generator_net(cfg.latent_dim, cfg.width, image),
               Discriminator(cfg.width, cfg.dropout, image), device, image)
