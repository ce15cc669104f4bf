"""Networks of the image-to-image families: plain nn.Modules; the translators own the losses.

Generators end in a sigmoid: images live in [0,1] throughout (no [-1,1] rescaling to undo).
Instance normalisation everywhere (CycleGAN's choice; pix2pix's batch of one is the same): an
image's translation never depends on the rest of its batch, in training or afterwards.
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


def _down(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    """Halve the side: 4x4 stride-2 convolution (pix2pix's encoder step)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(_norm(cout))
    return nn.Sequential(*layers, nn.LeakyReLU(0.2, inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    """Double the side: 4x4 stride-2 transposed convolution (pix2pix's decoder step)."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), _norm(cout),
                         nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Encoder-decoder with skip connections (pix2pix's generator, shortened for 28x28):
    `depth` halvings of the side (it must divide by 2**depth), widths w, 2w, 4w..., and a skip
    from each encoder level to the decoder level of the same size."""

    def __init__(self, cin: int = 1, cout: int = 1, width: int = 32, depth: int = 2):
        super().__init__()
        widths = [width * 2 ** i for i in range(depth)]  # w, 2w, ...
        self.down = nn.ModuleList(_down(c, w, norm=i > 0)
                                  for i, (c, w) in enumerate(zip([cin, *widths], widths)))
        self.bottleneck = nn.Sequential(nn.Conv2d(widths[-1], widths[-1], 3, 1, 1, bias=False),
                                        _norm(widths[-1]), nn.ReLU(inplace=True))
        # decoder step i lifts level depth-1-i to the level above; from the second step on its
        # input is the previous step's output with the encoder's skip of that size concatenated
        self.up = nn.ModuleList(
            _up(widths[-1] if i == 0 else 2 * widths[depth - 1 - i],
                widths[depth - 2 - i] if depth - 2 - i >= 0 else width)
            for i in range(depth))
        self.out = nn.Conv2d(width + cin, cout, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, h = [], x  # x (B,cin,S,S)
        for down in self.down:
            h = down(h)
            skips.append(h)  # (B,w_i,S/2^(i+1),S/2^(i+1))
        h = self.bottleneck(h)
        for i, up in enumerate(self.up):
            if i > 0:
                h = torch.cat([h, skips[-1 - i]], dim=1)
            h = up(h)
        return torch.sigmoid(self.out(torch.cat([h, x], dim=1)))  # (B,cout,S,S)


class PatchGAN(nn.Module):
    """Discriminator that scores overlapping patches (pix2pix, CycleGAN): two stride-2 steps and
    two 3x3 convolutions, one logit per patch: (B,cin,S,S) -> (B,1,S/4,S/4). A patch's receptive
    field is 22 pixels: it judges local texture and strokes, the L1/cycle terms the layout."""

    def __init__(self, cin: int = 1, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            _down(cin, width, norm=False),  # (B,w,S/2,S/2)
            _down(width, 2 * width),  # (B,2w,S/4,S/4)
            nn.Conv2d(2 * width, 4 * width, 3, 1, 1, bias=False), _norm(4 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * width, 1, 3, 1, 1),  # (B,1,S/4,S/4) logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """conv-PReLU-conv plus the input. No normalisation: as in EDSR, which found that SRGAN's
    BatchNorm only costs accuracy for super-resolution."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.PReLU(width),
                                  nn.Conv2d(width, width, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """SRGAN's generator: residual blocks at the low resolution, a long skip over them, then one
    sub-pixel step (conv to 4w channels, PixelShuffle(2)) per doubling of the side."""

    def __init__(self, channels: int = 1, width: int = 32, blocks: int = 4, factor: int = 4):
        super().__init__()
        if factor not in (2, 4, 8):
            raise ValueError(f"factor must be 2, 4 or 8, got {factor}")
        self.head = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1), nn.PReLU(width))
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)),
                                    nn.Conv2d(width, width, 3, 1, 1))
        self.upsample = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(width, 4 * width, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU(width))
            for _ in range(factor.bit_length() - 1)))
        self.out = nn.Conv2d(width, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)  # (B,w,s,s), s = S/factor
        h = h + self.blocks(h)
        return torch.sigmoid(self.out(self.upsample(h)))  # (B,C,S,S)
