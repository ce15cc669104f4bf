"""Generator families, registered by name in `trilemma.registry`. Each module has `Config` (its
params section, a TrainConfig) and `build(cfg, device, image) -> Family`, `image` the ImageSpec
of the data."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from trilemma import loader
from trilemma.config import Params, TrainConfig
from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.train import Trainee

KIND = "generator"


class Family(Trainee, Protocol):
    image: ImageSpec  # channels C, size S and classes of the images it was built for
    conditional: bool  # True: `sample` draws the classes given in `labels`
    knobs: tuple[str, ...]  # the `sample` params (e.g. "truncation", "steps") that `sample` takes

    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **knobs) -> torch.Tensor:
        """(n,C,S,S) uint8 images; noise from `generator` (a CPU generator: device-independent)."""

    def figures(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Family-specific matplotlib figures from test images x (B,C,S,S) in [0,1], by name."""


@runtime_checkable
class LatentFamily(Protocol):
    """A family that decodes a Gaussian latent: it gets interpolation and arithmetic figures."""

    image: ImageSpec
    latent_dim: int
    conditional: bool

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (n,latent_dim) [+ classes (n,)] -> uint8 images (n,C,S,S)."""


# name -> module of every registered generator (`trilemma.registry` declares them), imported
# when looked up
REGISTRY = loader.Modules(KIND)


def config(p: Params, name: str) -> TrainConfig:
    """The validated params section of a family listed in `families`."""
    return loader.config(p, name, KIND)


def build(name: str, cfg: TrainConfig, device: torch.device,
          image: ImageSpec = MNIST_SPEC) -> Family:
    return loader.build(name, cfg, device, image)


save = loader.save  # (family, name, cfg, path): the model file, as translators are saved


def load(name: str, cfg: TrainConfig, path: str | Path, device: torch.device) -> Family:
    """Rebuild a saved family for the images it was trained on (its `image`); refuses a file
    trained with other settings than `cfg`."""
    return loader.load(name, cfg, path, device)
