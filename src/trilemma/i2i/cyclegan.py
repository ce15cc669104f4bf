"""CycleGAN (Zhu et al., 2017) between digits (domain A) and digits with thickened strokes (B),
trained unpaired: each batch is split into two disjoint halves, one seen as A and the other
thickened as B (`tasks.unpaired_halves`), so no digit is ever shown with its own translation.
Two U-Net generators (the paper used ResNet ones; U-Nets suit 28x28), two PatchGANs, least-squares
adversarial losses as in the paper, cycle-consistency and identity L1 terms. The paper's replay
buffer of past fakes is left out."""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from pydantic import Field

from trilemma import distributed, gan_losses
from trilemma.data import ImageSpec
from trilemma.i2i import nets
from trilemma.i2i.base import I2IConfig, check_image, prepare, translate_with
from trilemma.i2i.tasks import thicken_task, unpaired_halves
from trilemma.train import adam


class Config(I2IConfig):
    batch_size: int = Field(ge=2)  # split in two halves, one per domain
    depth: int = Field(2, ge=1, le=5)  # U-Net halvings
    cycle_weight: float = Field(10.0, ge=0)  # the paper's lambda
    identity_weight: float = Field(5.0, ge=0)  # the paper's 0.5 lambda


def _critic_loss(d: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Half the least-squares loss of D on real (-> 1) and fake (-> 0) images, in one call."""
    scores = d(torch.cat([real, fake]))
    return 0.5 * gan_losses.least_squares_d(scores[:len(real)], scores[len(real):])


class CycleGAN:
    def __init__(self, cfg: Config, device: torch.device, image: ImageSpec):
        check_image("cyclegan", image, 2 ** cfg.depth)
        self.cfg, self.device, self.image, self.task = cfg, device, image, thicken_task()
        c = image.channels
        self.g_ab = prepare(nets.UNet(c, c, cfg.width, cfg.depth), device)  # digit -> thick
        self.g_ba = prepare(nets.UNet(c, c, cfg.width, cfg.depth), device)  # thick -> digit
        self.d_a = prepare(nets.PatchGAN(c, cfg.width), device)
        self.d_b = prepare(nets.PatchGAN(c, cfg.width), device)
        self.nets = {"g_ab": self.g_ab, "g_ba": self.g_ba, "d_a": self.d_a, "d_b": self.d_b}
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = adam(chain(self.g_ab.parameters(), self.g_ba.parameters()), cfg.lr, betas)
        self.opt_d = adam(chain(self.d_a.parameters(), self.d_b.parameters()), cfg.lr, betas)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.nets
        a, other = unpaired_halves(x)  # (B/2,1,S,S) each, different digits
        _, b = self.task.pair(other)  # thickened: domain B
        half = len(a)
        # each generator runs on everything it maps at once: one call for fakes and identities
        fake_a, same_a = n["g_ba"](torch.cat([b, a])).split(half)
        fake_b, same_b = n["g_ab"](torch.cat([a, b])).split(half)
        with distributed.no_sync(n["d_a"]), distributed.no_sync(n["d_b"]):
            adversarial = (gan_losses.least_squares_g(n["d_b"](fake_b))
                           + gan_losses.least_squares_g(n["d_a"](fake_a)))
            back_a, back_b = n["g_ba"](fake_b), n["g_ab"](fake_a)
            cycle = (back_a - a).abs().mean() + (back_b - b).abs().mean()
            identity = (same_a - a).abs().mean() + (same_b - b).abs().mean()
            g_loss = (adversarial + self.cfg.cycle_weight * cycle
                      + self.cfg.identity_weight * identity)
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
        self.opt_g.step()

        d_loss = (_critic_loss(n["d_a"], a, fake_a.detach())
                  + _critic_loss(n["d_b"], b, fake_b.detach()))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        return {k: v.detach() for k, v in {"d_loss": d_loss, "g_adversarial": adversarial,
                                           "cycle": cycle, "identity": identity,
                                           "g_loss": g_loss}.items()}

    def translate(self, inputs: torch.Tensor) -> torch.Tensor:
        """Domain A (digits) -> B (thick strokes)."""
        return translate_with(self.g_ab, inputs, self.device)

    def translate_back(self, inputs: torch.Tensor) -> torch.Tensor:
        """Domain B -> A."""
        return translate_with(self.g_ba, inputs, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {**{k: net.state_dict() for k, net in self._plain().items()},
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, net in self._plain().items():
            net.load_state_dict(state[k])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    def _plain(self) -> dict[str, torch.nn.Module]:
        return {"g_ab": self.g_ab, "g_ba": self.g_ba, "d_a": self.d_a, "d_b": self.d_b}


def build(cfg: Config, device: torch.device, image: ImageSpec) -> CycleGAN:
    return CycleGAN(cfg, device, image)
