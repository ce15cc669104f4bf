"""The diffusion family as a trainee: eps- or v-prediction training (min-SNR weighting, lr
warm-up, then a constant or cosine-decaying lr), an EMA of the weights for sampling, sampling and
img2img (noise a real image to step t, denoise it) through `diffusion.sample_loop`. It receives
the network and defines no layers; the math is in `diffusion`. `ddpm` and `cfg_diffusion` are
this class, unconditional and class-conditional; `latent_diffusion` runs it on a latent grid."""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from trilemma import diffusion, distributed, pixels
from trilemma.config import TrainConfig
from trilemma.data import ImageSpec
from trilemma.ema import EMA
from trilemma.train import adam


class DiffusionConfig(TrainConfig):
    timesteps: int = Field(1000, ge=2)  # T of the forward process
    schedule: Literal["linear", "cosine"] = "linear"
    prediction: diffusion.Prediction = "eps"  # the network's target: the noise, or v
    min_snr_gamma: float | None = Field(None, gt=0)  # min-SNR-gamma loss weights; None: equal
    warmup_steps: int = Field(0, ge=0)  # lr rises linearly to `lr` over these first steps
    # after the warm-up the lr stays (constant) or falls along a half cosine, reaching 0 after
    # the run's last step (cosine; latent diffusion: its last diffusion step)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    beta2: float = Field(0.999, ge=0, lt=1)  # Adam's second-moment decay
    spacing: diffusion.Spacing = "linspace"  # where a sampler's few steps fall in 0..T-1
    widths: list[int] = Field([32, 64, 64], min_length=1, max_length=4)  # U-Net channels per level
    blocks: int = Field(1, ge=1, le=4)  # ResNet blocks per level
    patch: Literal[1, 2] = 1  # 2: the U-Net runs on (4C,S/2,S/2) unshuffled pixels, 4x cheaper
    attention: bool = True  # self-attention at the lowest resolution
    dropout: float = Field(0.1, ge=0, lt=1)
    ema_decay: float = Field(0.999, ge=0, lt=1)  # sampling uses this EMA of the weights
    grad_clip: float | None = Field(1.0, gt=0)  # max gradient norm; None: no clipping

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        if min(widths) < 4:
            raise ValueError("every width must be at least 4")
        return widths


# a hook that shifts the noise prediction eps (n,C,S,S) of x_t at step t: classifier guidance
Guide = diffusion.Guide

# DDIM steps of the train stage's previews (the grid after each epoch, the figures): they need no
# more; the sample stage passes its own `sample.steps`
PREVIEW_STEPS = 20
# classifier-free guidance w of the figures that sample from noise (latent diffusion's denoising
# progression): a figure takes no sampling settings; the grids and the sample stage pass
# params `sample.guidance`
PREVIEW_GUIDANCE = 3.0


def _images(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] floats (n,C,S,S) -> uint8 (n,C,S,S) on the CPU."""
    return pixels.from_signed(x).cpu()


class Diffusion:
    def __init__(self, cfg: DiffusionConfig, net: nn.Module, device: torch.device,
                 image: ImageSpec, *, conditional: bool = False, label_dropout: float = 0.0,
                 clip: bool = True):
        self.cfg, self.device, self.image, self.conditional = cfg, device, image, conditional
        self.lr_steps: int | None = None  # the run's denoising steps (`plan`): the cosine's span
        self.label_dropout = label_dropout
        self.clip = clip  # sampling keeps the predicted x0 in [-1,1]: pixels yes, latents no
        self.knobs = ("sampler", "steps", "eta") + (("guidance",) if conditional else ())
        self.timesteps = cfg.timesteps
        self.alpha_bar = diffusion.alpha_bars(diffusion.SCHEDULES[cfg.schedule](cfg.timesteps)) \
            .to(device)  # (T,) float64
        # channels_last: convolutions run markedly faster on CPU (oneDNN) and on tensor cores
        self.net = net.to(device, memory_format=torch.channels_last)
        self.ema = EMA(self.net, cfg.ema_decay)  # sampling uses this copy of the weights
        if cfg.compile:  # sampling calls the EMA net `steps` times per batch: compiling pays
            self.ema.net.compile()
        self.nets = {"unet": self.net}
        self.opt = adam(self.net.parameters(), cfg.lr, betas=(0.9, cfg.beta2))
        self.steps = 0
        self._shape = (image.channels, image.size, image.size)  # (C,S,S) of one image

    def _null(self, like: torch.Tensor) -> torch.Tensor:
        # the "no label" embedding of the conditional U-Net: the one after the K classes
        return torch.full_like(like, self.image.num_classes)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.denoising_step(x * 2 - 1, y)  # (B,C,S,S) in [-1,1]

    def denoising_step(self, x0: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on clean data x0 (B,C,S,S) in the space the net denoises:
        pixels in [-1,1] here, a latent grid for latent diffusion."""
        x0 = x0.contiguous(memory_format=torch.channels_last)
        t = distributed.randint(0, self.timesteps, len(x0), device=x0.device)
        noise = distributed.randn_like(x0)
        labels = None
        if self.conditional:  # drop labels so that one net also learns the unconditional model
            drop = distributed.rand(len(y), device=y.device) < self.label_dropout
            labels = torch.where(drop, self._null(y), y)
        output = self.nets["unet"](diffusion.q_sample(x0, t, noise, self.alpha_bar), t, labels)
        loss = diffusion.denoising_loss(output, x0, noise, t, self.alpha_bar, self.cfg.prediction,
                                        self.cfg.min_snr_gamma)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        for group in self.opt.param_groups:  # a function of the step count: resuming repeats it
            group["lr"] = self.lr()
        self.opt.step()
        self.ema.update(self.net, self.steps)
        self.steps += 1
        return {"loss": loss.detach()}

    def plan(self, total_steps: int) -> None:
        """`fit` says how many denoising steps the run takes: the cosine lr spans them."""
        self.lr_steps = total_steps

    def lr(self) -> float:
        """The lr of the step about to be taken: warm-up, then constant or cosine to 0."""
        cfg, step = self.cfg, self.steps
        if step < cfg.warmup_steps:
            return cfg.lr * ((step + 1) / cfg.warmup_steps)
        if cfg.lr_schedule == "constant":
            return cfg.lr
        if self.lr_steps is None:
            raise RuntimeError("a cosine lr needs the run's length: call plan(total_steps) first")
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, self.lr_steps - cfg.warmup_steps))
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def _output(self, x: torch.Tensor, t: int, labels: torch.Tensor | None,
                guidance: float) -> torch.Tensor:
        """The EMA net's prediction (eps or v) at step t; classifier-free guided when
        conditional."""
        tt = torch.full((len(x),), t, device=x.device, dtype=torch.long)
        if not self.conditional:
            return self.ema.net(x, tt)
        if guidance == 1:
            return self.ema.net(x, tt, labels)
        if guidance == 0:
            return self.ema.net(x, tt, self._null(labels))
        both = self.ema.net(torch.cat([x, x]), torch.cat([tt, tt]),  # one batch for both passes
                        torch.cat([labels, self._null(labels)]))
        eps_cond, eps_uncond = both.chunk(2)
        return diffusion.guided_eps(eps_uncond, eps_cond, guidance)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, start: int, labels: torch.Tensor | None = None,
                generator: torch.Generator | None = None, sampler: str = "ddim", steps: int = 50,
                eta: float = 0.0, guidance: float = 1.0, keep: int = 0,
                guide: Guide | None = None,
                frames: Callable[[torch.Tensor], torch.Tensor] = _images,
                ) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
        """Run the reverse process from x = x_start (n,C,S,S) down to x_0 on `steps` timesteps
        of 0..start (spread by `spacing`). Returns x_0 and, if keep > 0, `keep` evenly spaced
        (t, frames(x_t)) along the way (t = -1: x_0; `frames` makes uint8 images, by default of
        pixels in [-1,1]), for a progression figure. Noise comes from `generator` on the CPU.
        `guide(x_t, eps, t) -> eps` shifts each noise prediction before the step (classifier
        guidance, `trilemma.control`)."""
        if self.conditional and labels is None:
            labels = torch.arange(len(x)) % self.image.num_classes
        labels = None if labels is None else labels.to(self.device)
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        ts = diffusion.timesteps(start + 1, steps, self.cfg.spacing)
        marks = {round(k * (len(ts) - 1) / max(1, keep - 1)) for k in range(keep)}
        kept: list[tuple[int, torch.Tensor]] = []

        def keep_marked(i: int, t_prev: int, x_prev: torch.Tensor) -> None:
            if i in marks:
                kept.append((t_prev, frames(x_prev)))

        x = diffusion.sample_loop(
            x, lambda x_t, t: self._output(x_t, t, labels, guidance), self.alpha_bar, ts,
            prediction=self.cfg.prediction, sampler=sampler, eta=eta, clip=self.clip,
            generator=generator, guide=guide, callback=keep_marked if keep else None)
        return x, kept

    def draw(self, n: int, labels: torch.Tensor | None = None,
             generator: torch.Generator | None = None, sampler: str = "ddim",
             steps: int | str = PREVIEW_STEPS, eta: float = 0.0, guidance: float = 1.0,
             guide: Guide | None = None) -> torch.Tensor:
        """n samples x_0 (n,C,S,S) from pure noise, as floats in the space the net denoises.
        steps="ddpm" means the ancestral sampler on all T steps; `guidance` is the classifier-free
        w of a conditional model (1: the conditional prediction alone; the stages pass params
        `sample.guidance`); `guide` as in `denoise`."""
        if steps == "ddpm":
            sampler, steps = "ddpm", self.timesteps
        x_T = torch.randn(n, *self._shape, generator=generator)
        x0, _ = self.denoise(x_T, self.timesteps - 1, labels, generator, sampler, int(steps), eta,
                             guidance, guide=guide)
        return x0

    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, sampler: str = "ddim",
               steps: int | str = PREVIEW_STEPS, eta: float = 0.0,
               guidance: float = 1.0, guide: Guide | None = None) -> torch.Tensor:
        """n uint8 images (n,C,S,S) from pure noise; the arguments as in `draw`."""
        return _images(self.draw(n, labels, generator, sampler, steps, eta, guidance, guide))

    @torch.no_grad()
    def figures(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """The reverse process from noise, and reconstructions of test images noised to several t."""
        from trilemma.figures import denoising_figure, reconstruction_figure

        n = min(8, len(x))  # a test set may hold fewer than 8 images
        gen = torch.Generator().manual_seed(0)
        labels = y[:n] if self.conditional else None
        x_T = torch.randn(n, *self._shape, generator=gen)
        _, kept = self.denoise(x_T, self.timesteps - 1, labels, gen, steps=PREVIEW_STEPS,
                               guidance=1.0, keep=9)
        frames = [(self.timesteps - 1, _images(x_T)), *kept]  # x_T ... x_0

        real = x[:n].to(self.device) * 2 - 1  # (n,C,S,S) in [-1,1]
        noise = torch.randn(real.shape, generator=gen).to(real)
        rows = []
        for fraction in (0.1, 0.25, 0.5, 0.75, 0.9):
            t = int(fraction * (self.timesteps - 1))
            noisy = diffusion.q_sample(real, torch.full((n,), t, device=self.device), noise,
                                       self.alpha_bar)
            recon, _ = self.denoise(noisy, t, labels, gen, steps=PREVIEW_STEPS, guidance=1.0)
            mse = (recon.clamp(-1, 1) - real).square().mean().item() / 4  # on the [0,1] scale
            rows.append((t, _images(noisy), _images(recon), mse))
        return {"denoising": denoising_figure(frames),
                "reconstruction": reconstruction_figure(_images(real), rows, self.timesteps)}

    def state_dict(self) -> dict[str, Any]:
        return {"unet": self.net.state_dict(), "ema": self.ema.net.state_dict(),
                "opt": self.opt.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["unet"])
        self.ema.net.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.steps = state["steps"]
