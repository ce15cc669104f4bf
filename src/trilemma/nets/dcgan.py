"""DCGAN-style generator and discriminator for square images (Radford et al., 2015).

Used by `dcgan`, `wgan_gp` (critic without BatchNorm) and `cgan` (label channels appended by the
GAN game), so their quality differences come from the game, not from the architecture.

Both networks run k stride-2 stages between the image (S x S) and a base grid of S / 2**k: for 28
that is 28 -> 14 -> 7 (k = 2), for 64 it is 64 -> 32 -> 16 -> 8 -> 4 (k = 4). The channel width
doubles at each stage toward the base grid: w at the image end, 2**(k-1) w at the base.
"""

from __future__ import annotations

from torch import nn

from trilemma.errors import ConfigError


def stages(size: int) -> tuple[int, int]:
    """(k, base): how often `size` halves while it is even and at least 8, and the grid it reaches.
    28 -> (2, 7), 32 -> (3, 4), 64 -> (4, 4). The VAE's conv encoder/decoder use the same rule."""
    k, base = 0, size
    while base % 2 == 0 and base >= 8:
        k, base = k + 1, base // 2
    if k == 0:
        raise ConfigError(f"data.image_size {size}: the conv networks halve it at least once, so "
                          f"it must be even and at least 8 (28, 32, 64 work)")
    return k, base


class Generator(nn.Module):
    """(B,in_dim) -> (B,channels,size,size) in [-1,1]: dense to the base grid, then k stride-2
    transposed convs that halve the width (28x28: dense to (2w,7,7), 2w -> w -> channels)."""

    def __init__(self, in_dim: int, width: int, channels: int = 1, size: int = 28):
        super().__init__()
        k, base = stages(size)
        c = 2 ** (k - 1) * width  # at the base grid
        layers: list[nn.Module] = [
            nn.Linear(in_dim, c * base * base, bias=False), nn.BatchNorm1d(c * base * base),
            nn.ReLU(), nn.Unflatten(1, (c, base, base)),  # (B,c,base,base)
        ]
        for _ in range(k - 1):  # each doubles the grid and halves the width
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2),
                       nn.ReLU()]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]  # (B,channels,size,size)
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    """(B,in_channels,size,size) -> (B,) real/fake logit or critic score: the generator mirrored,
    k stride-2 convs doubling the width from w, then one linear layer on the base grid.

    Dropout drops whole feature maps (Dropout2d): neighbouring pixels of a map are correlated, and
    one random number per map instead of per pixel is several times cheaper on a CPU.
    `layer_norm` replaces nothing in the DCGAN recipe: it normalises each sample on its own, which
    the gradient penalty needs (BatchNorm would mix samples of a batch into each other's gradient).
    """

    def __init__(self, in_channels: int, width: int, dropout: float = 0.0, layer_norm: bool = False,
                 size: int = 28):
        super().__init__()
        k, base = stages(size)
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(k):  # 28x28: (B,w,14,14), then (B,2w,7,7)
            c = width * 2 ** i
            layers.append(nn.Conv2d(c_in, c, 4, 2, 1))
            if i == k - 1:  # the last conv's output only
                layers.append(nn.LayerNorm([c, base, base]) if layer_norm else nn.Identity())
            layers += [nn.LeakyReLU(0.2), nn.Dropout2d(dropout)]
            c_in = c
        layers += [nn.Flatten(), nn.Linear(c_in * base * base, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).squeeze(1)


def init_weights(module: nn.Module) -> None:
    """DCGAN's initialisation: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
