"""The MLflow `pyfunc`s of a trained model (see `trilemma.mlflow_model`): a family's `Generator`
draws exactly as `trilemma generate` does, a translator's `Translator` translates the given
images exactly as `trilemma generate <translator> --input` does."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

KNOBS = ("truncation", "steps", "sampler", "eta", "guidance")


def _value(request: dict[str, Any], key: str) -> Any:
    """A request field, None when missing or empty (NaN in a DataFrame)."""
    value = request.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _saved(context, registry) -> tuple[dict, Any, Path, Any]:
    """(settings, the model's validated config, the model file, the device) of a logged model;
    `registry` maps family names to their modules (their `Config`)."""
    import torch

    from trilemma.runtime import resolve_device

    settings = json.loads(Path(context.artifacts["settings"]).read_text())
    path = Path(context.artifacts["model"])
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = registry[settings["family"]].Config.model_validate(blob["config"])
    return settings, cfg, path, resolve_device(None)


class Generator(mlflow.pyfunc.PythonModel):
    """predict(request) -> uint8 images (n,C,S,S); the request: see `trilemma.mlflow_model`."""

    def load_context(self, context) -> None:
        from trilemma import families
        from trilemma.config import SampleConfig

        settings, self.cfg, path, self.device = _saved(context, families.REGISTRY)
        self.family, self.seed = settings["family"], settings["seed"]
        self.sample = SampleConfig.model_validate(settings["sample"])
        self.model = families.load(self.family, self.cfg, path, self.device)

    def predict(self, context, model_input: pd.DataFrame, params=None):
        from trilemma.generation import draw, knob_values, parse_labels
        from trilemma.runtime import autocast, set_precision

        request = (model_input.iloc[0].to_dict() if hasattr(model_input, "iloc")
                   else dict(model_input))
        n = int(_value(request, "n") or self.sample.grid)
        label = _value(request, "label")
        labels = parse_labels(None if label is None else str(label), n, self.model)
        settings = knob_values(self.model, self.sample, {k: _value(request, k) for k in KNOBS})
        seed = _value(request, "seed")
        set_precision(self.cfg.precision)
        with autocast(self.cfg.precision, self.device):
            images, _, _ = draw(self.model, n, self.sample.batch_size,
                                self.seed if seed is None else int(seed), self.device,
                                labels=labels, **settings)
        return images


def as_inputs(model_input: Any, channels: int, size: int) -> np.ndarray:
    """A translator's inputs as uint8 (n,C,s,s): a numpy array, or the nested lists of a JSON
    request (`{"inputs": [...]}`), of integers 0..255; anything else is named."""
    images = np.asarray(model_input)
    expected = f"uint8 images (n,{channels},{size},{size})"
    if images.ndim != 4 or images.shape[1:] != (channels, size, size) or not len(images):
        raise ValueError(f"expected {expected}, got an array of shape {images.shape}")
    if not np.issubdtype(images.dtype, np.integer) or images.min() < 0 or images.max() > 255:
        raise ValueError(f"expected {expected}: integers 0..255, got {images.dtype} values "
                         f"{images.min()}..{images.max()}")
    return images.astype(np.uint8)


class Translator(mlflow.pyfunc.PythonModel):
    """predict(uint8 inputs (n,C,s,s)) -> uint8 translations (n,C,S,S)."""

    def load_context(self, context) -> None:
        from trilemma import i2i
        from trilemma.classifier import load_judge
        from trilemma.generation import input_size

        settings, cfg, path, self.device = _saved(context, i2i.REGISTRY)
        self.batch_size = settings["batch_size"]
        # a translator built with the judge (SRGAN) carries it; translating does not use it
        judge = (load_judge(context.artifacts["judge"], self.device)
                 if "judge" in context.artifacts else None)
        self.model = i2i.load(settings["family"], cfg, path, self.device, judge)
        self.size = input_size(self.model.task, self.model.image)

    def predict(self, context, model_input: np.ndarray, params=None):
        from trilemma.generation import translate

        images = as_inputs(model_input, self.model.image.channels, self.size)
        return translate(self.model, images, self.batch_size)


KINDS = {"generator": Generator, "translator": Translator}  # settings["kind"] -> its pyfunc
