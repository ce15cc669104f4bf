"""Image-to-image families (pix2pix, SRGAN, CycleGAN) on tasks derived from the digits, registered
by name. Each module has `Config` (its params section, a TrainConfig) and
`build(cfg, device, image, judge=None) -> Translator`; SRGAN's content loss needs the judge."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Protocol

import torch

from trilemma.classifier import Judge
from trilemma.config import TrainConfig
from trilemma.data import ImageSpec
from trilemma.errors import DataError, brief
from trilemma.i2i import cyclegan, pix2pix, srgan
from trilemma.i2i.tasks import Task
from trilemma.io import atomic_path
from trilemma.train import Trainee


class Translator(Trainee, Protocol):
    """A trainee of `trilemma.train.fit` whose `train_step(x, y)` takes target digits x
    (B,C,S,S) in [0,1] and derives the task's inputs itself (`task.pair`, pure and cheap)."""

    image: ImageSpec
    task: Task

    def translate(self, inputs: torch.Tensor) -> torch.Tensor:
        """Task inputs (n,C,s,s) -> (n,C,S,S) float in [0,1] on the model's device; eval mode,
        no gradients, each image independent of its batch."""


REGISTRY: dict[str, ModuleType] = {"pix2pix": pix2pix, "srgan": srgan, "cyclegan": cyclegan}


def needs_judge(name: str) -> bool:
    """Whether the translator is built with the judge (a module's `NEEDS_JUDGE`): loading it
    needs models/classifier.pt, though translating does not use it."""
    return getattr(REGISTRY[name], "NEEDS_JUDGE", False)


def build(name: str, cfg: TrainConfig, device: torch.device, image: ImageSpec,
          judge: Judge | None = None) -> Translator:
    return REGISTRY[name].build(cfg, device, image, judge)


def save(model: Translator, name: str, cfg: TrainConfig, path: str | Path) -> None:
    """The trained translator with the config and the image spec it was built from."""
    with atomic_path(path) as tmp:
        torch.save({"family": name, "config": cfg.model_dump(), "image": model.image.as_dict(),
                    "state": model.state_dict()}, tmp)


def load(name: str, cfg: TrainConfig, path: str | Path, device: torch.device,
         judge: Judge | None = None) -> Translator:
    """Rebuild a saved translator; refuses a file trained with other settings than `cfg`."""
    path = Path(path)
    again = f"run `trilemma train-i2i {name}` again"
    if not path.exists():
        raise DataError(f"{path}: not found; run `trilemma train-i2i {name}` first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: not a readable model file ({brief(err)})") from None
    if not isinstance(blob, dict) or "state" not in blob or "image" not in blob:
        raise DataError(f"{path}: not a trilemma translator file; {again}")
    if blob.get("family") != name or blob.get("config") != cfg.model_dump():
        raise DataError(f"{path}: trained with other settings than params.yaml `{name}`; {again}")
    model = build(name, cfg, device, ImageSpec.from_dict(blob["image"]), judge)
    model.load_state_dict(blob["state"])
    return model
