"""DDPM (Ho et al., 2020): a U-Net predicts the noise added to an image at a random step t of a
fixed forward process; sampling runs the reverse process with the EMA weights, as DDPM (ancestral)
or DDIM (Song et al., 2021) on any number of steps."""

from __future__ import annotations

import torch

from trilemma.data import ImageSpec
from trilemma.denoising import Diffusion, DiffusionConfig
from trilemma.families._checks import require_patch_divides
from trilemma.nets.unet import UNet


class Config(DiffusionConfig):
    pass


def build(cfg: Config, device: torch.device, image: ImageSpec) -> Diffusion:
    require_patch_divides("ddpm", cfg.patch, image)
    net = UNet(cfg.widths, cfg.blocks, cfg.attention, cfg.dropout, channels=image.channels,
               patch=cfg.patch)
    return Diffusion(cfg, net, device, image)
