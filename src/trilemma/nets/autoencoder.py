"""A small convolutional autoencoder to a latent grid, for latent diffusion (Rombach et al., 2022):
the encoder maps (C,S,S) images to a Gaussian posterior over a (L,S/d,S/d) grid, d = 2**halvings;
the decoder maps a grid back to per-pixel Bernoulli logits. No normalisation layers: an image's
encoding does not depend on the rest of its batch, so train and eval modes agree."""

from __future__ import annotations

import torch
from torch import nn


class AutoEncoder(nn.Module):
    """28x28 grey with 2 halvings, width w, L latent channels:
    (B,1,28,28) -> (B,w,28,28) -> (B,2w,14,14) -> (B,4w,7,7) -> mean, log-variance (B,L,7,7) each;
    the decoder mirrors it back to logits (B,1,28,28)."""

    def __init__(self, channels: int, latent_channels: int, width: int, halvings: int):
        super().__init__()
        encoder: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.SiLU()]
        c = width
        for _ in range(halvings):  # each: stride-2 conv doubling the width, then a 3x3 conv
            encoder += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.SiLU(),
                        nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.SiLU()]
            c *= 2
        encoder.append(nn.Conv2d(c, 2 * latent_channels, 1))  # (B,2L,s,s): mean, log-variance
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [nn.Conv2d(latent_channels, c, 3, padding=1), nn.SiLU()]
        for _ in range(halvings):  # each: a 3x3 conv, then a transposed conv halving the width
            decoder += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
                        nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.SiLU()]
            c //= 2
        decoder.append(nn.Conv2d(c, channels, 3, padding=1))  # (B,C,S,S) Bernoulli logits
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B,C,S,S) in [0,1] -> posterior mean and log-variance (B,L,s,s)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)  # exp() stays finite early in training

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Decoder logits of x encoded and reparameterised with `noise` (B,L,s,s), mean and
        log-variance: one call, so DistributedDataParallel sees every parameter used."""
        mean, logvar = self.encode(x)
        return self.decoder(mean + noise * (0.5 * logvar).exp()), mean, logvar
