"""Images from a trained family or translator: the batched, seeded drawing the sample stage and
`trilemma generate` share (so both give the same images for the same settings), the requested
classes, the sampling settings a family honours, and image files read as translator inputs."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from trilemma import distributed
from trilemma.config import SampleConfig
from trilemma.errors import ConfigError, DataError
from trilemma.io import atomic_path
from trilemma.runtime import generator

WARMUP = 64  # images drawn untimed before the first timed run: lazy initialisation, kernels
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def batch_generator(seed: int, batch: int) -> torch.Generator:
    """The noise of batch number `batch`: its own stream, so that a batch is the same whichever
    process draws it (torchrun shares the batches out) and whatever was drawn before it."""
    return generator(int(np.random.SeedSequence([seed, batch]).generate_state(1)[0]))


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """Classes 0, 1, ..., K-1, 0, 1, ...: every class equally often (the sample stage's request)."""
    return torch.arange(n) % num_classes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    distributed.barrier()


def draw(model, n: int, batch_size: int, seed: int, device: torch.device, warmup: bool = False,
         labels: torch.Tensor | None = None, **knobs) -> tuple[np.ndarray, np.ndarray | None, float]:
    """n images (n,C,S,S) uint8, the requested labels (default: balanced classes) for a
    conditional family, and the sampling time in seconds (after an untimed warm-up batch if
    `warmup`). Under torchrun rank r draws batches r, r+N, ... and every rank gets all n images:
    the same n images as one process, and the time is the wall time of all of them."""
    if model.conditional and labels is None:
        labels = balanced_labels(n, model.image.num_classes)
    if warmup:
        size = min(batch_size, n, WARMUP)
        model.sample(size, None if labels is None else labels[:size], generator(seed), **knobs)
    starts = range(0, n, batch_size)
    _sync(device)
    t0 = time.perf_counter()
    mine = {}
    for k in range(distributed.rank(), len(starts), distributed.world_size()):
        start = starts[k]
        batch_labels = None if labels is None else labels[start:start + batch_size]
        mine[k] = model.sample(min(batch_size, n - start), batch_labels, batch_generator(seed, k),
                               **knobs).cpu()
    chunks = distributed.gather_dict(mine)
    _sync(device)
    seconds = time.perf_counter() - t0
    images = torch.cat([chunks[k] for k in range(len(starts))]).numpy()  # (n,C,S,S)
    return images, None if labels is None else labels.numpy(), seconds


def parse_labels(text: str | None, n: int, model) -> torch.Tensor | None:
    """The classes to draw, (n,) int64: `all` (or nothing) balanced, `7` one class, `1,4,7` that
    list repeated; None for an unconditional family, which refuses any request."""
    if not model.conditional:
        if text is not None:
            raise ConfigError("--label: this family is unconditional; it draws no requested class")
        return None
    k = model.image.num_classes
    if text is None or text.strip() == "all":
        return balanced_labels(n, k)
    try:
        wanted = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--label: expected a class 0..{k - 1}, a list like 1,4,7 or `all`, "
                          f"got {text!r}") from None
    bad = [c for c in wanted if not 0 <= c < k]
    if bad:
        raise ConfigError(f"--label: class {bad[0]} is out of range 0..{k - 1}")
    return torch.as_tensor(np.resize(np.asarray(wanted, np.int64), n))


def knob_values(model, cfg: SampleConfig, given: dict[str, object]) -> dict[str, object]:
    """The settings of the knobs `model` honours: params `sample` overridden by `given` (the
    options set); a knob the family lacks, or a value params would refuse, is named."""
    given = {k: v for k, v in given.items() if v is not None}
    for knob in given:
        if knob not in model.knobs:
            has = ", ".join(f"--{k}" for k in model.knobs) or "none"
            raise ConfigError(f"--{knob}: this family has no {knob} setting (its settings: {has})")
    try:
        merged = SampleConfig.model_validate({**cfg.model_dump(), **given})
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"--{first['loc'][0]}: {first['msg']}") from None
    return {knob: getattr(merged, knob) for knob in model.knobs}


def cap_steps(model, named: dict[str, list]) -> dict[str, list]:
    """The step counts in `named` (a setting's name -> its values) capped at the model's T: a
    sampler takes no more steps than the timesteps it was trained on. One warning line names
    the settings above T, each value once ("ddpm", all T steps, stays as it is)."""
    from trilemma.torchrun import log

    total = model.timesteps
    over = []
    for name, values in named.items():
        above = dict.fromkeys(str(v) for v in values if v != "ddpm" and v > total)
        if above:
            over.append(f"{name} {', '.join(above)}")
    if over:
        log(f"warning: {' and '.join(over)} above the {total} timesteps the model was trained "
            f"on: sampled on all {total}")
    return {name: [v if v == "ddpm" else min(v, total) for v in values]
            for name, values in named.items()}


def read_images(source: Path, channels: int, size: int) -> tuple[np.ndarray, list[Path]]:
    """Image file(s) as uint8 (n,C,size,size): one file, or every image in a folder (sorted by
    name). A file that is not an image, or of another size, is named."""
    from PIL import Image, UnidentifiedImageError

    source = Path(source)
    if source.is_dir():
        files = sorted(f for f in source.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{source}: no image files in this folder")
    elif source.is_file():
        files = [source]
    else:
        raise DataError(f"{source}: not found")
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                pixels = np.asarray(img.convert("L" if channels == 1 else "RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{file}: not a readable image ({type(err).__name__})") from None
        if pixels.shape[:2] != (size, size):
            raise DataError(f"{file}: {pixels.shape[1]}x{pixels.shape[0]} pixels; this model "
                            f"translates {size}x{size} images")
        images.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
    return np.stack(images), files


def input_size(task, image) -> int:
    """The side of a translator's inputs: the task's input for images of the data's size."""
    probe = torch.zeros(1, image.channels, image.size, image.size)
    return int(task.pair(probe)[0].shape[-1])


@torch.no_grad()
def translate(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """uint8 inputs (n,C,s,s) -> uint8 translations (n,C,S,S), in batches."""
    from trilemma import pixels

    x = torch.from_numpy(images).float() / 255
    out = [pixels.from_unit(model.translate(x[i:i + batch_size]).cpu())
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def write_npz_exact(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz that np.load reads, byte-identical for identical arrays: np.savez stamps each
    member with the current time, this writes a fixed one."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for key, array in arrays.items():
            member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w") as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)
