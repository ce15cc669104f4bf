"""A registered family (generator or translator), loaded by name: its module, its params section
validated by its `Config`, and its model built, saved or loaded. The one place that imports a
family's module (`trilemma.registry` says where it is); `trilemma.families` and `trilemma.i2i`
call it for their kind."""

from __future__ import annotations

import importlib
import reprlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from trilemma import registry
from trilemma.config import Params, TrainConfig, first_error
from trilemma.errors import STATE_DOES_NOT_FIT, ConfigError, DataError, brief
from trilemma.io import state_problem

if TYPE_CHECKING:
    import torch

    from trilemma.data import ImageSpec

# per kind: the stage that writes its model file, what the file holds, the keys it must have
# (translators came after image specs: one without its spec is not a translator file)
TRAIN_STAGE = {"generator": "train", "translator": "train-i2i"}
FILE_NOUN = {"generator": "model", "translator": "translator"}
FILE_KEYS = {"generator": ("state",), "translator": ("state", "image")}


def module(name: str) -> ModuleType:
    """The family's module (its `Config` and `build`)."""
    return importlib.import_module(registry.entry(name).module)


class Modules(Mapping[str, ModuleType]):
    """name -> module of every registered family of one kind, in registry order; a module is
    imported when it is first looked up, so a stage imports its own family's only."""

    def __init__(self, kind: registry.Kind):
        self.names = registry.names(kind)

    def __getitem__(self, name: str) -> ModuleType:
        if name not in self.names:
            raise KeyError(name)
        return module(name)

    def __contains__(self, name: object) -> bool:  # without importing the module
        return name in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def config(p: Params, name: str, kind: registry.Kind) -> TrainConfig:
    """The family's params section validated by its `Config`; ConfigError naming the key, or
    the list it is missing from (`families` or `i2i_families` by `kind`)."""
    section = p.section(name, kind)
    try:
        return module(name).Config(**section)
    except ValidationError as err:
        raise ConfigError(f"{p.source}: {first_error(err, name)}") from None


def build(name: str, cfg: TrainConfig, device: torch.device, image: ImageSpec,
          judge: Any = None) -> Any:
    """A fresh model; `judge` goes to a family that declares `needs_judge`."""
    extra = {"judge": judge} if registry.entry(name).needs_judge else {}
    return module(name).build(cfg, device, image, **extra)


def save(model: Any, name: str, cfg: TrainConfig, path: str | Path) -> None:
    """The trained model with the config and the image spec it was built from."""
    import torch

    from trilemma.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"family": name, "config": cfg.model_dump(), "image": model.image.as_dict(),
                    "state": model.state_dict()}, tmp)


def load(name: str, cfg: TrainConfig, path: str | Path, device: torch.device,
         judge: Any = None) -> Any:
    """Rebuild a saved model for the images it was trained on (its `image`); refuses a file
    trained with other settings than `cfg`."""
    import torch

    from trilemma.data import ImageSpec

    kind = registry.entry(name).kind
    path, train = Path(path), f"trilemma {TRAIN_STAGE[kind]} {name}"
    if not path.exists():
        raise DataError(f"{path}: not found; run `{train}` first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: not a readable model file ({brief(err)})") from None
    if not isinstance(blob, dict) or any(key not in blob for key in FILE_KEYS[kind]) \
            or not isinstance(blob.get("family"), str):
        raise DataError(f"{path}: not a trilemma {FILE_NOUN[kind]} file; run `{train}` again")
    if blob["family"] != name:
        raise DataError(f"{path}: a model of {blob['family']!r}, not of {name!r}; "
                        f"run `{train}` again")
    try:
        saved = type(cfg).model_validate(blob.get("config")).model_dump()
    except (ValidationError, TypeError) as err:  # a setting removed, renamed or now refused
        problem = (first_error(err, name) if isinstance(err, ValidationError)
                   else f"{name}: saved as {type(blob.get('config')).__name__}")
        raise DataError(f"{path}: trained with settings this version does not accept "
                        f"({problem}); run `{train}` again") from None
    # a setting added since the file was saved took its default there: what it was trained with
    difference = _first_difference(saved, cfg.model_dump(), name)
    if difference:
        raise DataError(f"{path}: trained with other settings than the params' `{name}` "
                        f"({difference}); run `{train}` again")
    try:
        image = ImageSpec.from_dict(blob["image"])
    except (KeyError, TypeError, ValueError):  # saved before image specs were recorded
        raise DataError(f"{path}: saved without the spec of its images (an older trilemma); "
                        f"run `{train}` again") from None
    model = build(name, cfg, device, image, judge)
    broken = state_problem(blob["state"], model.state_dict())
    if broken:  # NaN weights would sample noise, integer ones be cast without a word
        raise DataError(f"{path}: {broken}; run `{train}` again")
    try:  # weights that do not fit the network: edited, or saved by another version of its code
        model.load_state_dict(blob["state"])
    except STATE_DOES_NOT_FIT as err:
        raise DataError(f"{path}: its weights do not fit the {name} network "
                        f"({brief(err, whole=True)}); run `{train}` again") from None
    return model


MISSING = object()  # a key one side lacks


def _first_difference(saved: Any, wanted: Any, where: str) -> str:
    """Where a file's settings first differ from the params': "vae.epochs: 8 in the file, 16 in
    the params" (`where` names the top level); "" when they are equal."""
    if saved == wanted:
        return ""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for key in dict.fromkeys([*saved, *wanted]):
            below = _first_difference(saved.get(key, MISSING), wanted.get(key, MISSING),
                                      f"{where}.{key}")
            if below:
                return below
    shown = ["not set" if v is MISSING else reprlib.repr(v) for v in (saved, wanted)]
    return f"{where}: {shown[0]} in the file, {shown[1]} in the params"
