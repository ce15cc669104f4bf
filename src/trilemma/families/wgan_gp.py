"""WGAN-GP (Gulrajani et al., 2017) on the DCGAN networks: a critic without BatchNorm (LayerNorm,
so the gradient penalty sees each sample alone), penalty weight 10 on random interpolates,
n_critic critic steps per generator step, Adam(1e-4, betas 0.0/0.9) as in the paper.

ProGAN's variant (Karras et al., 2018) is one setting away: n_critic 1 with the drift term
eps_drift * E[D(real)^2], which keeps the critic's scores near 0 now that it is not trained to
its optimum between generator steps; every step then trains the generator."""

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
    eps_drift: float = Field(0.0, ge=0)  # weight of E[D(real)^2] (ProGAN's 0.001); 0: off
    layer_norm: bool = True  # in the critic; false: no normalisation at all


def build(cfg: Config, device: torch.device, image: ImageSpec) -> GAN:
    g = dcgan.Generator(cfg.latent_dim, cfg.width, image.channels, image.size)
    critic = dcgan.Discriminator(image.channels, cfg.width, layer_norm=cfg.layer_norm,
                                 size=image.size)
    g.apply(dcgan.init_weights)
    critic.apply(dcgan.init_weights)
    return GAN(cfg, g, critic, device, image, loss="wasserstein", n_critic=cfg.n_critic,
               gp_weight=cfg.gp_weight, eps_drift=cfg.eps_drift)
