"""Image-to-image families on tasks derived from the digits, registered by name in
`trilemma.registry`. Each module has `Config` (its params section, a TrainConfig) and
`build(cfg, device, image) -> Translator`, with `judge=` too when its entry `needs_judge`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from trilemma import loader, registry
from trilemma.classifier import Judge
from trilemma.config import Params, TrainConfig
from trilemma.data import ImageSpec
from trilemma.i2i.tasks import Task
from trilemma.train import Trainee

KIND = "translator"


class Translator(Trainee, Protocol):
    """A trainee of `trilemma.train.fit` whose `train_step(x, y)` takes target digits x
    (B,C,S,S) in [0,1] and derives the task's inputs itself (`task.pair`, pure and cheap)."""

    image: ImageSpec
    task: Task

    def translate(self, inputs: torch.Tensor) -> torch.Tensor:
        """Task inputs (n,C,s,s) -> (n,C,S,S) float in [0,1] on the model's device; eval mode,
        no gradients, each image independent of its batch."""


# name -> module of every registered translator (`trilemma.registry` declares them), imported
# when looked up
REGISTRY = loader.Modules(KIND)


def config(p: Params, name: str) -> TrainConfig:
    """The validated params section of a translator listed in `i2i_families`."""
    return loader.config(p, name, KIND)


def needs_judge(name: str) -> bool:
    """Whether the translator is built with the judge (its registry entry): loading it needs
    models/classifier.pt, though translating does not use it."""
    return registry.entry(name).needs_judge


def build(name: str, cfg: TrainConfig, device: torch.device, image: ImageSpec,
          judge: Judge | None = None) -> Translator:
    return loader.build(name, cfg, device, image, judge)


save = loader.save  # (model, name, cfg, path): the model file, as generators are saved


def load(name: str, cfg: TrainConfig, path: str | Path, device: torch.device,
         judge: Judge | None = None) -> Translator:
    """Rebuild a saved translator; refuses a file trained with other settings than `cfg`."""
    return loader.load(name, cfg, path, device, judge)
