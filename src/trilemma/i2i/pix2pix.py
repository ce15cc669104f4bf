"""pix2pix (Isola et al., 2017) on edges -> digit: a U-Net generator and a PatchGAN that sees
the input beside the real or generated digit; loss adversarial + lambda * L1. The generator's
dropout noise is left out: translation is deterministic (the paper found the noise ignored)."""

from __future__ import annotations

import torch
from pydantic import Field

from trilemma import distributed, gan_losses
from trilemma.data import ImageSpec
from trilemma.i2i import nets
from trilemma.i2i.base import (GeneratorDiscriminatorPair, I2IConfig, check_image, prepare,
                               translate_with)
from trilemma.i2i.tasks import edges_task
from trilemma.train import adam


class Config(I2IConfig):
    l1_weight: float = Field(100.0, ge=0)  # lambda of the L1 term (the paper's 100)
    depth: int = Field(2, ge=1, le=5)  # U-Net halvings: 28 -> 14 -> 7


class Pix2Pix(GeneratorDiscriminatorPair):
    def __init__(self, cfg: Config, device: torch.device, image: ImageSpec):
        check_image("pix2pix", image, 2 ** cfg.depth)
        self.cfg, self.device, self.image, self.task = cfg, device, image, edges_task()
        self.g = prepare(nets.UNet(image.channels, image.channels, cfg.width, cfg.depth), device)
        self.d = prepare(nets.PatchGAN(2 * image.channels, cfg.width), device)  # input + digit
        self.nets = {"generator": self.g, "discriminator": self.d}
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = adam(self.g.parameters(), cfg.lr, betas)
        self.opt_d = adam(self.d.parameters(), cfg.lr, betas)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        g, d = self.nets["generator"], self.nets["discriminator"]
        inputs, target = self.task.pair(x)  # (B,1,S,S) edges, (B,1,S,S) digits
        fake = g(inputs)
        # the paper halves D's loss so that it learns slower than G
        d_loss = 0.5 * gan_losses.nonsaturating_d(d(torch.cat([inputs, target], 1)),
                                                  d(torch.cat([inputs, fake.detach()], 1)))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        with distributed.no_sync(d):  # D's gradients from G's loss are discarded
            adversarial = gan_losses.nonsaturating_g(d(torch.cat([inputs, fake], 1)))
            l1 = (fake - target).abs().mean()
            g_loss = adversarial + self.cfg.l1_weight * l1
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
        self.opt_g.step()
        return {k: v.detach() for k, v in {"d_loss": d_loss, "g_adversarial": adversarial,
                                           "l1": l1, "g_loss": g_loss}.items()}

    def translate(self, inputs: torch.Tensor) -> torch.Tensor:
        return translate_with(self.g, inputs, self.device)


def build(cfg: Config, device: torch.device, image: ImageSpec) -> Pix2Pix:
    return Pix2Pix(cfg, device, image)
