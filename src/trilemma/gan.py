"""The adversarial game shared by every GAN family: it receives a generator and a discriminator
(or critic) and owns the losses, the optimisers, conditioning and sampling; it defines no layers.

Two games: "bce", the non-saturating GAN of Goodfellow et al. (2014) as used by DCGAN, and
"wgan-gp", the Wasserstein critic with a gradient penalty (Gulrajani et al., 2017).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trilemma import distributed, latent
from trilemma.config import TrainConfig
from trilemma.data import ImageSpec
from trilemma.train import adam


class GANConfig(TrainConfig):
    latent_dim: int = Field(100, ge=1)
    width: int = Field(32, ge=4)  # channels (or units) of the first layer; deeper layers double it
    beta1: float = Field(0.5, ge=0, lt=1)  # Adam betas; DCGAN's (0.5, 0.999) by default
    beta2: float = Field(0.999, ge=0, lt=1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[(||grad critic(x_hat)||_2 - 1)^2] at random points x_hat between real and fake samples:
    keeps the critic near 1-Lipschitz, as the Wasserstein distance's dual form requires."""
    eps = distributed.rand(len(real), 1, 1, 1, device=real.device)  # (B,1,1,1)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def pair_state(model: Any) -> dict[str, Any]:
    """The trained state of a model with one generator `g`, one discriminator `d` and their
    optimisers `opt_g` and `opt_d`: the layout of every GAN-like model file."""
    return {"generator": model.g.state_dict(), "discriminator": model.d.state_dict(),
            "opt_g": model.opt_g.state_dict(), "opt_d": model.opt_d.state_dict()}


def load_pair_state(model: Any, state: dict[str, Any]) -> None:
    """Restore what `pair_state` saved."""
    model.g.load_state_dict(state["generator"])
    model.d.load_state_dict(state["discriminator"])
    model.opt_g.load_state_dict(state["opt_g"])
    model.opt_d.load_state_dict(state["opt_d"])


class GAN:
    knobs = ("truncation",)  # sampling settings from params `sample` this family honours

    def __init__(self, cfg: GANConfig, generator: nn.Module, discriminator: nn.Module,
                 device: torch.device, image: ImageSpec, *, conditional: bool = False,
                 game: Literal["bce", "wgan-gp"] = "bce", n_critic: int = 1, gp_weight: float = 10.0):
        self.cfg, self.device, self.image, self.conditional = cfg, device, image, conditional
        self.num_classes = image.num_classes  # the width of the one-hot label
        self.latent_dim = cfg.latent_dim
        self.game, self.n_critic, self.gp_weight = game, n_critic, gp_weight
        # channels_last: DCGAN's convolutions train 1.2-1.7x faster on a CPU (oneDNN), and it is
        # the tensor-core layout on a GPU
        self.g = generator.to(device, memory_format=torch.channels_last)
        self.d = discriminator.to(device, memory_format=torch.channels_last)
        self.nets = {"generator": self.g, "discriminator": self.d}
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
        if self.game == "bce":
            d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            logs = {"d_real": torch.sigmoid(d_real).mean(), "d_fake": torch.sigmoid(d_fake).mean()}
        else:
            penalty = gradient_penalty(d, real_in, fake_in.detach())
            d_loss = d_fake.mean() - d_real.mean() + self.gp_weight * penalty
            logs = {"wasserstein": d_real.mean() - d_fake.mean(), "gradient_penalty": penalty}
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        logs["d_loss"] = d_loss

        if self.steps % self.n_critic == 0:
            # D's gradients from this backward are discarded (its next zero_grad): not synced
            with distributed.no_sync(d):
                score = d(fake_in)
                g_loss = (F.binary_cross_entropy_with_logits(score, torch.ones_like(score))
                          if self.game == "bce" else -score.mean())  # non-saturating / critic
                self.opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
            self.opt_g.step()
            logs["g_loss"] = g_loss
        self.steps += 1
        return {k: v.detach() for k, v in logs.items()}

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (n,L) [+ classes (n,)] -> float images (n,C,S,S) in [0,1], differentiable
        w.r.t. z (latent steering). BatchNorm in eval mode, so an image does not depend on the
        rest of its batch."""
        if self.conditional and labels is None:
            labels = torch.arange(len(z)) % self.num_classes
        training = self.g.training
        self.g.eval()
        z = z.to(self.device)
        out = self.g(self._g_input(z, None if labels is None else labels.to(self.device)))
        self.g.train(training)
        return ((out + 1) / 2).clamp(0, 1)  # tanh range [-1,1] -> [0,1]

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (n,L) [+ classes (n,)] -> uint8 images (n,C,S,S): `decode`, rounded."""
        return self.decode(z, labels).mul(255).round().to(torch.uint8)

    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None,
               truncation: float | None = None) -> torch.Tensor:
        return self.generate(latent.noise(n, self.latent_dim, generator, truncation), labels)

    def figures(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {**pair_state(self), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_pair_state(self, state)
        self.steps = state["steps"]
