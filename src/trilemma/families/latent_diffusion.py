"""Latent diffusion (Rombach et al., 2022): an autoencoder compresses images to a small grid of
latents (28x28 -> 4x7x7), a class-conditional diffusion model with classifier-free guidance learns
that grid, and sampling decodes its output to pixels once. Each denoising step runs the U-Net on
49 positions instead of 784 (196 for pixel diffusion with patch 2): the point of latent diffusion
is sampling speed at a given number of steps.

Training has two phases within the one loop of `fit`: the first `ae_steps` optimisation steps
train the autoencoder (reconstruction + a light KL term that keeps the latent smooth); then it is
frozen and the diffusion trains on its posterior means, scaled to unit variance by a factor
measured once on the first diffusion batch (kept in the state: resuming repeats it exactly)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from trilemma import distributed, pixels
from trilemma.data import ImageSpec
from trilemma.denoising import PREVIEW_GUIDANCE, PREVIEW_STEPS, Diffusion, DiffusionConfig
from trilemma.errors import ConfigError
from trilemma.families._checks import require_labels
from trilemma.nets.autoencoder import AutoEncoder
from trilemma.nets.unet import UNet
from trilemma.train import adam


class Config(DiffusionConfig):
    # the U-Net fields (widths, blocks, patch, ...) describe the diffusion net on the latent grid
    label_dropout: float = Field(0.1, ge=0, le=1)  # share of training labels replaced by "none"
    latent_channels: int = Field(4, ge=1)  # L of the (L,S/d,S/d) latent grid
    downsample: int = Field(4, ge=2, le=16)  # d, a power of two: the latent grid is S/d
    width: int = Field(32, ge=4)  # autoencoder channels at full size; doubled at each halving
    kl_weight: float = Field(1e-3, ge=0)  # per latent value, against the per-pixel BCE
    ae_steps: int = Field(500, ge=1)  # the first steps train the autoencoder, then the diffusion

    @model_validator(mode="after")
    def _phases_fit(self) -> "Config":
        if self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of two (got {self.downsample})")
        if self.max_steps is not None and self.ae_steps >= self.max_steps:
            raise ValueError(f"ae_steps {self.ae_steps} leaves none of max_steps "
                             f"{self.max_steps} to the diffusion")
        return self


def latent_size(cfg: Config, image: ImageSpec) -> int:
    """The side of the latent grid, S/d; ConfigError if d does not divide S into at least 2."""
    s, d = image.size, cfg.downsample
    if s % d or s // d < 2:
        raise ConfigError(f"data.image_size {s}: latent_diffusion.downsample {d} must divide it "
                          f"into a grid of at least 2x2; use a multiple of {d} from {2 * d} on, or "
                          f"a smaller downsample")
    if (s // d) % cfg.patch:
        raise ConfigError(f"latent_diffusion.patch {cfg.patch} does not divide the latent grid "
                          f"{s // d} (data.image_size {s} / downsample {d}); use patch 1")
    return s // d


def _pixels(logits: torch.Tensor) -> torch.Tensor:
    """Decoder logits (n,C,S,S) -> uint8 images on the CPU."""
    return pixels.from_unit(torch.sigmoid(logits)).cpu()


class LatentDiffusion:
    conditional = True

    def __init__(self, cfg: Config, device: torch.device, image: ImageSpec):
        self.cfg, self.device, self.image = cfg, device, image
        grid = latent_size(cfg, image)
        self.latent_shape = (cfg.latent_channels, grid, grid)  # (L,s,s) of one image
        self.ae = AutoEncoder(image.channels, cfg.latent_channels, cfg.width,
                              cfg.downsample.bit_length() - 1) \
            .to(device, memory_format=torch.channels_last)
        unet = UNet(cfg.widths, cfg.blocks, cfg.attention, cfg.dropout, classes=image.num_classes,
                    channels=cfg.latent_channels, patch=cfg.patch)
        latent_image = ImageSpec(cfg.latent_channels, grid, image.classes)
        # unclipped: x0 predictions are unit-variance latents, not pixels in [-1,1]
        self.diffusion = Diffusion(cfg, unet, device, latent_image, conditional=True,
                                   label_dropout=cfg.label_dropout, clip=False)
        self.knobs, self.timesteps = self.diffusion.knobs, self.diffusion.timesteps
        # one dict with the diffusion's: `fit` swaps DDP wrappers into it for both trainees
        self.nets = self.diffusion.nets
        self.nets["autoencoder"] = self.ae
        self.opt = adam(self.ae.parameters(), cfg.lr)
        self.steps = 0  # optimisation steps of both phases
        self.scale: torch.Tensor | None = None  # 1 / std of the latents: first diffusion step

    def plan(self, total_steps: int) -> None:
        """The diffusion's lr schedule spans the steps after the autoencoder's."""
        self.diffusion.plan(max(1, total_steps - self.cfg.ae_steps))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        self.steps += 1
        if self.steps <= self.cfg.ae_steps:
            return self._autoencoder_step(x)
        with torch.no_grad():  # the frozen encoder, called plainly: nothing of it to synchronise
            z, _ = self.ae.encode(x)  # (B,L,s,s)
            if self.scale is None:  # once, on this batch of every rank together
                moments = distributed.average({"mean": z.mean(), "square": z.square().mean()})
                variance = moments["square"] - moments["mean"].square()
                self.scale = variance.clamp(min=1e-12).rsqrt().float()
        return self.diffusion.denoising_step(z * self.scale.to(z), y)

    def _autoencoder_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        noise = distributed.randn(len(x), *self.latent_shape, device=x.device)
        logits, mean, logvar = self.nets["autoencoder"](x, noise)
        recon = F.binary_cross_entropy_with_logits(logits, x)  # per pixel
        kl = -0.5 * (1 + logvar - mean.square() - logvar.exp()).mean()  # per latent value
        loss = recon + self.cfg.kl_weight * kl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"ae_loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (n,L,s,s) -> uint8 images (n,C,S,S) on the CPU."""
        scale = 1.0 if self.scale is None else self.scale.to(z)  # untrained: any scale will do
        return _pixels(self.ae.decoder(z / scale))

    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, sampler: str = "ddim",
               steps: int | str = PREVIEW_STEPS, eta: float = 0.0,
               guidance: float = 1.0) -> torch.Tensor:
        """n images (n,C,S,S) uint8 of classes `labels` (default 0, 1, ..., K-1, 0, ...): latents
        drawn by the diffusion (steps="ddpm": the ancestral sampler on all T steps), decoded."""
        return self.decode(self.diffusion.draw(n, labels, generator, sampler, steps, eta,
                                               guidance))

    @torch.no_grad()
    def figures(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Test images and their reconstructions; the latent reverse process, decoded."""
        from trilemma.figures import denoising_figure, image_table

        n = min(8, len(x))  # a test set may hold fewer than 8 images
        real = x[:n].to(self.device)  # (n,C,S,S) in [0,1]
        mean, _ = self.ae.encode(real)
        recon = torch.sigmoid(self.ae.decoder(mean))
        mse = (recon - real).square().mean().item()
        c, s, _ = self.latent_shape
        fig = image_table([("test", pixels.from_unit(real)),
                           (f"decoded\nMSE {mse:.4f}", pixels.from_unit(recon))],
                          title=f"autoencoder: test images through the {c}x{s}x{s} latent and back")

        gen = torch.Generator().manual_seed(0)
        z_T = torch.randn(n, *self.latent_shape, generator=gen)
        _, kept = self.diffusion.denoise(z_T, self.timesteps - 1, y[:n], gen, steps=PREVIEW_STEPS,
                                         guidance=PREVIEW_GUIDANCE, keep=9, frames=self.decode)
        frames = [(self.timesteps - 1, self.decode(z_T.to(self.device))), *kept]
        return {"reconstruction": fig, "denoising": denoising_figure(frames)}

    def state_dict(self) -> dict[str, Any]:
        return {"autoencoder": self.ae.state_dict(), "ae_opt": self.opt.state_dict(),
                "diffusion": self.diffusion.state_dict(), "steps": self.steps,
                "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ae.load_state_dict(state["autoencoder"])
        self.opt.load_state_dict(state["ae_opt"])
        self.diffusion.load_state_dict(state["diffusion"])
        self.steps = state["steps"]
        self.scale = None if state["scale"] is None else state["scale"].to(self.device)


def build(cfg: Config, device: torch.device, image: ImageSpec) -> LatentDiffusion:
    require_labels("latent_diffusion", image)
    return LatentDiffusion(cfg, device, image)
