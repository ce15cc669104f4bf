"""Classifier-free guided diffusion (Ho & Salimans, 2022): the DDPM U-Net also sees the class,
replaced by a "no label" token with probability `label_dropout`, so one net learns both the
conditional and the unconditional noise prediction; sampling mixes them with scale w
(`sample.guidance`)."""

from __future__ import annotations

import torch
from pydantic import Field

from trilemma.data import ImageSpec
from trilemma.denoising import Diffusion, DiffusionConfig
from trilemma.families._checks import require_labels, require_patch_divides
from trilemma.nets.unet import UNet


class Config(DiffusionConfig):
    label_dropout: float = Field(0.1, ge=0, le=1)  # share of training labels replaced by "none"


def build(cfg: Config, device: torch.device, image: ImageSpec) -> Diffusion:
    require_labels("cfg_diffusion", image)
    require_patch_divides("cfg_diffusion", cfg.patch, image)
    net = UNet(cfg.widths, cfg.blocks, cfg.attention, cfg.dropout, classes=image.num_classes,
               channels=image.channels, patch=cfg.patch)
    return Diffusion(cfg, net, device, image, conditional=True, label_dropout=cfg.label_dropout)
