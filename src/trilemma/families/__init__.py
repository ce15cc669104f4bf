"""Generator families, registered by name. Each module has `Config` (its params section, a
TrainConfig) and `build(cfg, device, image) -> Family`, `image` the ImageSpec of the data."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Protocol, runtime_checkable

import torch

from trilemma.config import TrainConfig
from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.errors import DataError, brief
from trilemma.families import cfg_diffusion, cgan, dcgan, ddpm, mlp_gan, vae, wgan_gp
from trilemma.families import stylegan
from trilemma.families import latent_diffusion
from trilemma.families import progan
from trilemma.io import atomic_path
from trilemma.train import Trainee


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


REGISTRY: dict[str, ModuleType] = {
    "vae": vae,
    "mlp_gan": mlp_gan,
    "dcgan": dcgan,
    "wgan_gp": wgan_gp,
    "cgan": cgan,
    "ddpm": ddpm,
    "cfg_diffusion": cfg_diffusion,
    "stylegan": stylegan,
    "latent_diffusion": latent_diffusion,
    "progan": progan,
}


def build(name: str, cfg: TrainConfig, device: torch.device,
          image: ImageSpec = MNIST_SPEC) -> Family:
    return REGISTRY[name].build(cfg, device, image)


def save(family: Family, name: str, cfg: TrainConfig, path: str | Path) -> None:
    """The trained family with the config and the image spec it was built from."""
    with atomic_path(path) as tmp:
        torch.save({"family": name, "config": cfg.model_dump(), "image": family.image.as_dict(),
                    "state": family.state_dict()}, tmp)


def load(name: str, cfg: TrainConfig, path: str | Path, device: torch.device) -> Family:
    """Rebuild a saved family for the images it was trained on (its `image`); refuses a file
    trained with other settings than `cfg`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found; run `trilemma train {name}` first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: not a readable model file ({brief(err)})") from None
    if not isinstance(blob, dict) or "state" not in blob:
        raise DataError(f"{path}: not a trilemma model file; run `trilemma train {name}` again")
    if blob.get("family") != name or blob.get("config") != cfg.model_dump():
        raise DataError(f"{path}: trained with other settings than params.yaml `{name}`; "
                        f"run `trilemma train {name}` again")
    try:
        image = ImageSpec.from_dict(blob["image"])
    except (KeyError, TypeError, ValueError):  # saved before image specs were recorded
        raise DataError(f"{path}: saved without the spec of its images (an older trilemma); "
                        f"run `trilemma train {name}` again") from None
    family = build(name, cfg, device, image)
    family.load_state_dict(blob["state"])
    return family
