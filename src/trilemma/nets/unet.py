"""A small DDPM-style U-Net for square images of any size: ResNet blocks with GroupNorm, a sinusoidal time
embedding added in every block, self-attention at the lowest resolution, skip connections by
concatenation. Optionally class-conditional: a learned label embedding (with one extra "no label"
entry, for classifier-free guidance) is added to the time embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B,dim), as in the Transformer: cosines,
    then sines (then one zero column when dim is odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (B,half)
    return F.pad(torch.cat([angles.cos(), angles.sin()], dim=1), (0, dim % 2))


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)  # 8 groups when the width allows


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.block1 = nn.Sequential(norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.block2 = nn.Sequential(norm(c_out), nn.SiLU(), nn.Dropout(dropout),
                                    nn.Conv2d(c_out, c_out, 3, padding=1))
        nn.init.zeros_(self.block2[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.block2[-1].bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.emb(emb)[:, :, None, None]  # (B,c_out,H,W)
        return self.skip(x) + self.block2(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        heads = math.gcd(heads, channels)
        self.norm = norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)  # (B,HW,C)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """eps_theta(x_t, t[, y]): (B,C,S,S), (B,) int, (B,) int in 0..classes (classes = no label)
    -> (B,C,S,S), C = `channels`; `patch` must divide S. `widths` are the channels per resolution
    level, each level half the size of the one before, rounded up (28, 14, 7 for three levels;
    14, 7 for two with patch=2); odd sizes are matched on the way up by interpolation."""

    def __init__(self, widths: list[int], blocks: int = 1, attention: bool = True,
                 dropout: float = 0.0, classes: int | None = None, channels: int = 1,
                 patch: int = 1):
        super().__init__()
        # patch > 1: space-to-depth first ((C,28,28) -> (4C,14,14) for 2), back at the end
        self.unshuffle, self.shuffle = nn.PixelUnshuffle(patch), nn.PixelShuffle(patch)
        channels *= patch * patch
        emb_dim = 4 * widths[0]
        self.emb_dim = emb_dim
        self.time = nn.Sequential(nn.Linear(widths[0], emb_dim), nn.SiLU(),
                                  nn.Linear(emb_dim, emb_dim))
        self.label = nn.Embedding(classes + 1, emb_dim) if classes else None
        self.stem = nn.Conv2d(channels, widths[0], 3, padding=1)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c, skips = widths[0], [widths[0]]
        for level, width in enumerate(widths):
            for _ in range(blocks):
                self.down.append(ResBlock(c, width, emb_dim, dropout))
                c = width
                skips.append(c)
            if level < len(widths) - 1:  # 28 -> 14 -> 7
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = ResBlock(c, c, emb_dim, dropout)
        self.mid_attn = SelfAttention(c) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, dropout)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(blocks + 1):  # one more than down: also takes the downsample's skip
                self.up.append(ResBlock(c + skips.pop(), width, emb_dim, dropout))
                c = width
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.head = nn.Sequential(norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.blocks, self.levels = blocks, len(widths)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.stem.out_channels))  # (B,E)
        if self.label is not None:
            emb = emb + self.label(y)
        h = self.stem(self.unshuffle(x))
        hs = [h]
        blocks = iter(self.down)
        for level in range(self.levels):
            for _ in range(self.blocks):
                h = next(blocks)(h, emb)
                hs.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        blocks = iter(self.up)
        for i, level in enumerate(reversed(range(self.levels))):
            for _ in range(self.blocks + 1):
                h = next(blocks)(torch.cat([h, hs.pop()], dim=1), emb)
            if level > 0:
                target = hs[-1].shape[-2:]  # 7 -> 14 -> 28
                h = self.upsample[i](F.interpolate(h, size=target, mode="nearest"))
        return self.shuffle(self.head(h))
