"""Progressive GAN networks (Karras et al., 2018): a generator and a discriminator that grow from a
base grid to the full image size by doublings, with the paper's three stabilisers: equalized
learning rate, pixelwise feature normalisation (G) and the minibatch standard deviation (D).

Resolutions follow `nets.dcgan.stages`: 28 -> 7, 14, 28; 64 -> 4, 8, 16, 32, 64. Level i is the
resolution base * 2**i. Both nets take the level to run at and the fade-in alpha of that level:
at alpha < 1 the new level's output is blended with the previous level's, upsampled (G) or seen
through the downsampled image (D), so a new block enters smoothly. The level and alpha come from
the training schedule (`families.progan.phase`); the nets hold no schedule state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.nets.dcgan import stages

HE_GAIN = math.sqrt(2)  # for LeakyReLU(0.2) layers, as the paper uses


class EqualizedConv2d(nn.Module):
    """A conv whose weights are stored N(0,1) and scaled at run time by He's constant
    gain / sqrt(fan_in): every weight then moves at the same relative speed under Adam, whatever
    the layer's fan-in (the paper's equalized learning rate)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, gain: float = HE_GAIN):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = gain / math.sqrt(c_in * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """The dense counterpart of EqualizedConv2d."""

    def __init__(self, d_in: int, d_out: int, gain: float = HE_GAIN):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.scale = gain / math.sqrt(d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit mean square (over channels): keeps G's signal
    magnitudes from escalating, in place of BatchNorm (which would mix samples)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def group_spread(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """(B,...) -> (B,): for each sample, the standard deviation of every feature over its group
    of `group` samples (sample i is in group i % (B // g)), averaged over the features: how
    varied the batch is (Karras et al., 2018). The group shrinks to divide B."""
    b = len(x)
    g = min(group, b)
    while b % g:
        g -= 1
    groups = x.reshape(g, b // g, *x.shape[1:])  # a view, channels_last included
    # the variance written out: Tensor.var over dim 0 is 5-50x slower on the CPU, backward too
    var = (groups - groups.mean(dim=0)).square().mean(dim=0)  # (B/g,...)
    std = (var + 1e-8).sqrt()  # eps keeps the gradient finite at 0
    return std.mean(dim=tuple(range(1, std.dim()))).repeat(g)  # in the order of the batch


def minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """(B,C,H,W) -> (B,C+1,H,W): appends `group_spread` as one constant map, so D can see a
    batch of too-similar fakes (mode collapse)."""
    b, _, h, w = x.shape
    return torch.cat([x, group_spread(x, group)[:, None, None, None].expand(b, 1, h, w)], dim=1)


def widths(size: int, width: int, max_width: int) -> list[int]:
    """Channels per level, base first: `width` at the full size, doubling toward the base grid up
    to `max_width` (28, 32: 128, 64, 32)."""
    k, _ = stages(size)
    return [min(width * 2 ** (k - i), max_width) for i in range(k + 1)]


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [EqualizedConv2d(c_in, c_out, 3), nn.LeakyReLU(0.2)]


class Generator(nn.Module):
    """(B,latent) at level l -> (B,channels,R,R) in about [-1,1], R = base * 2**l (linear output,
    as the paper). Block 0: pixel-normed latent, dense to the base grid, conv; block i > 0:
    nearest 2x upsample, conv, conv; every conv followed by LeakyReLU and PixelNorm. One 1x1
    toRGB head per level."""

    partial = True  # only the current level's blocks run: see distributed.average_gradients

    def __init__(self, latent_dim: int, channels: int, size: int, width: int, max_width: int):
        super().__init__()
        _, self.base = stages(size)
        cs = widths(size, width, max_width)
        self.levels = len(cs)
        first = cs[0] * self.base * self.base
        self.blocks = nn.ModuleList([nn.Sequential(
            PixelNorm(), EqualizedLinear(latent_dim, first, gain=HE_GAIN / 4),  # paper's gain
            nn.LeakyReLU(0.2), nn.Unflatten(1, (cs[0], self.base, self.base)), PixelNorm(),
            *_conv(cs[0], cs[0]), PixelNorm())])
        for c_in, c_out in zip(cs, cs[1:]):
            self.blocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             *_conv(c_in, c_out), PixelNorm(),
                                             *_conv(c_out, c_out), PixelNorm()))
        self.to_rgb = nn.ModuleList([EqualizedConv2d(c, channels, 1, gain=1.0) for c in cs])

    def forward(self, z: torch.Tensor, level: int, alpha: float = 1.0) -> torch.Tensor:
        h = z
        for i in range(level):  # (B,c_i,R_i,R_i) up to the level below
            h = self.blocks[i](h)
        new = self.to_rgb[level](self.blocks[level](h))  # (B,C,R,R)
        if alpha >= 1 or level == 0:
            return new
        old = F.interpolate(self.to_rgb[level - 1](h), scale_factor=2, mode="nearest")
        return torch.lerp(old, new, alpha)

    @torch.no_grad()
    def every_level(self, z: torch.Tensor, levels: int) -> list[torch.Tensor]:
        """The images of the first `levels` levels from one pass through the blocks (faded-in
        heads, alpha 1): [(B,C,base,base), (B,C,2 base,2 base), ...]."""
        out, h = [], z
        for i in range(levels):
            h = self.blocks[i](h)
            out.append(self.to_rgb[i](h))
        return out


class Discriminator(nn.Module):
    """(B,channels,R,R) at level l -> (B,) score: a 1x1 fromRGB head per level, blocks of
    (conv, conv, 2x average-pool) down to the base grid, then minibatch stddev, conv, and two
    dense layers (the last linear). At alpha < 1 the new block's output is blended with the
    previous level's fromRGB of the 2x average-pooled image."""

    partial = True  # only the current level's blocks run: see distributed.average_gradients

    def __init__(self, channels: int, size: int, width: int, max_width: int, group: int = 4):
        super().__init__()
        _, base = stages(size)
        cs = widths(size, width, max_width)
        self.levels, self.group = len(cs), group
        self.from_rgb = nn.ModuleList([nn.Sequential(EqualizedConv2d(channels, c, 1),
                                                     nn.LeakyReLU(0.2)) for c in cs])
        self.blocks = nn.ModuleList([nn.Identity()])  # level 0 has no block of its own
        for c_out, c_in in zip(cs, cs[1:]):
            self.blocks.append(nn.Sequential(*_conv(c_in, c_in), *_conv(c_in, c_out),
                                             nn.AvgPool2d(2)))
        self.head = nn.Sequential(*_conv(cs[0] + 1, cs[0]), nn.Flatten(),
                                  EqualizedLinear(cs[0] * base * base, cs[0]), nn.LeakyReLU(0.2),
                                  EqualizedLinear(cs[0], 1, gain=1.0))

    def forward(self, x: torch.Tensor, level: int, alpha: float = 1.0) -> torch.Tensor:
        h = self.blocks[level](self.from_rgb[level](x))  # (B,c,R/2,R/2) for level > 0
        if 0 < level and alpha < 1:
            old = self.from_rgb[level - 1](F.avg_pool2d(x, 2))
            h = torch.lerp(old, h, alpha)
        for i in range(level - 1, 0, -1):
            h = self.blocks[i](h)
        return self.head(minibatch_stddev(h, self.group)).squeeze(1)  # (B,)
