"""Progressive GAN (Karras et al., 2018): G and D grow from the base grid to the full size by
doublings (MNIST: 7 -> 14 -> 28), each new resolution faded in with an alpha rising from 0 to 1;
equalized learning rate, pixel norm and minibatch stddev in `nets.progan`; Adam(betas 0/0.99).

The schedule: `resolution_steps` optimisation steps at each resolution below the full size, the
first `fade_steps` of them fading the new one in; the full size keeps the rest (until epochs or
max_steps end training). Level and alpha are functions of the step counter alone, which the state
dict holds: a resume mid-fade continues exactly, and torchrun ranks agree.
Under torchrun the blocks of levels not yet (or no longer) in use get no gradient, which
DistributedDataParallel cannot follow from step to step: both nets say so (`partial`), stay
unwrapped, and the step averages their gradients across ranks itself.

EMA: with `ema_decay` set, sampling, decoding (steering) and the growth figure use an
exponential moving average of the generator's weights, as the paper samples (decay 0.999).

Games: "wgan-gp", the paper's (WGAN-GP, n_critic 1, drift penalty eps_drift * E[D(real)^2] that
keeps the critic's scores near 0), or "logistic", the non-saturating GAN loss.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from trilemma import distributed, ema, gan_losses, latent, pixels
from trilemma.config import TrainConfig
from trilemma.data import ImageSpec
from trilemma.errors import ConfigError
from trilemma.figures import image_table
from trilemma.gan import load_pair_state, pair_state
from trilemma.nets import progan
from trilemma.torchrun import log
from trilemma.train import adam


class Config(TrainConfig):
    lr: float = Field(1e-3, gt=0)  # the paper's
    latent_dim: int = Field(128, ge=1)
    width: int = Field(32, ge=4)  # channels at the full size; doubled per halving of the grid
    max_width: int = Field(256, ge=4)  # cap on the channels near the base grid
    resolution_steps: int = Field(2000, ge=1)  # steps at each resolution below the full size
    fade_steps: int = Field(1000, ge=0)  # the first this many of them fade the new one in
    loss: Literal["wgan-gp", "logistic"] = "wgan-gp"
    gp_weight: float = Field(10.0, ge=0)  # wgan-gp: lambda
    eps_drift: float = Field(0.001, ge=0)  # wgan-gp: weight of E[D(real)^2]
    mbstd_group: int = Field(4, ge=1)  # minibatch stddev group size (shrinks to divide the batch)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    ema_decay: ema.Decay = None  # sampling uses this EMA of G; null or 0: off


def phase(step: int, levels: int, resolution_steps: int, fade_steps: int) -> tuple[int, float]:
    """(level, alpha) at optimisation step `step` (from 0): level l (resolution base * 2**l) runs
    from step l * resolution_steps, the last level to the end; alpha rises linearly from 0 to 1
    over a new level's first `fade_steps` steps and is 1 otherwise (and always at level 0)."""
    level = min(step // resolution_steps, levels - 1)
    into = step - level * resolution_steps
    alpha = 1.0 if level == 0 or into >= fade_steps else into / fade_steps
    return level, alpha


def resize_real(x: torch.Tensor, size: int, alpha: float) -> torch.Tensor:
    """Real images (B,C,S,S) average-pooled to (B,C,size,size); while a level fades in (alpha < 1)
    blended with their 2x down-and-up version, so reals change as smoothly as G's output."""
    x = F.avg_pool2d(x, x.shape[-1] // size) if x.shape[-1] != size else x
    if alpha >= 1:
        return x
    coarse = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    return torch.lerp(coarse, x, alpha)


class ProGAN(latent.Decoded):  # generate, sample: decode latents of the prior
    conditional = False
    knobs = ("truncation",)

    def __init__(self, cfg: Config, g: progan.Generator, d: progan.Discriminator,
                 device: torch.device, image: ImageSpec):
        self.cfg, self.device, self.image = cfg, device, image
        self.latent_dim, self.levels = cfg.latent_dim, g.levels
        self.g = g.to(device, memory_format=torch.channels_last)
        self.d = d.to(device, memory_format=torch.channels_last)
        self.nets = {"generator": self.g, "discriminator": self.d}
        self.ema = ema.maybe(self.g, cfg.ema_decay)  # None: the trained generator samples
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = adam(self.g.parameters(), cfg.lr, betas)
        self.opt_d = adam(self.d.parameters(), cfg.lr, betas)
        self.steps = 0  # optimisation steps taken: the schedule's clock
        # the paper's WGAN-GP critic, or the logistic D of the non-saturating loss
        self.loss = gan_losses.LOSSES["wasserstein" if cfg.loss == "wgan-gp" else "non-saturating"]

    def plan(self, total_steps: int) -> None:
        """`fit` says how many steps the run takes: one that ends before the full size is faded
        in trains and samples at a lower resolution, which a comparison must not take silently."""
        cfg, top = self.cfg, self.levels - 1
        level, alpha = phase(max(total_steps - 1, 0), self.levels, cfg.resolution_steps,
                             cfg.fade_steps)
        if (level, alpha) != (top, 1.0):
            size = self.resolution(level)
            fading = f", fading in (alpha {alpha:.2f})" if alpha < 1 else ""
            log(f"warning: progan: the run's {total_steps} steps end at {size}x{size}{fading}; "
                f"{self.image.size}x{self.image.size} is faded in after step "
                f"{top * cfg.resolution_steps + cfg.fade_steps} ({top} x resolution_steps + "
                f"fade_steps)")

    def phase(self) -> tuple[int, float]:
        """(level, alpha) of the next step: the nets as trained so far."""
        return phase(self.steps, self.levels, self.cfg.resolution_steps, self.cfg.fade_steps)

    def resolution(self, level: int) -> int:
        return self.image.size >> (self.levels - 1 - level)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        g, d = self.nets["generator"], self.nets["discriminator"]  # DDP-wrapped under torchrun
        level, alpha = self.phase()
        real = resize_real(x * 2 - 1, self.resolution(level), alpha)  # (B,C,R,R) in [-1,1]
        z = distributed.randn(len(x), self.latent_dim, device=x.device)
        fake = g(z, level, alpha)  # (B,C,R,R)

        d_real, d_fake = d(real, level, alpha), d(fake.detach(), level, alpha)  # (B,) each
        d_loss = self.loss.discriminator(d_real, d_fake)
        logs = gan_losses.score_logs(self.loss, d_real, d_fake)
        if self.cfg.loss == "wgan-gp":
            penalty = gan_losses.gradient_penalty(lambda v: d(v, level, alpha), real, fake.detach())
            d_loss = (d_loss + self.cfg.gp_weight * penalty
                      + self.cfg.eps_drift * gan_losses.drift(d_real))
            logs["gradient_penalty"] = penalty
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        distributed.average_gradients(self.d)  # torchrun: not DDP-wrapped (`partial`)
        self.opt_d.step()

        g_loss = self.loss.generator(d(fake, level, alpha))  # D's gradients here are discarded
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        distributed.average_gradients(self.g)
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.g, self.steps)
        self.steps += 1
        schedule = torch.tensor([real.shape[-1], alpha], device=x.device)  # logged: the growth
        logs |= {"d_loss": d_loss, "g_loss": g_loss, "resolution": schedule[0],
                 "alpha": schedule[1]}
        return {k: v.detach() for k, v in logs.items()}

    @property
    def g_sampling(self) -> progan.Generator:
        """The generator that samples, decodes (steering) and draws figures: its EMA when
        `ema_decay` is set."""
        return self.g if self.ema is None else self.ema.net

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (n,L) -> float images (n,C,S,S) in [0,1], differentiable in z: G at its current
        level and alpha, nearest-upsampled to the full size if it has not grown that far."""
        level, alpha = self.phase()
        out = self.g_sampling(z.to(self.device), level, alpha)  # (n,C,R,R); no batch statistics
        if out.shape[-1] != self.image.size:
            out = F.interpolate(out, size=self.image.size, mode="nearest")
        return ((out + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def figures(self, x: torch.Tensor, y: torch.Tensor, n: int = 8) -> dict:
        """`growth`: the same latents rendered at every resolution trained so far, one row each,
        from that level's toRGB head (nearest-upsampled to the full size for display)."""
        level, _ = self.phase()
        z = latent.noise(n, self.latent_dim, torch.Generator().manual_seed(0)).to(self.device)
        rows = self.g_sampling.every_level(z, level + 1)
        table = [(f"{out.shape[-1]}x{out.shape[-1]}",
                  pixels.from_signed(F.interpolate(out, size=self.image.size, mode="nearest")))
                 for out in rows]
        return {"growth": image_table(
            table, title="the same latents at each resolution (toRGB of every level)")}

    def state_dict(self) -> dict[str, Any]:
        return {**pair_state(self), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_pair_state(self, state)
        self.steps = state["steps"]


def build(cfg: Config, device: torch.device, image: ImageSpec) -> ProGAN:
    if cfg.fade_steps > cfg.resolution_steps:
        raise ConfigError(f"progan.fade_steps {cfg.fade_steps} exceeds progan.resolution_steps "
                          f"{cfg.resolution_steps}: a fade-in must end within its resolution")
    g = progan.Generator(cfg.latent_dim, image.channels, image.size, cfg.width, cfg.max_width)
    d = progan.Discriminator(image.channels, image.size, cfg.width, cfg.max_width,
                             cfg.mbstd_group)
    return ProGAN(cfg, g, d, device, image)
