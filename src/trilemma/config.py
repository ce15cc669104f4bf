"""params.yaml as validated pydantic models: the only place params are parsed.

A value written as ``{quick: a, full: b}`` (optionally ``reference: c`` too) depends on the
top-level ``profile`` and is resolved before validation, so every model below sees plain values.
The ``reference`` profile takes quick's value wherever a mapping does not name it: it is the
quick networks and recipes trained to their plateau, so it states only what it changes.
"""

from __future__ import annotations

import hashlib
import json
import typing
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo,
                      field_validator)

from trilemma import registry
from trilemma.errors import ConfigError
from trilemma.params_file import check_bounded, read_params_file

PROFILES = ("quick", "reference", "full")
_REQUIRED = {"quick", "full"}  # a profile mapping names these; reference falls back to quick
Kind = registry.Kind


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits true/false anywhere (a bool, or a union or list holding one)."""
    return annotation is bool or any(_takes_bool(a) for a in typing.get_args(annotation)
                                     if not isinstance(a, (str, int, float)))


def _holds_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, list) and any(map(_holds_bool, value)))


class Section(BaseModel):
    # no inf/nan anywhere: every setting is a finite size, rate or weight
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true as 1: `epochs: true` would train one epoch without a word."""
        if _holds_bool(value) and not _takes_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true/false")
        return value


class DataConfig(Section):
    # mnist: the digits (28x28 grey, 10 classes); image_folder: every image in `folder`, with its
    # class subfolders (if any) as labels, cut to a central square and resized to image_size
    source: Literal["mnist", "image_folder"] = "mnist"
    folder: Path | None = None  # image_folder: the folder of images
    image_size: int = Field(28, ge=8, le=1024)  # side in pixels (mnist: 28)
    channels: Literal[1, 3] = 1  # 1 grey, 3 RGB (mnist: 1)
    test_fraction: float = Field(0.1, gt=0, lt=1)  # image_folder: share held out for testing
    offline: bool = False  # mnist: skip the online mirrors, use the packaged copy
    download_timeout: float = Field(10.0, gt=0, le=600)  # seconds for all mirrors together
    train_size: int | None = Field(None, ge=1)  # first N training images (None: all)
    test_size: int | None = Field(None, ge=1)  # first N test images (None: all)


def check_data(cfg: DataConfig) -> None:
    """What one key cannot say alone: MNIST's fixed shape, and a folder for image_folder."""
    if cfg.source == "mnist" and cfg.image_size != 28:
        raise ConfigError(f"data.image_size: MNIST is 28x28, got {cfg.image_size}; use "
                          "data.source image_folder for other sizes")
    if cfg.source == "mnist" and cfg.channels != 1:
        raise ConfigError(f"data.channels: MNIST is grey (1), got {cfg.channels}")
    if cfg.source == "image_folder" and cfg.folder is None:
        raise ConfigError("data.folder: missing; data.source image_folder reads its images there")


def check_control(cfg: "ControlConfig", families: list[str]) -> None:
    """The control stage runs only on trained families."""
    if len(set(cfg.families)) != len(cfg.families):
        raise ConfigError("control.families: a family is listed twice")
    for name in cfg.families:
        if name not in families:
            raise ConfigError(f"control.families: {name!r} is not in `families` "
                              f"({', '.join(families)})")


class LaunchConfig(Section):
    # prefix of the train stage's command in dvc.yaml: "" runs one process; e.g.
    # "torchrun --nproc-per-node 4 --no-python" trains data-parallel on 4 GPUs
    launcher: str = ""
    # seconds between checkpoints within an epoch (one is written after every epoch too)
    checkpoint_seconds: float = Field(60.0, gt=0)
    # learning curves: the train stages score this many probes, evenly spread over training
    probes: int = Field(8, ge=0, le=100)
    probe_n: int = Field(500, ge=16)  # samples (or i2i test images) each probe scores
    probe_steps: int = Field(10, ge=1)  # DDIM steps of a diffusion family's probe samples


class TrainConfig(Section):
    """What the generic training loop needs; every trainee's section extends it."""

    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimisation steps in all
    # fp32 strict; tf32: TensorFloat-32 matmuls/convolutions on a GPU; bf16: tf32 + bfloat16
    # autocast (training and sampling). Off the GPU only bf16 changes anything (README: CPU speed).
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    compile: bool = False  # torch.compile the networks (minutes of compiling; pays on long runs)


class ClassifierConfig(TrainConfig):
    width: int = Field(32, ge=4)  # channels of the first conv block; doubled in the second
    features: int = Field(128, ge=8)  # penultimate width: the feature space of FID
    augment: bool = False  # random shifts of up to 2 px
    weight_decay: float = Field(0.0, ge=0)


Truncation = Annotated[float, Field(gt=0)]
Steps = Annotated[int, Field(ge=1)]
Guidance = Annotated[float, Field(ge=0)]
SWEEPS = ("truncation", "steps", "guidance")  # the knobs that have a `<knob>_sweep` list


class SampleConfig(Section):
    n: int = Field(ge=16)  # images per family
    sweep_n: int | None = Field(None, ge=16)  # images per sweep setting (None: n)
    batch_size: int = Field(500, ge=1)
    grid: int = Field(64, ge=1, le=400)  # images in the fixed-noise grid
    # tau of the truncation trick for families with a Gaussian latent (VAE, GANs): each latent
    # component is drawn from N(0,1) cut to [-tau, tau]; None: no truncation
    truncation: Truncation | None = None
    truncation_sweep: list[Truncation] = []  # more tau values, sampled and scored for the report
    # diffusion families: "ddim" (eta below; 0 is deterministic) or "ddpm" (ancestral), each on
    # `steps` timesteps spread over the T of training by the family's `spacing` (all T when
    # steps >= T)
    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: Steps = 50
    eta: float = Field(0.0, ge=0, le=1)
    # more step counts, with the sampler above; "ddpm": the ancestral sampler on all T steps
    steps_sweep: list[Steps | Literal["ddpm"]] = []
    guidance: Guidance = 3.0  # classifier-free guidance scale w: 0 unconditional, 1 conditional
    guidance_sweep: list[Guidance] = []

    def sweep_size(self) -> int:
        return min(self.sweep_n or self.n, self.n)


class EvaluateConfig(Section):
    batch_size: int = Field(1000, ge=1)
    # FID of this many resamples of each family's samples, for FID's +- (0: none); at most
    # 10000, beyond which the spread no longer moves and the stage runs for hours
    bootstrap: int = Field(200, ge=0, le=10_000)
    # Inception-V3 FID/IS as well, with the pt_inception-2015-12-05 weights file at this path
    # (no package ships it); auto: downloaded once into torch's cache, hash checked; null or a
    # missing file: those columns read n/a, with the reason
    inception_weights: Literal["auto"] | Path | None = None
    # test digits (a seeded random draw) each image-to-image family is scored on; null: all
    i2i_test_n: int | None = Field(None, ge=2)

    @field_validator("bootstrap")
    @classmethod
    def _enough_rounds(cls, value: int) -> int:
        if value == 1:
            raise ValueError("must be 0 (off) or at least 2")
        return value


class ControlConfig(Section):
    """Steering generators toward a requested class (stages `train-referee` and `control`)."""

    families: list[str] = []  # each listed in `families`: DVC's foreach of the control stage
    # the referee: a second classifier (seed + 1, shift augmentation) that scores steering
    # without being the network the steering ascends
    referee_width: int = Field(16, ge=4)
    referee_epochs: int = Field(1, ge=1)
    referee_max_steps: int | None = Field(None, ge=1)
    # latent steering of unconditional latent families: `per_class` prior latents per class,
    # `steps` Adam steps of size `lr` on -log p_judge(class | decode(z)) + prior_weight |z|^2/2
    per_class: int = Field(16, ge=1)
    steps: int = Field(50, ge=1)
    lr: float = Field(0.05, gt=0)
    prior_weight: float = Field(0.01, ge=0)
    # classifier guidance of an unconditional diffusion family: step sizes on the predicted x0
    guidance_scales: list[Annotated[float, Field(ge=0)]] = [0.0, 1.0, 3.0, 10.0]
    guidance_n: int = Field(200, ge=10)  # images per guidance setting (balanced classes)
    batch_size: int = Field(250, ge=1)

    @field_validator("guidance_scales")
    @classmethod
    def _some_scale(cls, value: list[float]) -> list[float]:
        # the scales are the whole of a classifier-guided family's table (not extras to a main
        # setting, as the sample sweeps are): none leaves nothing to sample or score
        if not value:
            raise ValueError("must list at least one scale (0 is unguided sampling)")
        return value


class Params(Section):
    profile: Literal["quick", "reference", "full"] = "quick"
    seed: int = Field(0, ge=0, le=2**32 - 2)  # numpy's seeds are 32-bit; the referee's is seed + 1
    families: list[str] = Field(min_length=1)
    i2i_families: list[str] = []  # image-to-image families (trilemma.i2i): DVC's foreach
    data: DataConfig = DataConfig()
    train: LaunchConfig = LaunchConfig()
    classifier: ClassifierConfig
    sample: SampleConfig
    evaluate: EvaluateConfig = EvaluateConfig()
    control: ControlConfig = ControlConfig()
    # the listed families' raw sections and the file they came from: a section is validated by
    # its family's Config when the family is loaded (`trilemma.loader.config`), which keeps
    # parsing free of torch
    _sections: dict[str, dict[str, Any]] = PrivateAttr(default_factory=dict)
    _source: str = PrivateAttr("params.yaml")

    @property
    def source(self) -> str:
        """The params file these settings were read from (for error lines)."""
        return self._source

    def section(self, name: str, kind: Kind) -> dict[str, Any]:
        """The raw params section of a family listed in `families` (kind generator) or
        `i2i_families` (kind translator); ConfigError when it is not listed there."""
        if kind == "translator" and name not in self.i2i_families:
            known = ", ".join(self.i2i_families) or "none"
            raise ConfigError(f"i2i family '{name}' is not in {self._source} `i2i_families` "
                              f"({known})")
        if kind == "generator" and name not in self.families:
            known = ", ".join(self.families)
            raise ConfigError(f"family '{name}' is not in {self._source} `families` ({known})")
        return self._sections[name]


def resolve_profile(value: Any, profile: str, key: str = "") -> Any:
    """Replace every {quick: a, full: b} (or {quick: a, reference: c, full: b}) mapping by the
    value of `profile`; reference takes quick's value where the mapping does not name it.
    A key beside a profile's that reads like a misspelt profile is named in the error.
    `key`: where `value` sits, for the error line of a mapping that names only some profiles."""
    if isinstance(value, dict):
        names = set(value)
        others = sorted(names - set(PROFILES), key=str)
        misspelt = [k for k in others if get_close_matches(str(k), PROFILES, n=1, cutoff=0.75)]
        if names & set(PROFILES) and misspelt:  # {quick: 2, refrence: 8, full: 8}
            raise ConfigError(f"{key}: unknown profile {misspelt[0]!r} in a profile mapping "
                              f"(profiles: {', '.join(PROFILES)})")
        if names and not others:
            if not _REQUIRED <= names:
                raise ConfigError(f"{key}: a profile mapping names quick and full (reference is "
                                  f"optional; got {', '.join(sorted(names))})")
            return resolve_profile(value.get(profile, value["quick"]), profile, key)
        return {k: resolve_profile(v, profile, f"{key}.{k}" if key else str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_profile(v, profile, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def first_error(err: ValidationError, prefix: str = "") -> str:
    """The first problem pydantic found, as `key: what is wrong`; `prefix` is the section."""
    e = err.errors()[0]
    # union members show up in the location as tags like "constrained-int": not keys, dropped
    parts = [p for p in (prefix, *e["loc"]) if isinstance(p, int) or str(p).isidentifier()]
    key = ".".join(str(p) for p in parts)
    if e["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if e["type"] == "missing":
        return f"{key}: missing"
    message = e["msg"].removeprefix("Value error, ")  # our own validators' words, as written
    if not e["loc"]:  # a check across a section's keys: its words name them, the input is all
        return f"{key}: {message}"
    return f"{key}: {message} (got {e.get('input')!r})"


def _check_listed(resolved: dict[str, Any], key: str, kind: Kind, source: str) -> None:
    """Every entry of the list `key` is a registered family of `kind` with a section that is a
    mapping, listed once."""
    names = resolved.get(key) or []
    if not isinstance(names, list):
        return  # Params reports the type
    known = registry.names(kind)
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"{source}: {key}: entries must be family names (got {name!r})")
        if name not in known:
            raise ConfigError(f"{source}: {key}: unknown family {name!r} "
                              f"(known: {', '.join(sorted(known))})")
        if name not in resolved:
            raise ConfigError(f"{source}: {key}: {name!r} has no section `{name}:`")
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: {key}: a family is listed twice")
    for name in names:
        section = resolved[name]
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{source}: {name}: must be a mapping of settings "
                              f"(got {type(section).__name__})")


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping; any problem is one ConfigError line naming the key. The
    sections of the listed families are checked to be mappings here and validated by their
    family's Config when the family is loaded (`trilemma.loader.config`); sections of
    registered families that are not listed are set aside unread."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        check_bounded(raw)  # before resolve_profile walks it
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    profile = raw.get("profile", "quick")
    if profile not in PROFILES:
        raise ConfigError(f"{source}: profile: must be one of {', '.join(PROFILES)} (got {profile!r})")
    try:
        resolved = resolve_profile(raw, profile)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    _check_listed(resolved, "families", "generator", source)
    _check_listed(resolved, "i2i_families", "translator", source)
    sections = {name: resolved.pop(name) or {} for name in list(resolved)
                if name in registry.REGISTRY}
    try:
        params = Params(**resolved)
    except ValidationError as err:
        raise ConfigError(f"{source}: {first_error(err)}") from None
    try:
        check_data(params.data)
        check_control(params.control, params.families)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    params._sections = sections
    params._source = source
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(read_params_file(Path(path)), str(path))


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able settings: used to match checkpoints to their config."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
