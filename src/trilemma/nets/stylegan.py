"""A compact StyleGAN-like generator (Karras et al., 2019; 2020) for square images.

z -> mapping MLP -> w; a learned constant at the base grid; per resolution a style-modulated
3x3 convolution (StyleGAN2's modulation and demodulation), per-pixel noise scaled by a learned
per-channel strength, a bias and a leaky ReLU; a modulated 1x1 toRGB at the end. Every layer takes
its own w, so styles can be mixed per layer (coarse layers from one latent, fine from another).

The grid follows `nets.dcgan.stages`: for 28 the base is 7 and two upsampling levels follow
(7 -> 14 -> 28); the base level has one conv, every upsampling level two (the first after a
bilinear upsample). Channels halve per level from 2**(k-1) * width at the base, as in DCGAN.

Modulation scales the conv's *input* channels by the style and its output channels by the
demodulation factor, which equals convolving with per-sample modulated and demodulated weights
but runs as one ordinary convolution (oneDNN's fast path on a CPU; no grouped conv).

The discriminator is DCGAN's with a minibatch-stddev feature added before its last layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.nets import dcgan
from trilemma.nets.dcgan import stages
from trilemma.nets.progan import group_spread


class EqualLinear(nn.Module):
    """(B,d_in) -> (B,d_out) with unit-variance weights scaled at run time by lr_mult / sqrt(d_in)
    (an equalised learning rate): Adam's steps are equally small relative to every layer's
    weights, and lr_mult < 1 slows a layer further (StyleGAN's mapping network: 0.01)."""

    def __init__(self, d_in: int, d_out: int, bias_init: float = 0.0, lr_mult: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / lr_mult)
        self.bias = nn.Parameter(torch.full((d_out,), bias_init / lr_mult))
        self.w_scale, self.b_scale = lr_mult / math.sqrt(d_in), lr_mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.w_scale, self.bias * self.b_scale)


class Mapping(nn.Module):
    """(B,latent_dim) -> (B,w_dim): z normalised to unit mean square (its scale carries no
    information), then `layers` dense layers with leaky ReLU, learning `lr_mult` times slower
    than the rest: a fast-moving w would shift every style at once."""

    def __init__(self, latent_dim: int, w_dim: int, layers: int, lr_mult: float = 0.01):
        super().__init__()
        self.layers = nn.ModuleList(EqualLinear(latent_dim if i == 0 else w_dim, w_dim,
                                                lr_mult=lr_mult) for i in range(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)  # pixel norm
        for layer in self.layers:  # sqrt(2): leaky ReLU halves the variance, keep w near unit
            x = F.leaky_relu(layer(x), 0.2) * math.sqrt(2)
        return x


class ModulatedConv(nn.Module):
    """(B,c_in,H,W), w (B,w_dim) -> (B,c_out,H,W): conv with weights scaled per sample and input
    channel by the style s = A(w), then (demodulate) rescaled to unit expected output variance."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, kernel: int, demodulate: bool = True):
        super().__init__()
        # unit-variance weights, scaled at run time: Adam's steps are then relative to the weights
        # (an equalised learning rate); demodulation undoes any scale anyway
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.scale = 1 / math.sqrt(c_in * kernel * kernel)
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)  # styles start near 1
        self.demodulate, self.padding = demodulate, kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # (B,c_in)
        weight = self.weight * self.scale
        x = F.conv2d(x * s[:, :, None, None], weight, padding=self.padding)  # (B,c_out,H,W)
        if self.demodulate:  # 1 / ||w'_o|| with w'_{o,i,k} = weight_{o,i,k} s_i, per sample
            d = torch.rsqrt(s.square() @ weight.square().sum((2, 3)).T + 1e-8)  # (B,c_out)
            x = x * d[:, :, None, None]
        return x


class StyleLayer(nn.Module):
    """Modulated 3x3 conv (after a 2x upsample if `up`), + noise * per-channel strength, + bias,
    leaky ReLU. The strengths start at 0: the noise enters only as far as training wants it."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = ModulatedConv(c_in, c_out, w_dim, 3)
        self.noise_strength = nn.Parameter(torch.zeros(c_out))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv(x, w)  # (B,c_out,H,W)
        # noise (B,1,H,W): one map, scaled per channel
        x = x + self.noise_strength[:, None, None] * noise + self.bias[:, None, None]
        return F.leaky_relu(x, 0.2)


class Synthesis(nn.Module):
    """Per-layer styles ws (B,layers,w_dim) [+ per-layer noise] -> (B,channels,size,size) in
    [-1,1]. `levels[i]` is the resolution level (0 = base grid) of style layer i; the last style
    layer is toRGB. Without noise it uses `const_noise`, fixed maps drawn once at construction
    (kept in the state dict): images are then a deterministic function of the styles."""

    def __init__(self, w_dim: int, width: int, channels: int, size: int):
        super().__init__()
        k, base = stages(size)
        ch = [max(width * 2 ** (k - 1) >> i, 4) for i in range(k + 1)]  # 28, width 32: 64, 32, 16
        self.const = nn.Parameter(torch.randn(1, ch[0], base, base))
        layers = [StyleLayer(ch[0], ch[0], w_dim, up=False)]
        self.levels, self.sizes = [0], [base]
        for i in range(1, k + 1):
            layers += [StyleLayer(ch[i - 1], ch[i], w_dim, up=True),
                       StyleLayer(ch[i], ch[i], w_dim, up=False)]
            self.levels += [i, i]
            self.sizes += [base * 2 ** i] * 2
        self.layers = nn.ModuleList(layers)
        self.to_rgb = ModulatedConv(ch[k], channels, w_dim, 1, demodulate=False)
        self.rgb_bias = nn.Parameter(torch.zeros(channels))
        self.levels.append(k)
        self.num_styles = len(self.levels)  # convs + toRGB
        g = torch.Generator().manual_seed(0)
        for i, s in enumerate(self.sizes):
            self.register_buffer(f"const_noise{i}", torch.randn(1, 1, s, s, generator=g))

    def noise_shapes(self) -> list[tuple[int, int, int]]:
        """(1,S,S) per conv layer: the shape of one sample's noise map."""
        return [(1, s, s) for s in self.sizes]

    def forward(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = self.const.expand(len(ws), -1, -1, -1)  # (B,c0,base,base)
        for i, layer in enumerate(self.layers):
            n = getattr(self, f"const_noise{i}") if noise is None else noise[i]  # (B or 1,1,S,S)
            x = layer(x, ws[:, i], n)
        x = self.to_rgb(x, ws[:, -1]) + self.rgb_bias[:, None, None]
        return torch.tanh(x)  # (B,channels,size,size)


class Generator(nn.Module):
    """Mapping + synthesis, and `w_avg`: the running mean of w that truncation pulls toward (a
    buffer; the trainer updates it). forward(z, z_mix, crossover, noise, psi): style layers from
    `crossover[b]` on take the w of `z_mix[b]` (style mixing); psi scales w's distance from
    w_avg."""

    def __init__(self, latent_dim: int, w_dim: int, mapping_layers: int, width: int,
                 channels: int = 1, size: int = 28, mapping_lr: float = 0.01):
        super().__init__()
        self.mapping = Mapping(latent_dim, w_dim, mapping_layers, mapping_lr)
        self.synthesis = Synthesis(w_dim, width, channels, size)
        self.num_styles = self.synthesis.num_styles
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def styles(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        """(B,latent_dim) -> w (B,w_dim), truncated: w_avg + psi (w - w_avg)."""
        w = self.mapping(z)
        return w if psi == 1 else self.w_avg.lerp(w, psi)

    def forward(self, z: torch.Tensor, z_mix: torch.Tensor | None = None,
                crossover: torch.Tensor | None = None, noise: list[torch.Tensor] | None = None,
                psi: float = 1.0) -> torch.Tensor:
        w = self.styles(z, psi)
        ws = w[:, None].expand(-1, self.num_styles, -1)  # (B,L,w_dim)
        if z_mix is not None:
            layer = torch.arange(self.num_styles, device=z.device)
            late = layer[None] >= crossover[:, None]  # (B,L)
            ws = torch.where(late[..., None], self.styles(z_mix, psi)[:, None], ws)
        return self.synthesis(ws, noise)


class Discriminator(nn.Module):
    """DCGAN's discriminator (`nets.dcgan`) with a minibatch-stddev feature before its last layer
    (Karras et al., 2018): the std of every base-grid feature over a group of `group` samples,
    averaged to one number, tells D how varied the batch is. Without it the generator collapses
    to a few digits in quick runs; DCGAN's own generator gets that signal from BatchNorm."""

    def __init__(self, channels: int, width: int, dropout: float = 0.0, size: int = 28,
                 group: int = 4):
        super().__init__()
        k, base = stages(size)
        self.features = dcgan.Discriminator(channels, width, dropout, size=size).net[:-2]
        self.head = nn.Linear(width * 2 ** (k - 1) * base * base + 1, 1)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).flatten(1)  # (B,F)
        return self.head(torch.cat([f, group_spread(f, self.group)[:, None]], 1)).squeeze(1)
