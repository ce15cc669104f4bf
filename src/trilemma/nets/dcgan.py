"""DCGAN-style generator and discriminator for 28x28 digits (Radford et al., 2015).

Used by `dcgan`, `wgan_gp` (critic without BatchNorm) and `cgan` (label channels appended by the
GAN game), so their quality differences come from the game, not from the architecture.
"""

from __future__ import annotations

from torch import nn


class Generator(nn.Module):
    """(B,in_dim) -> (B,1,28,28) in [-1,1]: dense to 7x7, two stride-2 transposed convs."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Linear(in_dim, 2 * w * 49, bias=False), nn.BatchNorm1d(2 * w * 49), nn.ReLU(),
            nn.Unflatten(1, (2 * w, 7, 7)),  # (B,2w,7,7)
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),  # 14x14
            nn.ConvTranspose2d(w, 1, 4, 2, 1), nn.Tanh(),  # (B,1,28,28)
        )

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    """(B,in_channels,28,28) -> (B,) real/fake logit or critic score.

    Dropout drops whole feature maps (Dropout2d): neighbouring pixels of a map are correlated, and
    one random number per map instead of per pixel is several times cheaper on a CPU.
    `layer_norm` replaces nothing in the DCGAN recipe: it normalises each sample on its own, which
    the gradient penalty needs (BatchNorm would mix samples of a batch into each other's gradient).
    """

    def __init__(self, in_channels: int, width: int, dropout: float = 0.0, layer_norm: bool = False):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, 2, 1), nn.LeakyReLU(0.2), nn.Dropout2d(dropout),  # 14x14
            nn.Conv2d(w, 2 * w, 4, 2, 1),  # (B,2w,7,7)
            nn.LayerNorm([2 * w, 7, 7]) if layer_norm else nn.Identity(),
            nn.LeakyReLU(0.2), nn.Dropout2d(dropout),
            nn.Flatten(), nn.Linear(2 * w * 49, 1),
        )

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
