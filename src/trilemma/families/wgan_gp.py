"""WGAN-GP (Gulrajani et al., 2017) on the DCGAN networks: a critic without BatchNorm (LayerNorm,
so the gradient penalty sees each sample alone), penalty weight 10 on random interpolates,
n_critic critic steps per generator step, Adam(1e-4, betas 0.0/0.9) as in the paper."""

from __future__ import annotations

import torch
from pydantic import Field

from trilemma.data import ImageSpec
from trilemma.gan import GAN, GANConfig
from trilemma.nets import dcgan


class Config(GANConfig):
    lr: float = Field(1e-4, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)
    n_critic: int = Field(5, ge=1)  # critic steps per generator step
    gp_weight: float = Field(10.0, ge=0)  # lambda
    layer_norm: bool = True  # in the critic; false: no normalisation at all


def build(cfg: Config, device: torch.device, image: ImageSpec) -> GAN:
    g = dcgan.Generator(cfg.latent_dim, cfg.width, image.channels, image.size)
    critic = dcgan.Discriminator(image.channels, cfg.width, layer_norm=cfg.layer_norm,
                                 size=image.size)
    g.apply(dcgan.init_weights)
    critic.apply(dcgan.init_weights)
    return GAN(cfg, g, critic, device, image, game="wgan-gp", n_critic=cfg.n_critic,
               gp_weight=cfg.gp_weight)
