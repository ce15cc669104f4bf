"""DDPM (Ho et al., 2020): a U-Net predicts the noise added to an image at a random step t of a
fixed forward process; sampling runs the reverse process with the EMA weights, as DDPM (ancestral)
or DDIM (Song et al., 2021) on any number of steps."""

from __future__ import annotations

import torch

from trilemma.denoising import Diffusion, DiffusionConfig
from trilemma.nets.unet import UNet


class Config(DiffusionConfig):
    pass


def build(cfg: Config, device: torch.device) -> Diffusion:
    net = UNet(cfg.widths, cfg.blocks, cfg.attention, cfg.dropout, patch=cfg.patch)
    return Diffusion(cfg, net, device)
