"""SRGAN (Ledig et al., 2017) on factor-x area-downsampled digits: a residual generator with
sub-pixel upsampling, a PatchGAN, and a perceptual loss = pixel MSE + content loss + a small
adversarial weight. The content loss compares the *judge's* penultimate features of output and
target where the paper used VGG-19's: our classifier stands in for VGG (frozen, never trained
here), so the generator is pushed towards digits the judge reads as the right ones."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from trilemma import distributed, gan_losses
from trilemma.classifier import Judge
from trilemma.data import ImageSpec
from trilemma.errors import ConfigError
from trilemma.i2i import nets
from trilemma.i2i.base import (GeneratorDiscriminatorPair, I2IConfig, check_image, prepare,
                               translate_with)
from trilemma.i2i.tasks import super_resolution_task
from trilemma.train import adam



class Config(I2IConfig):
    factor: Literal[2, 4] = 4  # 28 -> 7 -> 28: the classic 4x setting
    blocks: int = Field(4, ge=0)  # residual blocks at the low resolution
    pixel_weight: float = Field(1.0, ge=0)  # MSE in pixels
    content_weight: float = Field(0.1, ge=0)  # MSE between the judge's features
    adversarial_weight: float = Field(0.001, ge=0)  # the paper's 1e-3


class SRGAN(GeneratorDiscriminatorPair):
    def __init__(self, cfg: Config, device: torch.device, image: ImageSpec, judge: Judge):
        check_image("srgan", image, cfg.factor)
        self.cfg, self.device, self.image = cfg, device, image
        self.task = super_resolution_task(cfg.factor)
        self.g = prepare(nets.SRResNet(image.channels, cfg.width, cfg.blocks, cfg.factor), device)
        self.d = prepare(nets.PatchGAN(image.channels, cfg.width), device)
        self.nets = {"generator": self.g, "discriminator": self.d}
        self.judge = judge.to(device).eval().requires_grad_(False)  # frozen: not in `nets`
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = adam(self.g.parameters(), cfg.lr, betas)
        self.opt_d = adam(self.d.parameters(), cfg.lr, betas)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        g, d = self.nets["generator"], self.nets["discriminator"]
        inputs, target = self.task.pair(x)  # (B,1,S/f,S/f), (B,1,S,S)
        fake = g(inputs)  # (B,1,S,S)
        d_loss = gan_losses.nonsaturating_d(d(target), d(fake.detach()))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        with distributed.no_sync(d):
            adversarial = gan_losses.nonsaturating_g(d(fake))
            pixel = F.mse_loss(fake, target)
            with torch.no_grad():
                wanted = self.judge.features(target)  # (B,F)
            content = F.mse_loss(self.judge.features(fake), wanted)
            cfg = self.cfg
            g_loss = (cfg.pixel_weight * pixel + cfg.content_weight * content
                      + cfg.adversarial_weight * adversarial)
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
        self.opt_g.step()
        return {k: v.detach() for k, v in {"d_loss": d_loss, "g_adversarial": adversarial,
                                           "pixel_mse": pixel, "content": content,
                                           "g_loss": g_loss}.items()}

    def translate(self, inputs: torch.Tensor) -> torch.Tensor:
        return translate_with(self.g, inputs, self.device)


def build(cfg: Config, device: torch.device, image: ImageSpec, judge: Judge | None = None) -> SRGAN:
    if judge is None:
        raise ConfigError("srgan: its content loss needs the judge (models/classifier.pt); run "
                          "`trilemma train-classifier` first")
    return SRGAN(cfg, device, image, judge)
