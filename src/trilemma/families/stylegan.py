"""StyleGAN, compact (Karras et al., 2019; 2020): a mapping network z -> w, a learned constant,
style-modulated convolutions with per-layer noise (`nets.stylegan`), against DCGAN's
discriminator with a minibatch-stddev feature, in the non-saturating BCE game, with style-mixing
regularisation, an optional R1 penalty on real images, and truncation in w space.

Truncation: the sample knob `truncation` (params `sample.truncation` and its sweep) is psi here,
not the tau of the other GANs' truncated normal: w = w_avg + psi (w - w_avg), where w_avg is the
running mean of w over training (an EMA kept in the generator's state dict). psi 1 (or null) is no
truncation, psi 0 maps every z to the average image, psi > 1 exaggerates.

Noise: training draws per-pixel noise maps through `trilemma.distributed` like every other draw;
`sample` draws them from its CPU `generator` (seeded, device independent, as in training);
`generate` and `decode` use fixed maps stored in the generator, so they are a deterministic
function of z (smooth interpolations, a differentiable decoder for steering).

EMA: with `ema_decay` set, sampling, decoding (steering) and the figures use an exponential
moving average of the generator's weights, as both StyleGAN papers sample; w_avg is the trained
generator's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field
from torch import nn

from trilemma import distributed, figures, gan_losses, pixels
from trilemma.data import ImageSpec
from trilemma.gan import GAN, GANConfig
from trilemma.train import adam
from trilemma.nets import dcgan
from trilemma.nets.stylegan import Discriminator, Generator

if TYPE_CHECKING:
    import matplotlib.pyplot as plt


class Config(GANConfig):
    """`width`: generator channels are 2**(k-1) width at the base grid, halved per level (28x28:
    64, 32, 16 at 7, 14, 28 for width 32); the discriminator is DCGAN's at that width.
    `truncation` of `sample`/`generate` is psi: w = w_avg + psi (w - w_avg); None is psi 1."""

    w_dim: int = Field(128, ge=1)  # width of the mapping network and of w
    mapping_layers: int = Field(4, ge=1)
    mapping_lr: float = Field(0.01, gt=0, le=1)  # the mapping network's learning-rate multiplier
    mixing_prob: float = Field(0.9, ge=0, le=1)  # share of fakes made from two latents
    w_avg_beta: float = Field(0.995, ge=0, lt=1)  # EMA decay of w_avg per training step
    r1_gamma: float = Field(0.0, ge=0)  # R1 penalty gamma/2 E||grad D(real)||^2; 0: off
    dropout: float = Field(0.0, ge=0, lt=1)  # in the discriminator
    mbstd_group: int = Field(4, ge=1)  # samples per minibatch-stddev group in D; 1: off
    # D's learning rate is lr * d_lr_mult: the generator's equalised weights move lr relative to
    # their size per step, DCGAN's N(0, 0.02) discriminator weights about lr / 0.02
    d_lr_mult: float = Field(1.0, gt=0)


class StyleGAN(GAN):
    """GAN's optimisers, conditioning-free game and state dict (the generator's state holds w_avg
    and the fixed noise maps); the step is written out because the generator takes two latents,
    a crossover layer and noise maps rather than GAN's one input tensor."""

    g: Generator

    def __init__(self, cfg: Config, generator: Generator, discriminator: nn.Module,
                 device: torch.device, image: ImageSpec):
        super().__init__(cfg, generator, discriminator, device, image)
        self.opt_d = adam(self.d.parameters(), cfg.lr * cfg.d_lr_mult, (cfg.beta1, cfg.beta2))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        g, d = self.nets["generator"], self.nets["discriminator"]  # DDP-wrapped under torchrun
        cfg, b, dev, layers = self.cfg, len(x), x.device, self.g.num_styles
        real = x * 2 - 1  # (B,C,S,S) in [-1,1], the generator's tanh range
        z = distributed.randn(b, self.latent_dim, device=dev)
        # style mixing: with probability mixing_prob, the layers from a random crossover on take
        # a second latent's w, so no layer can rely on its neighbours sharing its style
        z_mix = distributed.randn(b, self.latent_dim, device=dev)
        mixed = distributed.rand(b, device=dev) < cfg.mixing_prob  # (B,)
        cut = distributed.randint(1, layers, b, device=dev)
        crossover = torch.where(mixed, cut, torch.full_like(cut, layers))  # `layers`: no mixing
        noise = [distributed.randn(b, *shape, device=dev)  # (B,1,S_i,S_i) per conv layer
                 for shape in self.g.synthesis.noise_shapes()]
        fake = g(z, z_mix, crossover, noise)  # (B,C,S,S)

        if cfg.r1_gamma > 0:
            real = real.detach().requires_grad_(True)
        d_real, d_fake = d(real), d(fake.detach())  # (B,) each
        d_loss = self.loss.discriminator(d_real, d_fake)
        logs = gan_losses.score_logs(self.loss, d_real, d_fake)
        if cfg.r1_gamma > 0:  # penalise D's slope at real data: no overshooting around it
            logs["r1"] = gan_losses.r1(d_real, real)
            d_loss = d_loss + cfg.r1_gamma / 2 * logs["r1"]
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        logs["d_loss"] = d_loss

        with distributed.no_sync(d):  # D's gradients here are discarded by its next zero_grad
            g_loss = self.loss.generator(d(fake))
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
        self.opt_g.step()
        logs["g_loss"] = g_loss

        with torch.no_grad():  # w_avg follows the global batch's mean w
            w_mean = distributed.average({"w": self.g.mapping(z).mean(0)})["w"]
            self.g.w_avg.lerp_(w_mean, 1 - cfg.w_avg_beta)
        if self.ema is not None:  # after w_avg: the EMA copies the generator's buffers
            self.ema.update(self.g, self.steps)
        self.steps += 1
        return {k: v.detach() for k, v in logs.items()}

    def _images(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Per-layer styles (n,L,w_dim) -> float images (n,C,S,S) in [0,1]."""
        return (self.g_sampling.synthesis(ws, noise) + 1) / 2

    def _ws(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        """Latents (n,latent_dim) -> the same truncated w at every layer (n,L,w_dim)."""
        w = self.g_sampling.styles(z.to(self.device), psi)  # (n,w_dim)
        return w[:, None].expand(-1, self.g.num_styles, -1)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (n,latent_dim) -> float images (n,C,S,S) in [0,1], differentiable w.r.t. z;
        untruncated, fixed noise maps. The generator has no batch statistics or dropout."""
        return self._images(self._ws(z))

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                 truncation: float | None = None) -> torch.Tensor:
        """Latents (n,latent_dim) -> uint8 images (n,C,S,S): `decode` rounded, at psi
        `truncation` (None: 1)."""
        psi = 1.0 if truncation is None else truncation
        return pixels.from_unit(self._images(self._ws(z, psi)))

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None,
               truncation: float | None = None) -> torch.Tensor:
        """n images from N(0,I) latents and fresh noise maps, both drawn on the CPU from
        `generator`; `truncation` is psi (None: 1)."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        noise = [torch.randn(n, *shape, generator=generator).to(self.device)
                 for shape in self.g.synthesis.noise_shapes()]
        psi = 1.0 if truncation is None else truncation
        return pixels.from_unit(self._images(self._ws(z, psi), noise))

    @torch.no_grad()
    def mix(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        """uint8 images (n,C,S,S) whose coarse layers (the lower half of the resolution levels:
        28x28 has 7 and 14 coarse, 28 fine) take the w of latents `coarse` (n,latent_dim) and the
        other layers that of `fine` (n,latent_dim); fixed noise maps."""
        levels = torch.tensor(self.g.synthesis.levels, device=self.device)
        is_coarse = (levels <= levels.max() // 2)[None, :, None]  # (1,L,1)
        ws = torch.where(is_coarse, self._ws(coarse), self._ws(fine))
        return pixels.from_unit(self._images(ws))

    def figures(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"style_mixing": self._mixing_figure(g), "truncation": self._truncation_figure(g)}

    def _mixing_figure(self, g: torch.Generator, rows: int = 5, cols: int = 6) -> plt.Figure:
        row_z, col_z = torch.randn(rows, self.latent_dim, generator=g), \
            torch.randn(cols, self.latent_dim, generator=g)
        cells = self.mix(row_z.repeat_interleave(cols, 0), col_z.repeat(rows, 1)).cpu()
        row_src, col_src = self.generate(row_z).cpu(), self.generate(col_z).cpu()
        blank = torch.full_like(col_src[:1], 255)  # the top-left corner
        table = [("", torch.cat([blank, col_src]))]
        table += [("", torch.cat([row_src[i:i + 1], cells[i * cols:(i + 1) * cols]]))
                  for i in range(rows)]
        coarse = sorted({s for s, lv in zip(self.g.synthesis.sizes, self.g.synthesis.levels)
                         if lv <= max(self.g.synthesis.levels) // 2})
        return figures.image_table(
            table, title=f"style mixing: coarse styles ({', '.join(map(str, coarse))} px layers) "
                         f"from the left column, fine styles from the top row")

    def _truncation_figure(self, g: torch.Generator, rows: int = 6) -> plt.Figure:
        psis = torch.linspace(1, 0, 6).tolist()
        z = torch.randn(rows, self.latent_dim, generator=g)
        strips = torch.stack([self.generate(z, truncation=p).cpu() for p in psis], 1)  # (R,P,...)
        return figures.image_table([("", strip) for strip in strips],
                                   titles=[f"psi {p:.1f}" for p in psis],
                                   title="truncation in w space: w_avg + psi (w - w_avg)")


def build(cfg: Config, device: torch.device, image: ImageSpec) -> StyleGAN:
    g = Generator(cfg.latent_dim, cfg.w_dim, cfg.mapping_layers, cfg.width, image.channels,
                  image.size, cfg.mapping_lr)
    d = Discriminator(image.channels, cfg.width, cfg.dropout, image.size, cfg.mbstd_group)
    d.apply(dcgan.init_weights)
    return StyleGAN(cfg, g, d, device, image)
