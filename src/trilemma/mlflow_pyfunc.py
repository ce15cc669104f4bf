"""The MLflow `pyfunc` of a trained family (see `trilemma.mlflow_model`): loads the model file
with its sampling params and draws exactly as `trilemma generate` does."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

KNOBS = ("truncation", "steps", "sampler", "eta", "guidance")


def _value(request: dict[str, Any], key: str) -> Any:
    """A request field, None when missing or empty (NaN in a DataFrame)."""
    value = request.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


class Generator(mlflow.pyfunc.PythonModel):
    """predict(request) -> uint8 images (n,C,S,S); the request: see `trilemma.mlflow_model`."""

    def load_context(self, context) -> None:
        import torch

        from trilemma import families
        from trilemma.config import SampleConfig
        from trilemma.runtime import resolve_device

        settings = json.loads(Path(context.artifacts["settings"]).read_text())
        self.family, self.seed = settings["family"], settings["seed"]
        self.sample = SampleConfig.model_validate(settings["sample"])
        path = Path(context.artifacts["model"])
        blob = torch.load(path, map_location="cpu", weights_only=True)
        self.cfg = families.REGISTRY[self.family].Config.model_validate(blob["config"])
        self.device = resolve_device(None)
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
