"""The adversarial game shared by every GAN family: it receives a generator and a discriminator
(or critic) and owns the optimisers, the critic schedule, conditioning and sampling; it defines no
layers, and its losses come from `trilemma.gan_losses` by name: "non-saturating" (Goodfellow et
al., 2014, as used by DCGAN) or "wasserstein" with a gradient penalty (WGAN-GP, Gulrajani et al.,
2017), optionally ProGAN's drift term; "hinge" and "least-squares" are there too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trilemma import distributed, ema, gan_losses, latent
from trilemma.config import TrainConfig
from trilemma.data import ImageSpec
from trilemma.train import adam


class GANConfig(TrainConfig):
    latent_dim: int = Field(100, ge=1)
    width: int = Field(32, ge=4)  # channels (or units) of the first layer; deeper layers double it
    beta1: float = Field(0.5, ge=0, lt=1)  # Adam betas; DCGAN's (0.5, 0.999) by default
    beta2: float = Field(0.999, ge=0, lt=1)
    ema_decay: ema.Decay = None  # sampling uses this EMA of G; null or 0: off


def pair_state(model: Any) -> dict[str, Any]:
    """The trained state of a model with one generator `g`, one discriminator `d` and their
    optimisers `opt_g` and `opt_d` (and the generator's EMA when it keeps one, `ema`): the layout
    of every GAN-like model file."""
    state = {"generator": model.g.state_dict(), "discriminator": model.d.state_dict(),
             "opt_g": model.opt_g.state_dict(), "opt_d": model.opt_d.state_dict()}
    if getattr(model, "ema", None) is not None:
        state["generator_ema"] = model.ema.net.state_dict()
    return state


def load_pair_state(model: Any, state: dict[str, Any]) -> None:
    """Restore what `pair_state` saved."""
    model.g.load_state_dict(state["generator"])
    model.d.load_state_dict(state["discriminator"])
    model.opt_g.load_state_dict(state["opt_g"])
    model.opt_d.load_state_dict(state["opt_d"])
    if getattr(model, "ema", None) is not None:
        model.ema.net.load_state_dict(state["generator_ema"])


class GAN(latent.Decoded):
    knobs = ("truncation",)  # sampling settings from params `sample` this family honours

    def __init__(self, cfg: GANConfig, generator: nn.Module, discriminator: nn.Module,
                 device: torch.device, image: ImageSpec, *, conditional: bool = False,
                 loss: str = "non-saturating", n_critic: int = 1, gp_weight: float = 0.0,
                 eps_drift: float = 0.0):
        self.cfg, self.device, self.image, self.conditional = cfg, device, image, conditional
        self.num_classes = image.num_classes  # the width of the one-hot label
        self.latent_dim = cfg.latent_dim
        self.loss = gan_losses.LOSSES[loss]
        self.n_critic, self.gp_weight, self.eps_drift = n_critic, gp_weight, eps_drift
        # channels_last: DCGAN's convolutions train 1.2-1.7x faster on a CPU (oneDNN), and it is
        # the tensor-core layout on a GPU
        self.g = generator.to(device, memory_format=torch.channels_last)
        self.d = discriminator.to(device, memory_format=torch.channels_last)
        self.nets = {"generator": self.g, "discriminator": self.d}
        self.ema = ema.maybe(self.g, cfg.ema_decay)  # None: the trained generator samples
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = adam(self.g.parameters(), cfg.lr, betas)
        self.opt_d = adam(self.d.parameters(), cfg.lr, betas)
        self.steps = 0  # discriminator steps taken; the generator steps every n_critic-th

    def _g_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """(B,L) noise, with the one-hot label appended for a conditional GAN: (B,L+K), K the
        number of classes."""
        if not self.conditional:
            return z
        return torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)

    def _d_input(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """(B,C,S,S) images, with the one-hot label as K constant channels: (B,C+K,S,S)."""
        if not self.conditional:
            return x
        maps = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None] \
            .expand(-1, -1, *x.shape[2:])  # (B,K,S,S)
        return torch.cat([x, maps], dim=1)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        g, d = self.nets["generator"], self.nets["discriminator"]  # DDP-wrapped under torchrun
        real = x * 2 - 1  # (B,C,S,S) in [-1,1], the generator's tanh range
        z = distributed.randn(len(x), self.latent_dim, device=x.device)
        fake = g(self._g_input(z, y))  # fakes get the batch's labels: same label distribution
        real_in, fake_in = self._d_input(real, y), self._d_input(fake, y)

        d_real, d_fake = d(real_in), d(fake_in.detach())  # (B,) each
        d_loss = self.loss.discriminator(d_real, d_fake)
        logs = gan_losses.score_logs(self.loss, d_real, d_fake)
        if self.gp_weight > 0:
            logs["gradient_penalty"] = gan_losses.gradient_penalty(d, real_in, fake_in.detach())
            d_loss = d_loss + self.gp_weight * logs["gradient_penalty"]
        if self.eps_drift > 0:  # keeps the critic's scores near 0 (ProGAN)
            logs["drift"] = gan_losses.drift(d_real)
            d_loss = d_loss + self.eps_drift * logs["drift"]
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        logs["d_loss"] = d_loss

        if self.steps % self.n_critic == 0:
            # D's gradients from this backward are discarded (its next zero_grad): not synced
            with distributed.no_sync(d):
                g_loss = self.loss.generator(d(fake_in))
                self.opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
            self.opt_g.step()
            if self.ema is not None:
                self.ema.update(self.g, self.steps // self.n_critic)
            logs["g_loss"] = g_loss
        self.steps += 1
        return {k: v.detach() for k, v in logs.items()}

    @property
    def g_sampling(self) -> nn.Module:
        """The generator that samples, decodes (steering) and draws figures: the EMA of the
        trained one when the family keeps one."""
        return self.g if self.ema is None else self.ema.net

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (n,L) [+ classes (n,)] -> float images (n,C,S,S) in [0,1], differentiable
        w.r.t. z (latent steering). BatchNorm in eval mode, so an image does not depend on the
        rest of its batch."""
        if self.conditional and labels is None:
            labels = torch.arange(len(z)) % self.num_classes
        g = self.g_sampling
        training = g.training
        g.eval()
        z = z.to(self.device)
        out = g(self._g_input(z, None if labels is None else labels.to(self.device)))
        g.train(training)
        return ((out + 1) / 2).clamp(0, 1)  # tanh range [-1,1] -> [0,1]

    def figures(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {**pair_state(self), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_pair_state(self, state)
        self.steps = state["steps"]
