"""Latent-space tools for families that decode a Gaussian latent (VAE, GANs): truncated noise,
interpolation and vector arithmetic. Pure functions of a `generate(z, labels) -> uint8` callable;
`classes` is the number of classes a conditional family draws, 0 for an unconditional one."""

from __future__ import annotations

import math
from typing import Callable

import torch

from trilemma import pixels

Generate = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def noise(n: int, dim: int, generator: torch.Generator | None = None,
          truncation: float | None = None) -> torch.Tensor:
    """(n,dim) N(0,I) latents on the CPU. With `truncation` tau, each component is drawn from the
    normal truncated to [-tau, tau] (BigGAN's truncation trick): smaller tau trades diversity for
    fidelity."""
    if truncation is None or math.isinf(truncation):
        return torch.randn(n, dim, generator=generator)
    z = torch.empty(n, dim)
    return torch.nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation, generator=generator)


class Decoded:
    """`generate` and `sample` of a family whose images are `decode(z, labels)` (floats (n,C,S,S)
    in [0,1]) of latents (n, latent_dim): the uint8 rounding and the prior written once."""
    latent_dim: int

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (n,L) [+ classes (n,)] -> uint8 images (n,C,S,S): `decode`, rounded."""
        return pixels.from_unit(self.decode(z, labels))

    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None,
               truncation: float | None = None) -> torch.Tensor:
        return self.generate(noise(n, self.latent_dim, generator, truncation), labels)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (n,d) at fractions t (k,) -> (n,k,d).
    Follows the great circle, so intermediate points keep the norm typical of Gaussian latents
    (a straight line passes through the low-norm centre, which the generator rarely saw)."""
    a_unit, b_unit = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((a_unit * b_unit).sum(1).clamp(-1 + 1e-7, 1 - 1e-7))[:, None]  # (n,1)
    t = t[None, :]  # (1,k)
    wa = torch.sin((1 - t) * omega) / torch.sin(omega)  # (n,k)
    wb = torch.sin(t * omega) / torch.sin(omega)
    return wa[..., None] * a[:, None] + wb[..., None] * b[:, None]


def row_labels(rows: int, cols: int, classes: int) -> torch.Tensor | None:
    """Row i of a figure shows class i % classes for a conditional family (classes > 0)."""
    return (torch.arange(rows) % classes).repeat_interleave(cols) if classes else None


def interpolation(generate: Generate, dim: int, classes: int, generator: torch.Generator,
                  rows: int = 8, cols: int = 10) -> torch.Tensor:
    """(rows*cols,C,S,S) uint8: each row walks from one random latent to another."""
    a, b = noise(rows, dim, generator), noise(rows, dim, generator)
    z = slerp(a, b, torch.linspace(0, 1, cols)).reshape(rows * cols, dim)
    return generate(z, row_labels(rows, cols, classes))


def ink_direction(generate: Generate, dim: int, classes: int, generator: torch.Generator,
                  n: int = 2000, fraction: float = 0.1) -> torch.Tensor:
    """(dim,) the 'bold stroke' vector: mean latent of the boldest `fraction` of n samples minus
    that of the thinnest, ink being the mean pixel value of the generated image."""
    z = noise(n, dim, generator)
    labels = torch.arange(n) % classes if classes else None
    ink = generate(z, labels).float().mean(dim=(1, 2, 3)).cpu()  # (n,)
    order = ink.argsort()
    k = max(1, int(n * fraction))
    return z[order[-k:]].mean(0) - z[order[:k]].mean(0)


def arithmetic(generate: Generate, dim: int, classes: int, generator: torch.Generator,
               rows: int = 8, cols: int = 9) -> torch.Tensor:
    """(rows*cols,C,S,S) uint8: row i is z_i + alpha * bold, alpha from -1 to 1 left to right,
    where `bold` is `ink_direction`: latent vector arithmetic on stroke weight."""
    bold = ink_direction(generate, dim, classes, generator)
    base = noise(rows, dim, generator)  # (rows,dim)
    alpha = torch.linspace(-1, 1, cols)
    z = (base[:, None] + alpha[None, :, None] * bold).reshape(rows * cols, dim)
    return generate(z, row_labels(rows, cols, classes))
