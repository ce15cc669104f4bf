"""What a samples file was drawn from: the family, a fingerprint of the model file and one of the
sample settings. `sample` stamps them into the file; `evaluate` refuses a file whose stamp does
not match what it would score today (another family's samples, an older model, other settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trilemma.config import Params, fingerprint
from trilemma.errors import DataError
from trilemma.io import file_sha256

KEYS = ("family", "model_sha256", "settings_fingerprint")


def sample_settings(p: Params) -> str:
    """Everything besides the model that decides which images `sample` draws."""
    return fingerprint({"sample": p.sample.model_dump(), "seed": p.seed})


def stamp(family: str, model_file: Path, p: Params) -> dict[str, np.ndarray]:
    return {"family": np.str_(family), "model_sha256": np.str_(file_sha256(model_file)),
            "settings_fingerprint": np.str_(sample_settings(p))}


def check(blob: dict[str, Any], path: Path, family: str, model_file: Path, p: Params) -> None:
    """DataError naming `path` unless its stamp matches `family`, `model_file` and params."""
    again = f"run `trilemma sample {family}` again"
    if any(key not in blob for key in KEYS):
        raise DataError(f"{path}: does not say which family, model and settings drew it; {again}")
    if str(blob["family"]) != family:
        raise DataError(f"{path}: drawn by family {str(blob['family'])!r}, not {family!r}; {again}")
    if not model_file.is_file():
        raise DataError(f"{model_file}: not found, so {path} cannot be matched to a model; run "
                        f"`trilemma train {family}` first")
    if str(blob["model_sha256"]) != file_sha256(model_file):
        raise DataError(f"{path}: drawn from another {model_file} than the one there now; {again}")
    if str(blob["settings_fingerprint"]) != sample_settings(p):
        raise DataError(f"{path}: drawn with other settings than the params' `sample` and `seed` "
                        f"now; {again}")
